"""`ray job submit` for real: a head on loopback (own port + temp dir), the tiny study submitted from
another working directory, status SUCCEEDED, and the MLflow store then holds everything.

Stopping: `ray stop` kills every Ray process on the machine (it matches by name), which would take
down other Ray sessions (e.g. the suite's `ray_session`). So the head this test started is stopped
by PID: the processes whose command line names its temp dir, and their children.

Ports: every server whose port Ray can pick binds port 0 itself (no race, no clash). Only the
dashboard (the job address) and the Ray client server (no "auto" value) get ports from
``ports.reserved_ports``: distinct, and held until just before `ray start` (see tests/ports.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bidpm.config import load_config

from ports import reserved_ports  # tests/ports.py (the rootdir conftest's folder is on sys.path)
from test_tune import check_store, write_tiny  # noqa: E402 - sibling module (rootdir-inserted path)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"      # the head (and so the job) use this venv's python
    if (Path.home() / ".ray" / "auth_token").exists():
        env["RAY_AUTH_MODE"] = "token"                            # `ray start` turned token auth on: keep it on
    return env


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) from /proc (Linux; no psutil in the venv)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(d.name)] = (ppid, cmd)
    return out


def _stop_head(temp_dir: str) -> None:
    """SIGTERM (then SIGKILL) the processes naming ``temp_dir`` and their descendants, by PID."""
    import signal

    table = _procs()
    pids = {pid for pid, (_, cmd) in table.items() if temp_dir in cmd and pid != os.getpid()}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in pids} - pids
        grew = bool(more)
        pids |= more
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.5)


@pytest.fixture
def ray_head():
    """`ray start --head` on 127.0.0.1 with non-default ports and its own temp dir; yields the job address."""
    temp_dir = tempfile.mkdtemp(prefix="rjob", dir="/tmp")     # short: Ray's unix sockets live under it
    # Defaults would collide with other Ray instances (GCS 6379, agent 52365, client 10001, ...), and
    # ports picked one at a time can repeat: 0 = the component binds a free port itself; the two that
    # need a number are reserved together and released right before `ray start`.
    auto = [f"--{flag}=0" for flag in (
        "port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port")]
    with reserved_ports(2) as (dash, client):
        cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", *auto,
               f"--ray-client-server-port={client}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dash}", f"--temp-dir={temp_dir}", "--num-cpus=2", "--disable-usage-stats"]
    try:                                # inside: a `ray start` that times out still gets its processes stopped
        out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        yield f"http://127.0.0.1:{dash}"
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_study(tmp_path, ray_head):
    cfg_path = write_tiny(tmp_path, tmp_path / "out")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    sub_id = f"bidpm-test-{int(time.time())}"
    runtime_env = '{"excludes": [".git", ".venv", "outputs", "**/__pycache__", "*.egg-info"]}'
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--submission-id", sub_id,
           "--working-dir", str(REPO), "--runtime-env-json", runtime_env, "--",
           "python", "jobs/tune_steps.py", "--config", str(cfg_path)]
    t0 = time.monotonic()
    for _ in range(30):                 # right after `ray start` the dashboard agent may not be up yet
        out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1200)
        if "No available agent" not in out.stdout + out.stderr:
            break
        time.sleep(5)
    log = out.stdout[-4000:] + out.stderr[-2000:]
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", ray_head, sub_id], cwd=cwd, env=_env(),
                            capture_output=True, text=True, timeout=60)
    text = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)     # the CLI colours its output
    assert re.search(rf"Job .{sub_id}. succeeded|Status for job .{sub_id}.: SUCCEEDED", text), text + log
    print(f"job finished in {time.monotonic() - t0:.0f} s")
    assert "mlflow ui --backend-store-uri" in out.stdout
    cfg = load_config(cfg_path)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    check_store(cfg, 2)
