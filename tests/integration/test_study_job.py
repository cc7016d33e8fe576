"""jobs/study.py end to end, as a user runs it, against the production tracking store: a 4-cell study (Bi-DPM
N=1 and RF x 100% and 50% paired) on the session's Ray head, logging to `mlflow server` on a real
PostgreSQL, configured as cluster/kuberay/mlflow-server.yaml configures its pod (the Deployment's args: two
workers, served artifacts, the basic-auth app; the ConfigMap's auth config; the store URI with its
password in the server's environment, as the Secret gives it; the run user made by the ConfigMap's own
``create_run_user.py``, and the study logging as that non-admin user, as the Ray pods do).

1. the database is stopped (immediate shutdown, by PID) while the first cells train: the MLflow server
   stays up and answers 503, the driver stops with exit 75 and the command to rerun, and the records it
   could not write are in the journal;
2. the database back, the same command (a driver of its own again) replays the journal once and is
   killed with SIGKILL after a finished cell;
3. the same job (``bidpm.commands.study.main``, in this process on the same head: the kills are what need
   a process of their own) runs to completion, then once more, then once with a cell's scores damaged
   and its checkpoint changed.

Checks: a registered checkpoint is never trained again and a finished cell never scored again, every
output of the report is there and complete, one MLflow parent run with a FINISHED child run per cell
(the runs open at the outage are the same runs, not new ones), each journaled metric recorded once - read
back through MLflow and from PostgreSQL's own tables - the last rerun trains nothing, and the database
password is in no output, file or record. Without PostgreSQL (not installed: .ci/run installs it) the
same study runs on the manifest server's SQLite store, without step 1.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from procs import PostgresServer, manifest_server, postgres_bin, wait_placement_groups_removed  # tests/procs.py
from tiny import TINY_MODEL_OVERRIDES  # tests/tiny.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "study_phantom_cpu.yaml"
BIN = postgres_bin()
OVERRIDES = [
    "data.image_size=[16,16]", "data.num_slices=8", "data.phantom.num_subjects=8", "data.phantom.shape=[24,24,10]",
    "data.split.val_fraction=0.125", "data.split.test_fraction=0.25", *TINY_MODEL_OVERRIDES, "tune.autoscaling=false",
    "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "train.val_batches=1",
    "study.name=tiny", "study.pairing_ratios=[1.0,0.5]", "study.seeds=[0]", "study.baseline_nfe=[1,2]",
    "study.bootstrap_samples=200", "study.volume_metrics=true",
    "study.methods=[{label: Bi-DPM N=1, name: bidpm, time_grid: [0.0, 1.0]}, {label: RF, name: rf}]",
    # MLflow's retries bounded, so an outage stops the driver at its next call (27-63 s measured). The read timeout outlasts
    # the server's own bound on the 503: a server worker that (re)creates its SQLAlchemy engine retries the stopped
    # database 10 times with back-off (~101 s of sleeps, mlflow.store.db.utils) before it answers; 20 s expired in a
    # clean-clone run (M), so which message the driver printed depended on the worker that took the request
    "tracking.http_max_retries=1", "tracking.http_timeout_s=150", "tracking.http_backoff_factor=0", "tracking.connect_timeout_s=5",
]


def _args(out: Path, uri: str) -> list[str]:
    return ["--config", str(CONFIG), f"output_dir={out}", f"tracking.tracking_uri={uri}", *OVERRIDES]


def _snapshot(cells_dir: Path) -> dict[str, tuple[float, str]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in sorted(cells_dir.glob("*.json"))}


def _checkpoints(study: Path, cell: str) -> dict[str, int]:
    """Every checkpoint file of a cell's Train run, with its mtime: changes if the cell trains again."""
    run = study / "train_runs" / f"train_{cell}"
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in sorted(run.rglob("state.pt"))}


