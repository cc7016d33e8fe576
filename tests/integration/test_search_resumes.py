"""One multi-objective search (objectives max val/ssim_mean, min nfe; three tiny trials, N in {1, 2}) on the
session's Ray head, logging to a `mlflow server` (SQLite backend), met in turn by every stop a rerun of the
same command resumes, then run to completion and warm-started (each stop is a driver in a subprocess:
its exit code or its death is the point; the completion runs in this process):

1. resources nobody frees: another job holds the head's only 'slot', which the trials' Train workers ask
   for: the driver stops after tune.stall_timeout_s saying what it waited for (exit 75), runs KILLED;
2. the holder gone, the rerun restores the search; once its trial runs, the tracking server is SIGKILLed
   (MLflow's retries bounded by tracking.http_*): the driver stops in seconds, exit 75, the command to rerun;
3. the server back on the same port and store, the rerun is SIGKILLed once the Optuna study holds a
   finished trial;
4. the same search, in this process, to the end: the persisted Optuna study counts every Tune trial exactly
   once (a trial a killed driver had asked for but Tune never ran is FAIL, never COMPLETE), the Pareto
   report against a brute-force dominance filter, one registered version per front NFE with its
   ``champion-nfeK`` alias while ``champion`` stays the overall best, and the MLflow record: the first
   driver's parent run reused, one run per trial, every run FINISHED, every epoch recorded once;
5. a search warm-started from the MLflow parent run, whose seeded trials are in its study but never run.

One search for all of it: the outage's resumed trial is the search's first trial, so no trial trains only
to show a resume. The decision to stop at once
on an outage (not buffer): ``bidpm.tracking.store.TrackingUnavailable``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bidpm.config import load_config

from procs import MlflowServer, wait_placement_groups_removed  # tests/procs.py
from tiny import tiny_search  # tests/tiny.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
OBJECTIVES = [{"metric": "val/ssim_mean", "mode": "max"}, {"metric": "nfe", "mode": "min"}]

HOLDER = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
pg = ray.util.placement_group([{"slot": 1}])
ray.get(pg.ready(), timeout=120)
print("held", flush=True)
sys.stdin.read()
"""


