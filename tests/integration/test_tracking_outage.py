"""A tracking-server outage mid-search, for real: a `mlflow server` (SQLite backend) is killed by PID while
the search's trial runs; the driver (a subprocess on the session's Ray head: its exit code is the point)
must stop within seconds (MLflow's retries bounded by tracking.http_*) with exit 75 and the command that
resumes; the server comes back on the same port and store, and the same job (in this process, on the same
head) resumes the search under the same parent and trial runs and ends them FINISHED.

The decision (stop at once, not buffer) and why: ``bidpm.tracking.store.TrackingUnavailable``."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ports import reserved_ports
from tiny import tiny_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STUDY = tiny_study("outage", epochs=2, http_max_retries=1, http_timeout_s=5, http_backoff_factor=0, connect_timeout_s=5)


class Server:
    """`mlflow server` on a fixed port and store, started and killed (SIGKILL, its whole process group) by PID."""

    def __init__(self, store: Path, port: int) -> None:
        self.store, self.port, self.proc = store, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout_s: float = 120) -> None:
        self.store.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
             "--artifacts-destination", str(self.store / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail("mlflow server exited at start")
                time.sleep(0.5)
        self.kill()
        pytest.fail(f"mlflow server did not answer within {timeout_s:.0f} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def _runs(db: Path) -> list[tuple[str, str, str]]:
    """(run id, status, bidpm.role) of every run, read from the server's SQLite store directly."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        return con.execute("select r.run_uuid, r.status, t.value from runs r left join tags t "
                           "on t.run_uuid = r.run_uuid and t.key = 'bidpm.role'").fetchall()


def test_server_killed_mid_study_stops_at_once_and_the_rerun_resumes(tmp_path, session_env, ray_session, capsys):
    from bidpm.commands.tune_steps import main

    out = tmp_path / "out"
    with reserved_ports(1) as (port,):
        pass
    server = Server(tmp_path / "server", port)
    cfg = tmp_path / "outage.yaml"
    cfg.write_text(yaml.safe_dump({**STUDY, "output_dir": str(out), "tracking": {**STUDY["tracking"], "tracking_uri": server.uri}}))
    cmd = [sys.executable, str(REPO / "jobs" / "tune_steps.py"), "--config", str(cfg)]
    t0 = time.monotonic()
    server.start()
    print(f"server up in {time.monotonic() - t0:.0f} s")
    try:
        log = tmp_path / "first.log"
        with open(log, "w") as f:
            job = subprocess.Popen(cmd, stdout=f, stderr=subprocess.PIPE, text=True, env=session_env, cwd=str(tmp_path),
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and job.poll() is None:
                if any(role == "trial" for _, _, role in _runs(server.store / "mlflow.db")):
                    break                                 # the trial started: its worker group is coming up
                time.sleep(0.5)
            assert job.poll() is None, log.read_text()[-3000:]
            print(f"trial run created after {time.monotonic() - t0:.0f} s")
            server.kill()
            killed = time.monotonic()
            _, err = job.communicate(timeout=240)
            stopped_after = time.monotonic() - killed
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
        assert job.returncode == 75, log.read_text()[-3000:] + err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: the MLflow tracking server http://127.0.0.1:") and "stopped answering" in last
        assert last.endswith(f"rerun the same command: python {REPO / 'jobs' / 'tune_steps.py'} --config {cfg}")
        assert stopped_after < 120, f"the driver took {stopped_after:.0f} s to stop (bounded retries)"
        before = _runs(server.store / "mlflow.db")
        parent_id = next(r for r, _, role in before if role == "study")

        t1 = time.monotonic()
        server.start()                                     # the same port and store
        t2 = time.monotonic()
        capsys.readouterr()
        assert main(["--config", str(cfg)]) == 0                # the same job, resumed
        second = capsys.readouterr().out
        print(f"driver stopped {stopped_after:.0f} s after the kill; server back in {t2 - t1:.0f} s; "
              f"the rerun finished in {time.monotonic() - t2:.0f} s")
        assert "restoring study" in second

        from mlflow import MlflowClient

        client = MlflowClient(server.uri, server.uri)
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("bidpm.role") == "study"]
        trials = [r for r in runs if r.data.tags.get("bidpm.role") == "trial"]
        assert [p.info.run_id for p in parents] == [parent_id]                   # the parent run is reused
        assert len(trials) == 1 and trials[0].data.tags["mlflow.parentRunId"] == parent_id   # no duplicate trial run
        assert {r.info.status for r in runs} == {"FINISHED"}                    # nothing left RUNNING
        hist = client.get_metric_history(trials[0].info.run_id, "val/ssim_mean")
        assert sorted(m.step for m in hist) == [1, 2]                           # every epoch recorded once
        assert trials[0].data.params["method.time_grid"] == "[0.0, 1.0]"
    finally:
        server.kill()
