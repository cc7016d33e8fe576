"""The production tracking store, for real: a study against `mlflow server` on a real PostgreSQL, configured
as cluster/kuberay/mlflow-server.yaml configures its pod (the Deployment's args: two workers, served
artifacts, the basic-auth app; the ConfigMap's auth config; the store URI with its password in the
server's environment, as the Secret gives it; the run user made by the ConfigMap's own
``create_run_user.py``, and the study logging as that non-admin user, as the Ray pods do).

The database is stopped (immediate shutdown, by PID) while the study's only cell trains: the MLflow
server stays up and answers 503, the driver stops with exit 75 and the command to rerun, and the record
it could not write is in the journal. With the database back, the same command (in this process, on the
session's Ray head) replays the journal, trains nothing again, and ends every run FINISHED, each
metric recorded once - read back through MLflow and from PostgreSQL's own tables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import PostgresServer, manifest_server, postgres_bin, wait_placement_groups_removed  # tests/procs.py
from tiny import TINY_MODEL_OVERRIDES  # tests/tiny.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "study_phantom_cpu.yaml"
BIN = postgres_bin()


def _study_args(out: Path, uri: str) -> list[str]:
    return ["--config", str(CONFIG), f"output_dir={out}", *TINY_MODEL_OVERRIDES,
            "data.image_size=[16,16]", "data.num_slices=4", "data.phantom.num_subjects=6", "data.phantom.shape=[24,24,8]",
            "data.split.val_fraction=0.2", "data.split.test_fraction=0.2", "tune.autoscaling=false",
            "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "train.val_batches=1",
            "study.name=pg", "study.pairing_ratios=[1.0]", "study.seeds=[0]", "study.baseline_nfe=[1]",
            "study.bidpm_extra_nfe=[]", "study.bootstrap_samples=100",
            "study.methods=[{label: Bi-DPM N=1, name: bidpm, time_grid: [0.0, 1.0]}]",
            f"tracking.tracking_uri={uri}", "tracking.http_max_retries=1", "tracking.http_timeout_s=5",
            "tracking.http_backoff_factor=0", "tracking.connect_timeout_s=5"]


def _pg_runs(pg: PostgresServer) -> list[tuple[str, str, str]]:
    """(run id, status, bidpm.role) of every run, from PostgreSQL's tables directly (not through MLflow)."""
    return pg.query("select r.run_uuid, r.status, t.value from runs r left join tags t "
                    "on t.run_uuid = r.run_uuid and t.key = 'bidpm.role'")


