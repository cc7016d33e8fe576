"""The stops a rerun resumes (exit 75), for real, met in turn by one search on the session's Ray head: a
worker group that cannot get its resources (the stall watchdog), then a tracking-server outage - a
`mlflow server` (SQLite backend) killed by PID while the trial runs (MLflow's retries bounded by
tracking.http_*) - and the resumed search under the same MLflow runs.

The decision (stop at once, not buffer) and why: ``bidpm.tracking.store.TrackingUnavailable``."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from procs import MlflowServer, wait_placement_groups_removed  # tests/procs.py
from tiny import tiny_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _runs(db: Path) -> list[tuple[str, str, str]]:
    """(run id, status, bidpm.role) of every run, read from the server's SQLite store directly."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        return con.execute("select r.run_uuid, r.status, t.value from runs r left join tags t "
                           "on t.run_uuid = r.run_uuid and t.key = 'bidpm.role'").fetchall()


HOLDER = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
pg = ray.util.placement_group([{"slot": 1}])
ray.get(pg.ready(), timeout=120)
print("held", flush=True)
sys.stdin.read()
"""


def _wait(job: subprocess.Popen, log: Path, what: str, check, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and job.poll() is None:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"no {what} (job exit code {job.poll()}):\n{log.read_text()[-3000:]}")


def test_a_search_that_stalls_then_loses_its_server_resumes_each_time(tmp_path, ray_head, session_env, ray_session, capsys):
    """Two stops that a rerun of the same command resumes, met by one search in turn (each a driver in a
    subprocess: its exit code is the point), then the resumed run in this process:

    1. resources nobody frees: another job holds the session head's only 'slot' (conftest ``ray_head``),
       which the trial's Train worker asks for: the driver stops after tune.stall_timeout_s saying what it
       waited for (exit 75), its MLflow runs KILLED;
    2. the holder gone, the rerun restores the search; once its trial runs again, the tracking server is
       SIGKILLed: the driver stops within seconds (bounded retries), exit 75 and the command that resumes;
    3. the server back on the same port and store, the same job resumes under the same parent and trial
       run, records every epoch once and ends every run FINISHED."""
    from bidpm.commands.tune_steps import main

    out = tmp_path / "out"
    server = MlflowServer(tmp_path / "server")
    db = server.store / "mlflow.db"
    cfg = tmp_path / "outage.yaml"
    raw = tiny_study("outage", epochs=2, sections={"train": {"resources_per_worker": {"slot": 1}},
                                                   "tune": {"autoscaling": False, "stall_timeout_s": 10}},
                     http_max_retries=1, http_timeout_s=5, http_backoff_factor=0, connect_timeout_s=5,
                     tracking_uri=server.uri)
    cfg.write_text(yaml.safe_dump({**raw, "output_dir": str(out)}))
    cmd = [sys.executable, str(REPO / "jobs" / "tune_steps.py"), "--config", str(cfg)]
    rerun = f"rerun the same command: python {REPO / 'jobs' / 'tune_steps.py'} --config {cfg}"
    t0 = time.monotonic()
    server.start()
    print(f"server up in {time.monotonic() - t0:.0f} s")
    try:
        # 1. the stall
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, ray_head["gcs"]], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=session_env,
                                  start_new_session=True)
        try:
            assert holder.stdout.readline().strip() == "held"          # another job holds the only slot
            t1 = time.monotonic()
            first = subprocess.run(cmd, capture_output=True, text=True, env=session_env, cwd=str(tmp_path), timeout=400)
            took = time.monotonic() - t1
        finally:
            os.killpg(holder.pid, signal.SIGKILL)                      # the holder goes: its reservation with it
            holder.wait(30)
        assert first.returncode == 75, first.stdout[-3000:] + first.stderr[-3000:]
        last = first.stderr.strip().splitlines()[-1]
        for words in ("stopped: for", "tune.stall_timeout_s=10", "waited for resources", "slot: 1",
                      "held by placement groups", "rerun the same command: python"):
            assert words in last, (words, last)
        assert "waiting for 1 'slot'" in first.stderr                   # said while it waited, not only at the end
        print(f"stalled search stopped after {took:.0f} s: {last}")
        assert took < 300, f"stopped after {took:.0f} s"
        stalled = _runs(db)
        assert {st for _, st, _ in stalled} == {"KILLED"} and "study" in {role for _, _, role in stalled}   # none RUNNING
        parent_id = next(r for r, _, role in stalled if role == "study")

        # 2. the outage, once the holder's reservation is released (asynchronously, after its process died):
        # a trial still waiting on it would meet the 10 s stall timeout again
        wait_placement_groups_removed()
        log = tmp_path / "second.log"
        with open(log, "w") as f:
            job = subprocess.Popen(cmd, stdout=f, stderr=subprocess.PIPE, text=True, env=session_env, cwd=str(tmp_path),
                                   start_new_session=True)
        try:
            # the trial runs again (its run created, or taken over: RUNNING): its worker group is coming up
            _wait(job, log, "trial run RUNNING again", lambda: any(role == "trial" and st == "RUNNING" for _, st, role in _runs(db)))
            print(f"trial running again after {time.monotonic() - t0:.0f} s")
            server.kill()
            killed = time.monotonic()
            _, err = job.communicate(timeout=240)
            stopped_after = time.monotonic() - killed
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
        assert job.returncode == 75, log.read_text()[-3000:] + err[-3000:]
        assert "restoring study" in log.read_text()
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: the MLflow tracking server http://127.0.0.1:") and "stopped answering" in last
        assert last.endswith(rerun)
        assert stopped_after < 120, f"the driver took {stopped_after:.0f} s to stop (bounded retries)"

        # 3. the resumed search
        wait_placement_groups_removed()                    # the stopped driver's trial released its slot, as for a person rerunning
        t2 = time.monotonic()
        server.start()                                     # the same port and store
        t3 = time.monotonic()
        capsys.readouterr()
        assert main(["--config", str(cfg)]) == 0                # the same job, resumed
        resumed = capsys.readouterr().out
        print(f"driver stopped {stopped_after:.0f} s after the kill; server back in {t3 - t2:.0f} s; "
              f"the rerun finished in {time.monotonic() - t3:.0f} s")
        assert "restoring study" in resumed

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
