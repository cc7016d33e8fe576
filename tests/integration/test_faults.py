"""Faults that end in a one-line message or a resumed run, injected for real.

- Fault 8 / 5: the jobs, run as a user runs them, with configs that cannot work (a location under a regular
  file - what a read-only folder is for root, who ignores permission bits -, an unsupported tracking URI,
  batch size 1 with unpaired rows, a metric no trial reports, an empty validation split): exit 2, one
  line on stderr, no traceback, before Ray starts (seconds), no MLflow run left RUNNING.
- Fault 8: every exit of a study after its MLflow runs are open ends them (FAILED / KILLED), but not
  while the tracking server is down (the rerun takes them over); a driver's leftovers are swept.

The checkpoint location that stops taking writes mid-run (fault 5: one line, and the rerun resumes) is met
by the bf16 run of test_precision_train.py, through the train job.

A worker group that cannot get its resources (the stall watchdog) is met, with a tracking outage and a killed
driver, by the search of test_search_resumes.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from procs import ray_env
from tiny import tiny_study

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TINY = tiny_study("faults")


def _env(**extra: str) -> dict[str, str]:
    return ray_env({"RAY_ADDRESS": "local", "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO / "platform"), **extra})


def _statuses(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return [s for (s,) in con.execute("select status from runs")]


# --- fault 8: refused before any work ---------------------------------------------------------------
def test_jobs_with_configs_that_cannot_work_exit_2_in_one_line_before_ray(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    cases = {  # name: (job, overrides, words in the message)
        "output_dir": ("tune_steps", [f"output_dir={blocker}/out"], "output_dir"),
        "storage_path": ("tune_steps", [f"train.storage_path={blocker}/runs"], "train.storage_path"),
        "shards_dir": ("study", [f"data.shards_dir={blocker}/shards"], "data.shards_dir"),
        "sqlite_store": ("tune_steps", [f"tracking.tracking_uri=sqlite:///{blocker}/db/mlflow.db"], "tracking store"),
        "prepare": ("prepare_data", [f"output_dir={blocker}/out"], "output_dir"),
        "ftp_uri": ("tune_steps", ["tracking.tracking_uri=ftp://mlflow.example.org/x"], "scheme ftp://"),
        "bare_uri": ("tune_steps", ["tracking.tracking_uri=mlruns"], "bare path"),
        "batch_of_one": ("tune_steps", ["train.batch_size=1", "data.pairing_ratio=0.5"], "train.batch_size=1"),
        "metric": ("tune_steps", ["tune.metric=val/ssim"], "tune.metric"),
        "no_val": ("tune_steps", ["data.split.val_fraction=0"], "validation split is empty"),
        "no_val_train": ("train", ["data.split.val_fraction=0"], "validation split is empty"),
    }
    if not AS_ROOT:
        ro = tmp_path / "read_only"
        ro.mkdir()
        ro.chmod(0o500)
        cases["read_only"] = ("tune_steps", [f"output_dir={ro}"], "cannot write there")
    procs = {}
    for name, (job, overrides, _) in cases.items():
        out = tmp_path / name
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({**TINY, "output_dir": str(out)}))
        # RAY_ADDRESS names no cluster: a job that reached Ray would fail loudly instead of starting one
        procs[name] = subprocess.Popen([sys.executable, str(REPO / "jobs" / f"{job}.py"), "--config", str(cfg), *overrides],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
                                       env=_env(RAY_ADDRESS="127.0.0.1:1"))
    bad = []
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        words = cases[name][2]
        lines = err.strip().splitlines()
        if not (p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
                and "Traceback" not in err):
            bad.append(f"{name}: rc {p.returncode}, stderr {err[-1500:]!r}")
        if "RUNNING" in _statuses(tmp_path / name / "mlflow.db"):
            bad.append(f"{name}: a RUNNING run was left")
    if not AS_ROOT:
        (tmp_path / "read_only").chmod(0o700)
    assert not bad, "\n".join(bad)


# --- fault 8: every exit after the runs are open ends them ------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking store for the run-ending tests (creating one costs seconds of migrations)."""
    return "sqlite:///" + str(tmp_path_factory.mktemp("store") / "mlflow.db")


class _FakeTuner:
    """Plays ``tuner.fit()`` with ``fit(cfg, callbacks)``: the Ray-free stand-in for the search's Tune run."""

    def __init__(self, fit, cfg, callbacks):
        self._fit, self._cfg, self._callbacks = fit, cfg, callbacks

    def fit(self):
        return self._fit(self._cfg, self._callbacks)


