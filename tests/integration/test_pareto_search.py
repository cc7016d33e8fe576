"""A multi-objective search end to end on the session's Ray head: three tiny trials (N in {1, 2}) under
objectives (max val/ssim_mean, min nfe). The first driver (``jobs/tune_steps.py``, a subprocess) is
SIGKILLed once Optuna holds a finished trial; the same search then runs to completion in this process.
Checks: the persisted Optuna study (``optuna.load_study``) counts every Tune trial exactly once (a trial
the killed driver had asked for but Tune never ran is marked FAIL, never COMPLETE), the Pareto report
against a brute-force dominance filter on the trials it ran, one registered version per front NFE with
its ``champion-nfeK`` alias while ``champion`` stays the overall best; then a search warm-started from
the MLflow parent run whose seeded trials are in its study but never run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bidpm.config import load_config

from procs import wait_placement_groups_removed  # tests/procs.py
from tiny import tiny_search  # tests/tiny.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MO = "tune.objectives=[{metric: val/ssim_mean, mode: max}, {metric: nfe, mode: min}]"
THREE = "tune.num_samples=3"


def _cfg(tmp_path: Path, *overrides: str):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_search(tmp_path / "out")))
    return load_config(p, [MO, *overrides])


def _front(rows: list[dict]) -> set[str]:
    pts = {r["trial"]: (r["values"]["val/ssim_mean"], r["values"]["nfe"]) for r in rows if r.get("checkpoint_path")}
    dom = lambda a, b: b[0] >= a[0] and b[1] <= a[1] and b != a   # noqa: E731 - b dominates a
    return {t for t, p in pts.items() if not any(dom(p, q) for u, q in pts.items() if u != t)}


def _kill_after_first_told(tmp_path: Path, cfg, session_env: dict) -> None:
    """Run the search as a user does and SIGKILL its driver once the Optuna study holds a COMPLETE trial."""
    import optuna
    from bidpm.tune.names import experiment_dir

    db = Path(experiment_dir(cfg, cfg.tune.experiment_name)) / "optuna.db"
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "tune_steps.py"), "--config", str(tmp_path / "tiny.yaml"),
                                 MO, THREE], stdout=fh, stderr=subprocess.STDOUT, env=session_env, cwd=str(tmp_path),
                                start_new_session=True)
    deadline, done = time.monotonic() + 600, 0
    while time.monotonic() < deadline and proc.poll() is None and not done:
        time.sleep(1)
        if db.exists():
            try:
                study = optuna.load_study(study_name=cfg.tune.experiment_name, storage=f"sqlite:///{db}")
                done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
            except Exception:                    # its tables may not exist yet
                done = 0
    assert proc.poll() is None, log.read_text()[-3000:]
    assert done < 3, "the kill came before the search ended"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    wait_placement_groups_removed()                       # Ray ends the killed job; a rerun waits for it


def test_multi_objective_search_survives_a_killed_driver_reports_the_front_and_serves_each_budget(
        tmp_path, session_env, ray_session):
    import optuna
    from mlflow import MlflowClient

    from bidpm import tracking
    from bidpm.search.run import run_search

    cfg = _cfg(tmp_path, THREE)
    _kill_after_first_told(tmp_path, cfg, session_env)
    lines: list[str] = []
    out = run_search(cfg, print_fn=lambda s: lines.append(str(s)))      # the same search, resumed
    text = "\n".join(lines)
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
    url = "sqlite:///" + str(Path(out.experiment_dir) / "optuna.db")
    study = optuna.load_study(study_name=cfg.tune.experiment_name, storage=url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3 and len(study.directions) == 2                   # no trial counted twice
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))      # a killed driver's ask: FAIL
    assert sorted(t.params["n_steps"] for t in complete) == sorted(r["params"]["n_steps"] for r in rows)
    # the registry: one version per front NFE, champion-nfeK per budget, champion the overall best
    client = MlflowClient(cfg.mlflow_uri, cfg.mlflow_uri)
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

    # warm start from the MLflow parent run: its finished trials seed a new search's study; Tune runs only the new one
    warm = _cfg(tmp_path, "tune.experiment_name=tiny-warm", f"tune.warm_start_from=runs:/{out.parent_run_id}",
                "tune.num_samples=1", "tracking.register_best=false")
    lines.clear()
    again = run_search(warm, print_fn=lambda s: lines.append(str(s)))
    assert "warm start: 3 finished trial(s)" in "\n".join(lines)
    assert len(again.rows) == 1 and again.rows[0]["trial"] not in by_trial
    study2 = optuna.load_study(study_name="tiny-warm", storage="sqlite:///" + str(Path(again.experiment_dir) / "optuna.db"))
    done = study2.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    seeded = [t for t in done if "bidpm.seeded_from" in t.user_attrs]
    assert len(done) == 4 and {t.user_attrs["bidpm.trial"] for t in seeded} == set(by_trial)
    assert sorted(t.values[1] for t in seeded) == sorted(r["n_steps"] for r in rows)