@pytest.mark.skipif(BIN is None, reason="PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
def test_a_study_on_the_manifests_postgresql_store_survives_a_database_outage(tmp_path, session_env, ray_session, capsys,
                                                                               monkeypatch):
    from bidpm.commands.study import main
    from bidpm.tracking.journal import JOURNAL_FILE

    t0 = time.monotonic()
    db_password = "db-" + os.urandom(12).hex()
    pg = PostgresServer(BIN, db_password)
    try:
        server, secret = manifest_server(tmp_path / "server", backend_uri=pg.uri, args_kept=True)
        assert "--workers" in server.args and "--serve-artifacts" in server.args     # the manifest's, not ours
        server.start(timeout_s=300)                     # the schema migrations run on PostgreSQL (~30 s)
        up = time.monotonic() - t0
        script = tmp_path / "create_run_user.py"
        script.write_text(secret["create_run_user.py"])
        run_user = {"BIDPM_MLFLOW_RUN_USERNAME": "bidpm-run", "BIDPM_MLFLOW_RUN_PASSWORD": "run-" + os.urandom(12).hex()}
        made = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env={
            **os.environ, **run_user, "MLFLOW_SERVER": server.uri, "MLFLOW_AUTH_ADMIN_USERNAME": secret["username"],
            "MLFLOW_AUTH_ADMIN_PASSWORD": secret["password"]})
        assert made.returncode == 0, made.stdout + made.stderr
        creds = {"MLFLOW_TRACKING_USERNAME": run_user["BIDPM_MLFLOW_RUN_USERNAME"],
                 "MLFLOW_TRACKING_PASSWORD": run_user["BIDPM_MLFLOW_RUN_PASSWORD"]}

        # 1. the study, as a driver of its own (its exit code is the point); the database stops mid-cell
        out = tmp_path / "out"
        study = out / "ray_results" / "pg"
        args = _study_args(out, server.uri)
        log = tmp_path / "first.log"
        with open(log, "w") as f:
            job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "study.py"), *args], stdout=f,
                                   stderr=subprocess.PIPE, text=True, env={**session_env, **creds}, cwd=str(tmp_path),
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 400
            while job.poll() is None and time.monotonic() < deadline and not list((study / "train_runs").glob("train_*")):
                time.sleep(0.5)                      # the cell's Train run has started: its MLflow run is open
            assert job.poll() is None, log.read_text()[-3000:] + job.stderr.read()[-3000:]
            (trial_run,) = [r for r, st, role in _pg_runs(pg) if role == "trial" and st == "RUNNING"]
            pg.stop()
            stopped = time.monotonic()
            _, err = job.communicate(timeout=400)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
        first = log.read_text()
        assert job.returncode == 75, first[-3000:] + err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: the MLflow tracking server {server.uri} stopped answering"), last
        assert "start its database (the server answers 503" in last and "rerun the same command: python" in last, last
        journal = [json.loads(line) for line in (study / JOURNAL_FILE).read_text().splitlines()]
        assert journal and {op["run"] for op in journal} == {trial_run}          # what it could not write: kept
        metrics = next(op for op in journal if op["op"] == "metrics")
        # The driver stops at the cell's first report (its epoch); the trial goes on to score the cell (a Ray task)
        # until the driver's stop reaches it, so its score file may or may not be written by then (CI: written).
        # Either way nothing is half-done: a score file is complete, and the rerun never scores that cell again.
        early = {p: p.stat().st_mtime_ns for p in (study / "cells").glob("*.json")}
        for p in early:
            assert json.loads(p.read_text())["cell"]["id"] == p.stem, p
        ckpts = {str(p): p.stat().st_mtime_ns for p in (study / "train_runs").rglob("state.pt")}
        with capsys.disabled():
            print(f"\nstore up in {up:.0f} s; the driver stopped {time.monotonic() - stopped:.0f} s after the database; "
                  f"journal: {[op['op'] for op in journal]}; cell scored before the stop: {bool(early)}")

        # 2. the database back (same folder, same port: crash recovery); the same command, in this process
        pg.start()
        wait_placement_groups_removed()
        for k, v in creds.items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        t1 = time.monotonic()
        assert main(args) == 0
        second = capsys.readouterr().out
        with capsys.disabled():
            print(f"the rerun finished in {time.monotonic() - t1:.0f} s")
        assert "restoring" in second and "wrote 1 record(s) the last run could not" in second
        assert not (study / JOURNAL_FILE).exists()                                 # replayed, once
        assert ckpts and {str(p): p.stat().st_mtime_ns for p in (study / "train_runs").rglob("state.pt")} == ckpts  # no epoch
        (cell_file,) = (study / "cells").glob("*.json")                           # ... trained again; the cell scored
        assert all(p.stat().st_mtime_ns == t for p, t in early.items())           # ... once
        assert (study / "report" / "report.md").stat().st_size > 0

        from mlflow import MlflowClient

        client = MlflowClient(server.uri, server.uri)                              # as the run user
        exp = client.get_experiment_by_name("study_phantom_cpu")
        runs = client.search_runs([exp.experiment_id])
        assert sorted(r.data.tags.get("bidpm.role") for r in runs) == ["study", "trial"]
        assert {r.info.status for r in runs} == {"FINISHED"}
        trial = next(r for r in runs if r.data.tags.get("bidpm.role") == "trial")
        assert trial.info.run_id == trial_run                                      # the same run, not a new one
        for key in metrics["metrics"]:                                             # each journaled metric once
            hist = client.get_metric_history(trial_run, key)
            assert [m.step for m in hist] == [metrics["step"]], (key, [(m.step, m.value, m.timestamp) for m in hist], journal)
        assert sorted((st, role) for _, st, role in _pg_runs(pg)) == [("FINISHED", "study"), ("FINISHED", "trial")]

        # the database password is the server's alone: in no output, file or record of the study
        assert db_password not in first + err + second
        for p in out.rglob("*"):
            if p.is_file() and p.stat().st_size < 50_000_000:
                assert db_password.encode() not in p.read_bytes(), p
        assert not any(db_password in json.dumps(r.data.params) + json.dumps(r.data.tags) for r in runs)
    finally:
        if "server" in locals():
            server.kill()
        pg.remove()
