"""An autoscaling Ray cluster of fake nodes on this machine, for tests (importable: tests/ is on sys.path).

Ray's fake multi-node provider (``ray.autoscaler._private.fake_multi_node``) runs each "node" as one
more raylet on this machine, launched and terminated by the head's autoscaler as if it were a cloud
VM. ``ray.cluster_utils.AutoscalingCluster`` wraps it, but it starts and ends with ``ray stop --force``
(which kills every Ray process of the user, other sessions' included) and reads an ``example.yaml``
that the wheel does not ship. So this module writes the autoscaling config itself, starts the head
with ``ray start`` in its own temp dir and ports, and stops exactly the processes of that temp dir
(the head's, the autoscaler's, and the fake nodes the autoscaler started as its children), by PID.

``python tests/fake_cluster.py watch ADDRESS INTERVAL_S`` prints one JSON line per sample of the
cluster's nodes (read from the GCS, no driver): the test's own record of nodes over time, in a
process of its own because Ray's token-authentication settings are per process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import psutil

from ports import reserved_ports
from procs import BIN, processes_naming, ray_env, stop_processes  # noqa: F401 - ray_env is used by importers

HEAD_TYPE = "ray.head.default"   # the fake provider's fixed name for the head's node type


def autoscaling_config(gcs_address: str, head_resources: dict[str, float], worker_types: dict[str, dict[str, Any]],
                       idle_timeout_s: float) -> dict[str, Any]:
    """The cluster config the fake provider needs (what Ray's missing ``example.yaml`` held), with
    ``worker_types`` as ``{name: {"resources": {...}, "min_workers": a, "max_workers": b}}``."""
    types = {name: {"node_config": {}, **spec} for name, spec in worker_types.items()}
    types[HEAD_TYPE] = {"resources": head_resources, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "bidpm-fake",
        "max_workers": sum(int(t.get("max_workers", 0)) for t in worker_types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "docker": {}, "auth": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class FakeCluster:
    """Head (no accelerators) + an autoscaler that adds/removes fake worker nodes; ``stop`` by PID."""

    def __init__(self, head_cpus: float, worker_types: dict[str, dict[str, Any]], idle_timeout_s: float = 5.0,
                 env: Optional[dict[str, str]] = None) -> None:
        self.head_cpus, self.worker_types, self.idle_timeout_s = head_cpus, worker_types, idle_timeout_s
        self.extra_env = env or {}
        self.temp_dir = tempfile.mkdtemp(prefix="rfake", dir="/tmp")   # short: Ray's unix sockets live under it
        self.address = ""

    def start(self) -> "FakeCluster":
        import ray._private.services as services

        ip = services.get_node_ip_address()      # what the fake nodes (started by the autoscaler) will use too
        # 0 = the component binds a free port itself; GCS and the client server need numbers, reserved together
        auto = [f"--{flag}=0" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                                           "runtime-env-agent-port", "node-manager-port", "object-manager-port")]
        with reserved_ports(2) as (gcs, client):
            self.address = f"{ip}:{gcs}"
            cfg = Path(self.temp_dir) / "autoscaling.json"
            cfg.write_text(json.dumps(autoscaling_config(self.address, {"CPU": self.head_cpus}, self.worker_types,
                                                         self.idle_timeout_s)))
            system = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}   # a lost node: seconds
            cmd = [str(BIN / "ray"), "start", "--head", f"--node-ip-address={ip}", f"--port={gcs}", *auto,
                   f"--ray-client-server-port={client}", f"--autoscaling-config={cfg}", f"--temp-dir={self.temp_dir}",
                   f"--num-cpus={self.head_cpus}", "--num-gpus=0", "--object-store-memory=300000000",
                   "--include-dashboard=false", "--disable-usage-stats", f"--system-config={json.dumps(system)}"]
        env = ray_env({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                       "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10", **self.extra_env})
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{out.stdout}\n{out.stderr}")
        return self

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those naming its temp dir, and their descendants."""
        return processes_naming(self.temp_dir)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, this cluster's processes (never ``ray stop``: it kills other sessions' Ray)."""
        if not stop_processes(self.processes(), term_timeout_s=5):
            shutil.rmtree(self.temp_dir, ignore_errors=True)   # Ray's session logs; kept if anything survived


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.NoSuchProcess:
        return ""


def workers_titled(cluster: "FakeCluster", title: str) -> list[psutil.Process]:
    """The cluster's Ray worker processes whose title starts with ``title`` (e.g. ``ray::RayTrainWorker``)."""
    out = []
    for p in cluster.processes():
        try:
            if " ".join(p.cmdline()).startswith(title):
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def raylet_of(worker: psutil.Process) -> psutil.Process:
    """The raylet (the node) a Ray worker process runs under: its nearest ``raylet`` ancestor."""
    for p in worker.parents():
        if _name(p).endswith("raylet"):
            return p
    raise LookupError(f"process {worker.pid} runs under no raylet")


class NodeWatcher:
    """The test's record of nodes over time: a ``watch`` subprocess's JSON lines, collected in a thread."""

    def __init__(self, address: str, interval_s: float = 0.5) -> None:
        self.samples: list[dict[str, Any]] = []
        self._proc = subprocess.Popen([sys.executable, __file__, "watch", address, str(interval_s)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ray_env())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(json.loads(line))
            except ValueError:
                continue

    def wait_for(self, predicate, timeout_s: float, what: str, start: int = 0) -> dict[str, Any]:
        """Poll the samples from index ``start`` on until one satisfies ``predicate``; fail with the timeline."""
        deadline = time.monotonic() + timeout_s
        seen = start
        while time.monotonic() < deadline:
            for s in self.samples[seen:]:
                if predicate(s):
                    return s
            seen = len(self.samples)
            if self._proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no node sample where {what} within {timeout_s:.0f} s; timeline: {self.changes()}")

    def changes(self) -> list[tuple[float, int]]:
        """(t, worker nodes) at every change of the worker count."""
        out: list[tuple[float, int]] = []
        for s in list(self.samples):
            if not out or out[-1][1] != s["workers"]:
                out.append((s["t"], s["workers"]))
        return out

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _watch(address: str, interval_s: float) -> None:
    """JSON lines {t, nodes, workers, resources} from the GCS node table until the GCS goes away."""
    from ray._raylet import GcsClient
    from ray.core.generated import gcs_pb2

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    from bidpm.raycluster.nodes import summarise

    client = GcsClient(address=address)
    t0 = time.monotonic()
    failures = 0
    while failures < 10:
        try:
            infos = client.get_all_node_info(timeout=5).values()
        except Exception:  # noqa: BLE001 - GCS busy or gone: retry a few times, then end
            failures += 1
            time.sleep(interval_s)
            continue
        failures = 0
        records = [{"Alive": i.state == gcs_pb2.GcsNodeInfo.ALIVE, "IsHead": i.is_head_node,
                    "Resources": dict(i.resources_total)} for i in infos]
        s = summarise(records, time.monotonic() - t0)
        print(json.dumps({"t": round(s.t, 2), "nodes": s.nodes, "workers": s.workers, "resources": dict(s.resources)}),
              flush=True)
        time.sleep(interval_s)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "watch":
        _watch(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit("usage: fake_cluster.py watch ADDRESS INTERVAL_S")