def _registered(study: Path) -> dict[str, int]:
    """The weights of every checkpoint a Train run's controller has registered (its own snapshot file), with
    mtimes: a registered checkpoint is where a restored cell continues, so it is never written again."""
    out = {}
    for run in (study / "train_runs").glob("train_*"):
        try:
            names = [c["checkpoint_dir_name"] for c in
                     json.loads((run / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]]
        except (OSError, ValueError, KeyError):
            continue
        out.update({str(p): p.stat().st_mtime_ns for n in names for p in (run / n).rglob("state.pt")})
    return out


def _pg_runs(pg: PostgresServer) -> list[tuple[str, str, str]]:
    """(run id, status, bidpm.role) of every run, from PostgreSQL's tables directly (not through MLflow)."""
    return pg.query("select r.run_uuid, r.status, t.value from runs r left join tags t "
                    "on t.run_uuid = r.run_uuid and t.key = 'bidpm.role'")


def _database_outage(pg: PostgresServer, server, study: Path, args: list[str], env: dict, tmp_path: Path, say) -> dict:
    """Step 1: the study as a driver of its own (its exit code is the point); the database stops mid-cell."""
    from bidpm.tracking.journal import JOURNAL_FILE

    log = tmp_path / "outage.log"
    with open(log, "w") as f:
        job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "study.py"), *args], stdout=f, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=str(tmp_path), start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while job.poll() is None and time.monotonic() < deadline and not list((study / "train_runs").glob("train_*")):
            time.sleep(0.5)                      # a cell's Train run has started: its MLflow run is open
        assert job.poll() is None, log.read_text()[-3000:] + job.stderr.read()[-3000:]
        running = {r for r, st, role in _pg_runs(pg) if role == "trial" and st == "RUNNING"}
        assert running
        pg.stop()
        stopped = time.monotonic()
        _, err = job.communicate(timeout=400)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = log.read_text()
    assert job.returncode == 75, text[-3000:] + err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: the MLflow tracking server {server.uri} stopped answering"), last
    assert "start its database (the server answers 503" in last and "rerun the same command: python" in last, last
    journal = [json.loads(line) for line in (study / JOURNAL_FILE).read_text().splitlines()]
    assert journal and any(op["op"] == "metrics" for op in journal)          # what it could not write: kept
    # The driver stops at a cell's first report (its epoch); a trial goes on to score its cell (a Ray task)
    # until the driver's stop reaches it, so a score file may or may not be written by then. Either way
    # nothing is half-done: a score file is complete, and no rerun scores that cell again.
    early = {p: p.stat().st_mtime_ns for p in (study / "cells").glob("*.json")}
    for p in early:
        assert json.loads(p.read_text())["cell"]["id"] == p.stem, p
    say(f"the driver stopped {time.monotonic() - stopped:.0f} s after the database; journal: "
        f"{[op['op'] for op in journal]}; cells scored before the stop: {len(early)}")
    return {"running": running, "journal": journal, "early": early, "ckpts": _registered(study), "text": text + err}


NO_OUTAGE = {"running": set(), "journal": [], "early": {}, "ckpts": {}, "text": ""}