def _search(tmp_path: Path, monkeypatch, store: str, name: str, fit):
    """run_search with the Ray-dependent steps stubbed (no Ray): ``fit`` plays the Tune run."""
    from bidpm import tracking
    from bidpm.config import load_config
    from bidpm.search import run
    from bidpm.tune.experiment import Preflight

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [f"output_dir={tmp_path / name}", f"tracking.tracking_uri={store}", "tracking.experiment_name=t",
                             f"tune.experiment_name={name}", "tracking.register_best=false"])
    client, exp_id = tracking.connect(cfg)
    monkeypatch.setattr(run, "preflight", lambda cfg, registry=False: Preflight(client, exp_id, {"content_digest": "d0"}))
    monkeypatch.setattr("bidpm.train.launch.checked_datasets", lambda cfg: {})
    monkeypatch.setattr(tracking, "log_dataset", lambda *a, **k: None)
    monkeypatch.setattr(run, "_tuner", lambda cfg, folder, datasets, callbacks, print_fn: _FakeTuner(fit, cfg, callbacks))
    monkeypatch.setattr(run, "check_finished", lambda results, expected, where: results)
    return cfg, client


def _open_trial(cb, trial_id="t1"):
    """What the callback does at a trial's start: a RUNNING child run of the search."""
    from bidpm import tracking

    return tracking.trial_run(cb.client, cb.experiment_id, cb.parent_run_id, cb.cfg.tune.experiment_name, trial_id,
                              f"trial_{trial_id}", cb.cfg, {})


def test_every_exit_of_a_search_ends_its_runs(tmp_path, monkeypatch, store):
    from bidpm import tracking
    from bidpm.search import run
    from bidpm.tune.watchdog import StudyStalled

    cases = {"bug": (RuntimeError("a bug"), "FAILED"), "ctrl_c": (KeyboardInterrupt(), "KILLED"),
             "sigterm": (SystemExit(15), "KILLED"), "stalled": (StudyStalled("stopped"), "KILLED"),
             "outage": ("outage", "RUNNING")}         # the server is down: the rerun takes the runs over
    for name, (error, status) in cases.items():
        seen = {}

        def fit(cfg, callbacks, error=error):
            seen["parent"], seen["child"] = callbacks[0].parent_run_id, _open_trial(callbacks[0])
            raise tracking.unavailable(cfg, ConnectionError("refused"), "logging") if error == "outage" else error

        cfg, client = _search(tmp_path, monkeypatch, store, name, fit)
        with pytest.raises(BaseException) as e:
            run.run_search(cfg, print_fn=lambda s: None)
        assert not isinstance(e.value, AssertionError), name
        assert (client.get_run(seen["parent"]).info.status, client.get_run(seen["child"]).info.status) == (status, status), name


def test_a_killed_drivers_open_trial_runs_are_ended_as_tune_saw_them(tmp_path, monkeypatch, store):
    """A run the callback never ended (its driver was SIGKILLed at the trial's end) is swept after the fit."""
    from bidpm.search import run

    seen = {}

    def fit(cfg, callbacks):
        seen["done"], seen["failed"] = _open_trial(callbacks[0], "t1"), _open_trial(callbacks[0], "t2")
        return "results"

    cfg, client = _search(tmp_path, monkeypatch, store, "sweep", fit)
    rows = [{"trial": "t1", "status": "finished"}, {"trial": "t2", "status": "error"}]
    monkeypatch.setattr(run, "_summarise", lambda cfg, folder, results, print_fn:
                        (run.SearchResult(folder, rows, "t1"), cfg))
    monkeypatch.setattr(run, "register_best", lambda *a, **k: (None, None))
    out = run.run_search(cfg, print_fn=lambda s: None)
    assert client.get_run(seen["done"]).info.status == "FINISHED"
    assert client.get_run(seen["failed"]).info.status == "FAILED"
    assert client.get_run(out.parent_run_id).info.status == "FINISHED"


def test_the_journal_of_an_outage_is_written_once_by_the_next_driver(tmp_path, monkeypatch, store):
    """What an outage left unwritten (the epoch's metrics, the trial's end) is replayed, in order, once."""
    from bidpm import tracking
    from bidpm.config import load_config
    from bidpm.tracking.journal import replay_journal, write_journal

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [f"output_dir={tmp_path}", f"tracking.tracking_uri={store}", "tracking.experiment_name=j"])
    client, exp_id = tracking.connect(cfg)
    run = client.create_run(exp_id).info.run_id
    journal = str(tmp_path / "journal.jsonl")
    write_journal(journal, [{"op": "metrics", "run": run, "step": 1, "metrics": {"val/ssim_mean": 0.5, "epoch": 1.0}},
                            {"op": "tag", "run": run, "key": "bidpm.best_objective", "value": "0.5"},
                            {"op": "status", "run": run, "status": "FINISHED"}])
    assert replay_journal(client, journal, cfg, print_fn=lambda s: None) == 3
    assert replay_journal(client, journal, cfg, print_fn=lambda s: None) == 0 and not Path(journal).exists()
    r = client.get_run(run)
    assert r.info.status == "FINISHED" and r.data.tags["bidpm.best_objective"] == "0.5"
    assert [m.step for m in client.get_metric_history(run, "val/ssim_mean")] == [1]