def _runs(db: Path) -> list[tuple[str, str, str]]:
    """(run id, status, bidpm.role) of every run, read from the server's SQLite store directly."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        return con.execute("select r.run_uuid, r.status, t.value from runs r left join tags t "
                           "on t.run_uuid = r.run_uuid and t.key = 'bidpm.role'").fetchall()


def _wait(job: subprocess.Popen, log: Path, what: str, check, timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and job.poll() is None:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"no {what} (job exit code {job.poll()}):\n{log.read_text()[-3000:]}")


def _front(rows: list[dict]) -> set[str]:
    pts = {r["trial"]: (r["values"]["val/ssim_mean"], r["values"]["nfe"]) for r in rows if r.get("checkpoint_path")}
    dom = lambda a, b: b[0] >= a[0] and b[1] <= a[1] and b != a   # noqa: E731 - b dominates a
    return {t for t, p in pts.items() if not any(dom(p, q) for u, q in pts.items() if u != t)}


def _complete(db: Path, name: str) -> int:
    import optuna

    if not db.exists():
        return 0
    try:
        return len(optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials(
            states=(optuna.trial.TrialState.COMPLETE,)))
    except Exception:                    # its tables may not exist yet
        return 0


def _write_cfg(path: Path, out: Path, server_uri: str) -> None:
    raw = tiny_search(out)
    raw["train"]["resources_per_worker"] = {"slot": 1}
    raw["tune"].update({"stall_timeout_s": 10, "objectives": OBJECTIVES, "num_samples": 3})
    raw["tracking"].update({"tracking_uri": server_uri, "http_max_retries": 1, "http_timeout_s": 5,
                            "http_backoff_factor": 0, "connect_timeout_s": 5})
    path.write_text(yaml.safe_dump(raw))


def test_a_search_stalls_loses_its_server_is_killed_resumes_each_time_and_reports_its_front(
        tmp_path, ray_head, session_env, ray_session, capsys):
    import optuna
    from mlflow import MlflowClient

    from bidpm import tracking
    from bidpm.commands.tune_steps import main
    from bidpm.search.run import load_finished, run_search
    from bidpm.tune.names import experiment_dir

    server = MlflowServer(tmp_path / "server")
    db = server.store / "mlflow.db"
    cfg_path = tmp_path / "search.yaml"
    _write_cfg(cfg_path, tmp_path / "out", server.uri)
    cfg = load_config(cfg_path)
    cmd = [sys.executable, str(REPO / "jobs" / "tune_steps.py"), "--config", str(cfg_path)]
    rerun = f"rerun the same command: python {REPO / 'jobs' / 'tune_steps.py'} --config {cfg_path}"
    optuna_db = Path(experiment_dir(cfg, cfg.tune.experiment_name)) / "optuna.db"
    def say(text: str) -> None:                            # progress in the test's output, past capsys
        with capsys.disabled():
            print(f"[{time.monotonic() - t0:5.0f} s] {text}")

    t0 = time.monotonic()
    server.start()
    say(f"server up in {time.monotonic() - t0:.0f} s")
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
        say(f"stalled search stopped after {took:.0f} s: {last}")
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
            say(f"trial running again after {time.monotonic() - t0:.0f} s")
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
        assert _complete(optuna_db, cfg.tune.experiment_name) == 0       # the outage came before any trial ended

        # 3. the server back (same port and store); the rerun's driver SIGKILLed once Optuna holds a finished trial
        wait_placement_groups_removed()                    # the stopped driver's trial released its slot
        t2 = time.monotonic()
        server.start()
        say(f"driver stopped {stopped_after:.0f} s after the server's kill; server back in {time.monotonic() - t2:.0f} s")
        log = tmp_path / "third.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=session_env, cwd=str(tmp_path),
                                    start_new_session=True)
        try:
            _wait(proc, log, "finished trial in the Optuna study", lambda: _complete(optuna_db, cfg.tune.experiment_name) > 0)
            assert proc.poll() is None, log.read_text()[-3000:]
            assert _complete(optuna_db, cfg.tune.experiment_name) < 3, "the kill came before the search ended"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        assert "restoring study" in log.read_text()
        say("third driver killed after a finished trial")
        wait_placement_groups_removed()                    # Ray ends the killed job; a rerun waits for it

        # 4. the same command, resumed in this process, to the end
        t3 = time.monotonic()
        capsys.readouterr()
        assert main(cmd[2:]) == 0
        text = capsys.readouterr().out
        say(f"the rerun finished in {time.monotonic() - t3:.0f} s")
        out = load_finished(cfg)
        assert "restoring study" in text
        assert "every trial runs all 2 epochs" in text and "optuna-dashboard sqlite:///" in text
        assert "Pareto front" in text and ("parameter importance" in text)
        rows = out.rows
        assert sorted(r["values"]["nfe"] for r in rows) == sorted(r["n_steps"] for r in rows) and len(rows) == 3
        assert all(r["status"] == "finished" for r in rows)                         # FIFO: nothing stopped early
        front = _front(rows)
        assert set(out.pareto["front"]) == front
        folder = Path(out.experiment_dir) / "pareto"
        csv_rows = (folder / "pareto_front.csv").read_text().splitlines()[1:]
        assert {line.split(",")[0] for line in csv_rows} == front
        assert {"pareto_front.png", "quality_vs_nfe.png", "importance.txt"} <= {p.name for p in folder.iterdir()}
        assert json.loads((Path(out.experiment_dir) / "study.json").read_text())["pareto"]["front"] == out.pareto["front"]
        # the study is persisted where optuna-dashboard can open it, every Tune trial once
        study = optuna.load_study(study_name=cfg.tune.experiment_name, storage=f"sqlite:///{optuna_db}")
        complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert len(complete) == 3 and len(study.directions) == 2                   # no trial counted twice
        assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))      # a killed driver's ask: FAIL
        assert sorted(t.params["n_steps"] for t in complete) == sorted(r["params"]["n_steps"] for r in rows)
        # the registry: one version per front NFE, champion-nfeK per budget, champion the overall best
        client = MlflowClient(server.uri, server.uri)
        name = cfg.tracking.registered_model_name
        budgets = out.pareto["budgets"]
        by_trial = {r["trial"]: r for r in rows}
        assert {int(k) for k in budgets} == {by_trial[t]["n_steps"] for t in front}
        for k, b in budgets.items():
            mv = client.get_model_version(name, b["version"])
            assert mv.tags["bidpm.nfe"] == k and mv.tags["bidpm.trial_id"] == b["trial"]
            assert tracking.alias_version(client, name, f"champion-nfe{k}") == b["version"]   # first of its budget
            assert mv.tags[f"bidpm.promotion.nfe{k}.decision"] == "promoted"
        assert len({b["version"] for b in budgets.values()}) == len(budgets)
        assert tracking.alias_version(client, name, "champion") == out.model_version
        assert client.get_model_version(name, out.model_version).tags["bidpm.trial_id"] == out.best_trial
        parent_arts = {a.path for a in client.list_artifacts(out.parent_run_id, "pareto")}
        assert "pareto/pareto_front.csv" in parent_arts and "pareto/quality_vs_nfe.png" in parent_arts
        # the MLflow record across the four drivers: the first driver's parent, a run per trial, every epoch once
        exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("bidpm.role") == "study"]
        trials = [r for r in runs if r.data.tags.get("bidpm.role") == "trial"]
        assert [p.info.run_id for p in parents] == [parent_id] == [out.parent_run_id]      # the parent run is reused
        assert len(trials) == 3 and {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent_id}   # no duplicate
        assert {t.data.tags[tracking.TAG_TRIAL] for t in trials} == set(by_trial)
        assert {r.info.status for r in runs} == {"FINISHED"}                                # nothing left RUNNING
        for t in trials:
            hist = client.get_metric_history(t.info.run_id, "val/ssim_mean")
            assert [m.step for m in hist] == [1, 2], (t.data.tags[tracking.TAG_TRIAL], hist)   # every epoch once, in order
            grid = by_trial[t.data.tags[tracking.TAG_TRIAL]]["time_grid"]
            assert json.loads(t.data.params["method.time_grid"]) == pytest.approx(grid) and len(grid) in (2, 3)

        say("checked; the warm start")
        # 5. warm start from the MLflow parent run: its finished trials seed a new search's study; Tune runs only the new one
        warm = load_config(cfg_path, ["tune.experiment_name=tiny-warm", f"tune.warm_start_from=runs:/{out.parent_run_id}",
                                      "tune.num_samples=1", "tracking.register_best=false"])
        lines: list[str] = []
        again = run_search(warm, print_fn=lambda s: lines.append(str(s)))
        assert "warm start: 3 finished trial(s)" in "\n".join(lines)
        assert len(again.rows) == 1 and again.rows[0]["trial"] not in by_trial
        study2 = optuna.load_study(study_name="tiny-warm", storage="sqlite:///" + str(Path(again.experiment_dir) / "optuna.db"))
        done = study2.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        seeded = [t for t in done if "bidpm.seeded_from" in t.user_attrs]
        assert len(done) == 4 and {t.user_attrs["bidpm.trial"] for t in seeded} == set(by_trial)
        assert sorted(t.values[1] for t in seeded) == sorted(r["n_steps"] for r in rows)
        say("warm start checked")
    finally:
        server.kill()