def test_a_study_loses_its_database_is_killed_resumes_without_retraining_and_reports(tmp_path, session_env, ray_session,
                                                                                     capsys, monkeypatch):
    from bidpm.commands.study import main
    from bidpm.tracking.journal import JOURNAL_FILE

    t0 = time.monotonic()

    def say(text: str) -> None:                            # progress in the test's output, past capsys
        with capsys.disabled():
            print(f"\n[{time.monotonic() - t0:5.0f} s] {text}")

    db_password = "db-" + os.urandom(12).hex()
    pg = PostgresServer(BIN, db_password) if BIN else None
    if pg is None:
        say("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it): the manifest "
            "server on SQLite, no database outage")
    try:
        server, secret = manifest_server(tmp_path / "server", backend_uri=pg.uri if pg else None, args_kept=True)
        assert "--workers" in server.args and "--serve-artifacts" in server.args     # the manifest's, not ours
        server.start(timeout_s=300)                     # the schema migrations run on PostgreSQL (~30 s)
        say(f"store up on {'PostgreSQL' if pg else 'SQLite'}")
        script = tmp_path / "create_run_user.py"
        script.write_text(secret["create_run_user.py"])
        run_user = {"BIDPM_MLFLOW_RUN_USERNAME": "bidpm-run", "BIDPM_MLFLOW_RUN_PASSWORD": "run-" + os.urandom(12).hex()}
        made = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env={
            **os.environ, **run_user, "MLFLOW_SERVER": server.uri, "MLFLOW_AUTH_ADMIN_USERNAME": secret["username"],
            "MLFLOW_AUTH_ADMIN_PASSWORD": secret["password"]})
        assert made.returncode == 0, made.stdout + made.stderr
        creds = {"MLFLOW_TRACKING_USERNAME": run_user["BIDPM_MLFLOW_RUN_USERNAME"],
                 "MLFLOW_TRACKING_PASSWORD": run_user["BIDPM_MLFLOW_RUN_PASSWORD"]}
        for k, v in creds.items():                      # the in-process runs log as the run user too
            monkeypatch.setenv(k, v)
        out = tmp_path / "out"
        study = out / "ray_results" / "tiny"
        args = _args(out, server.uri)
        env = {**session_env, **creds}

        # 1. the database stops while the first cells train
        outage = _database_outage(pg, server, study, args, env, tmp_path, say) if pg else NO_OUTAGE

        # 2. the database back (same folder, same port: crash recovery); the same command, SIGKILLed after a finished cell
        if pg:
            pg.start()
            wait_placement_groups_removed()
        log = tmp_path / "second.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "study.py"), *args], stdout=f,
                                    stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path), start_new_session=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if any(line.startswith("finished ") for line in log.read_text().splitlines()):
                break
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)                      # the driver: Ray then ends its job on the head
        proc.wait(timeout=60)
        second = log.read_text()
        started = {d.name.removeprefix("train_") for d in (study / "train_runs").glob("train_*")}   # by either driver
        if pg:
            n = len(outage["journal"])
            assert f"wrote {n} record(s) the last run could not" in second, second[-3000:]
        assert not (study / JOURNAL_FILE).exists()                                  # replayed, once
        before = _snapshot(study / "cells")
        assert len(before) >= 1, "the kill came after a finished cell, so its scores must be on disk"
        assert len(before) < 4, "the kill came before the study ended"
        assert all(p.stat().st_mtime_ns == t for p, t in outage["early"].items())   # scored before the outage: once
        ckpts = {name[:-5]: _checkpoints(study, name[:-5]) for name in before}
        assert all(ckpts.values())
        say(f"second driver killed after {len(before)} finished cell(s)")

        # 3. the same job, resumed in this process, to the end
        wait_placement_groups_removed()  # Ray ends the killed job within seconds; a rerun waits for it
        capsys.readouterr()
        assert main(args) == 0
        third = capsys.readouterr().out
        say("resumed study finished")
        assert "restoring" in third
        after = _snapshot(study / "cells")
        assert len(after) == 4
        assert {k: after[k] for k in before} == before           # finished before the kill: not retrained, not rewritten
        # a cell that had finished may be restored as a trial (if Tune had not saved its end before the kill),
        # but it reports its stored scores: no epoch is trained again
        assert {cell: _checkpoints(study, cell) for cell in ckpts} == ckpts
        assert bool(outage["ckpts"]) == bool(pg)                 # the epoch that met the outage: registered ...
        assert {p: os.stat(p).st_mtime_ns for p in outage["ckpts"]} == outage["ckpts"]   # ... and never trained again
        report = study / "report"
        for f in ("report.md", "table1.md", "table2.md", "figure5.png", "figure7.png", "significance.csv", "cost.csv",
                  "cells.csv", "figure5.csv", "figure7.csv"):
            assert (report / f).stat().st_size > 0, f
        assert not list(report.glob("*.tmp-*"))
        md = (report / "report.md").read_text()
        assert "| Bi-DPM N=1 | 1 |" in md and "| RF |" in md and "evaluation.scale=unit" in md and "Wilcoxon" in md
        assert "Table 1 (100% paired)" in third and "Table 2 (50% paired" in third
        cells = [json.loads(v[1]) for v in after.values()]
        assert {c["cell"]["ratio"] for c in cells} == {1.0, 0.5}
        # study.volume_metrics: each test subject's 8 slices as a volume, in the cell record and the Volumes table
        assert "## Volumes: 3-D and inter-slice consistency (100% paired)" in md and "SAG_SSIM" in md
        vrows = list(csv.DictReader((report / "volumes.csv").read_text().splitlines()))
        for c in cells:
            vol = c["volumes"]
            assert len(vol["subjects"]) == len({s for s, _ in c["ids"]})
            for d in ("fwd", "bwd"):
                for m in ("ssim", "sag_ssim", "cor_ssim", "tp_grad_mae"):
                    v = np.asarray(vol["values"][d][m])
                    assert np.isfinite(v).all() and vol["summary"][f"test/{d}_vol_{m}_mean"] == pytest.approx(v.mean())
            orig = c["original"]                                   # each test subject's own files (24 x 24 x 10)
            assert "error" not in orig and orig["subjects"] == sorted({s for s, _ in c["ids"]}) and not orig["skipped"]
            assert np.isfinite(orig["values"]["fwd"]["vol_ssim"]).all() and np.isfinite(orig["values"]["bwd"]["sag_ssim"]).all()
        assert "## Original volumes (100% paired)" in md and (report / "original_volumes.csv").stat().st_size > 0
        full = [c for c in cells if c["cell"]["ratio"] == 1.0]
        for r in vrows:
            (c,) = [c for c in full if c["cell"]["label"] == r["method"]]
            assert float(r["bwd_vol_cor_ssim"]) == pytest.approx(c["volumes"]["summary"]["test/bwd_vol_cor_ssim_mean"])
        rf = next(c for c in cells if c["cell"]["method"] == "rf")
        assert [g["steps"] for g in rf["grids"]] == [1, 2] and len(rf["ids"]) == len(rf["grids"][0]["values"]["fwd"]["ssim"])

        assert main(args) == 0
        fourth = capsys.readouterr().out
        assert _snapshot(study / "cells") == after and "started " not in fourth    # nothing retrained
        assert "restoring" in fourth

        from mlflow import MlflowClient

        client = MlflowClient(server.uri, server.uri)                              # as the run user
        exp = client.get_experiment_by_name("study_phantom_cpu")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("bidpm.role") == "study"]
        trials = [r for r in runs if r.data.tags.get("bidpm.role") == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(trials) == 4 and {r.info.status for r in trials} == {"FINISHED"}
        assert {r.data.params["data.pairing_ratio"] for r in trials} == {"1.0", "0.5"}
        assert "report" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
        assert outage["running"] <= {r.info.run_id for r in trials}               # the same runs, not new ones
        for op in outage["journal"]:                                               # each journaled metric once
            for key in op.get("metrics", {}) if op["op"] == "metrics" else ():
                hist = client.get_metric_history(op["run"], key)
                assert [m.step for m in hist] == [op["step"]], (key, [(m.step, m.value, m.timestamp) for m in hist])
        if pg:
            assert sorted((st, role) for _, st, role in _pg_runs(pg)) == [("FINISHED", "study")] + [("FINISHED", "trial")] * 4
        fresh = {k[:-5] for k in after} - started                # trained by one driver only (this process's)
        assert fresh, "the kill came before every cell had started"
        _check_cost(study, md, fresh, trials)

        # the weights each cell was scored with: recorded in the tracking database (a hashlib reference)
        for c in cells:
            want = hashlib.sha256((Path(c["checkpoint"]) / "state.pt").read_bytes()).hexdigest()
            run = next(r for r in trials if r.info.run_name == f"cell_{c['cell']['id']}")
            assert c["checkpoint_sha256"] == want and run.data.tags["bidpm.checkpoint_sha256"] == want, c["cell"]["id"]
        # a cell's scores lost and its checkpoint changed on the shared volume: not scored with other weights
        victim = next(c for c in cells if c["cell"]["method"] == "rf")
        vid = victim["cell"]["id"]
        (study / "cells" / f"{vid}.json").write_text('{"grids": [')                # damaged: scored again ...
        with open(Path(victim["checkpoint"]) / "state.pt", "ab") as f:             # ... from weights written since
            f.write(b"\0")
        assert main(args) == 1                                                      # that cell stays unscored
        fifth = capsys.readouterr()
        text = fifth.out + fifth.err
        assert f"cell {vid}: its scores" in text and "kept aside" in text
        assert f"cell {vid}: checkpoint" in text and "not the" in text and "recorded in the tracking database" in text
        assert not (study / "cells" / f"{vid}.json").exists() and len(list((study / "cells").glob("*.json"))) == 3

        # the database password is the server's alone: in no output, file or record of the study
        assert db_password not in outage["text"] + second + third + fourth + text
        for p in out.rglob("*"):
            if p.is_file() and p.stat().st_size < 50_000_000:
                assert db_password.encode() not in p.read_bytes(), p
        assert not any(db_password in json.dumps(r.data.params) + json.dumps(r.data.tags) for r in runs)
    finally:
        if "server" in locals():
            server.kill()
        if pg:
            pg.remove()


def _check_cost(study: Path, md: str, trained_once: set[str], trials: list) -> None:
    """Device-hours (bidpm.tune.cost): per cell the sum over its attempts' records (CPU-h: 0.5 CPU x 1 worker),
    in the report and on each cell's MLflow run; a cell trained once agrees with Tune's own clock
    (``time_total_s``, which starts before the fit: imports, datasets); every run that trained an epoch carries
    MLflow's system metrics of its worker's node."""
    rows = list(csv.DictReader((study / "report" / "cost_cells.csv").read_text().splitlines()))
    assert len(rows) == 4 and "CPU-h (sum)" in md and "Per cell" in md
    for r in rows:
        recs = [json.loads(p.read_text()) for p in (study / "train_runs" / f"train_{r['cell']}" / "attempts").glob("*.json")]
        assert r["device"] == "CPU" and float(r["devices"]) == 0.5 and int(r["attempts"]) == len(recs) >= 1
        assert 0 < float(r["device_hours"]) == pytest.approx(sum(x["seconds"] * x["devices"] for x in recs) / 3600)
        if r["cell"] in trained_once:
            assert len(recs) == 1                            # started by one driver only: one attempt
            # its trial's folder: cell_<id>, or cell_<id>_<suffix> when a killed driver's trial had made that one
            (res,) = [d / "result.json" for d in study.glob(f"cell_{r['cell']}*") if (d / "result.json").exists()]
            results = map(json.loads, res.read_text().splitlines())
            epoch = [x for x in results if "epoch" in x][-1]      # its training's last report
            print(f"cell {r['cell']}: cost/train_s {epoch['cost/train_s']:.1f} s, time_total_s {epoch['time_total_s']:.1f} s")
            assert 0.5 * epoch["time_total_s"] <= epoch["cost/train_s"] <= epoch["time_total_s"] + 5
    by_name = {t.info.run_name: t for t in trials}
    for r in rows:
        m = by_name[f"cell_{r['cell']}"].data.metrics
        # its latest result's running total (the final one; an epoch's if a restored trial's end shared a step)
        assert 0 < m["cost/device_hours"] <= float(r["device_hours"]) * (1 + 1e-9)
        if "train/loss" in m or r["cell"] in trained_once:
            assert any(k.startswith("system/cpu_utilization_percentage") for k in m), sorted(m)
