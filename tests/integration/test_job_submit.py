"""The tiny search end to end, as a user runs it on a cluster: ``ray job submit`` of jobs/tune_steps.py to
the session's head (from another working directory), status SUCCEEDED; then what it left - Tune + Optuna
+ ASHA trials, the MLflow store (parent run, a run per trial, the registered version and its aliases),
the best config as a valid train config, the printed table - and a rerun in this process, which reports
the finished search without running anything or adding to MLflow.

The head is the suite's own (conftest ``ray_head``: its own temp dir and ports, stopped by PID, never by
`ray stop`, which would take down other Ray sessions).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from bidpm.config import load_config

from procs import BIN, ray_env  # tests/procs.py
from tiny import check_store, tiny_search  # tests/tiny.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_runs_the_search_and_a_rerun_reports_it(tmp_path, ray_head, ray_session, capsys):
    from bidpm.search.run import load_finished, run_search

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_search(tmp_path / "out")))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    sub_id = f"bidpm-test-{int(time.time())}"
    runtime_env = '{"excludes": [".git", ".venv", "outputs", "**/__pycache__", "*.egg-info"]}'
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"], "--submission-id", sub_id,
           "--working-dir", str(REPO), "--runtime-env-json", runtime_env, "--",
           "python", "jobs/tune_steps.py", "--config", str(cfg_path)]
    t0 = time.monotonic()
    for _ in range(30):                 # right after `ray start` the dashboard agent may not be up yet
        out = subprocess.run(cmd, cwd=cwd, env=ray_env(), capture_output=True, text=True, timeout=1200)
        if "No available agent" not in out.stdout + out.stderr:
            break
        time.sleep(5)
    log = out.stdout[-4000:] + out.stderr[-2000:]
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", ray_head["dashboard"], sub_id], cwd=cwd,
                            env=ray_env(), capture_output=True, text=True, timeout=60)
    text = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)     # the CLI colours its output
    assert re.search(rf"Job .{sub_id}. succeeded|Status for job .{sub_id}.: SUCCEEDED", text), text + log
    print(f"job finished in {time.monotonic() - t0:.0f} s")
    assert "mlflow ui --backend-store-uri" in out.stdout
    cfg = load_config(cfg_path)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    check_store(cfg, 2)

    # what the search found: both trials ran (finished, or stopped by ASHA), the best is marked in the printed
    # table, and the best config is a valid train config with the best trial's grid and weights
    res = load_finished(cfg)
    assert res is not None and len(res.rows) == 2
    assert "already finished" not in out.stdout          # the job ran the search (it reused nothing)
    # the record agrees with what was live: the registry's version and the trials' MLflow runs
    from mlflow import MlflowClient

    from bidpm import tracking

    client = MlflowClient(cfg.mlflow_uri, cfg.mlflow_uri)
    assert tracking.alias_version(client, cfg.tracking.registered_model_name, "champion") == res.model_version
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    live = {r.data.tags[tracking.TAG_TRIAL] for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bidpm.role") == "trial"}
    assert {r["trial"] for r in res.rows} == live and res.best_trial in live
    assert all(r["status"] in ("finished", "stopped") for r in res.rows) and any(r["status"] == "finished" for r in res.rows)
    assert "fwd SSIM" in out.stdout and res.best_trial + "*" in out.stdout
    # cost (bidpm.tune.cost): each trial's CPU-hours over its attempts (one here), in the table and on its run,
    # within Tune's own clock of the trial (time_total_s starts earlier: the trial's imports and config)
    assert "CPU-h" in out.stdout
    runs = {r.data.tags[tracking.TAG_TRIAL]: r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("bidpm.role") == "trial"}
    for r in res.rows:
        print(f"trial {r['trial']}: cost/train_s {r['train_s']:.1f} s, time_total_s {r['time_total_s']:.1f} s")
        assert r["device"] == "CPU" and r["devices"] == 0.5 and r["device_hours"] > 0
        assert r["device_hours"] * 3600 == pytest.approx(r["train_s"] * r["devices"])
        assert 0.5 * r["time_total_s"] <= r["train_s"] <= r["time_total_s"] + 5
        m = runs[r["trial"]].data.metrics
        assert m["cost/device_hours"] == pytest.approx(r["device_hours"])
        assert any(k.startswith("system/cpu_utilization_percentage") for k in m), sorted(m)   # MLflow's system metrics
    best = next(r for r in res.rows if r["trial"] == res.best_trial)
    best_cfg = load_config(res.best_config_path)
    assert best_cfg.method.time_grid == best["time_grid"] and best_cfg.method.step_weights == best["step_weights"]

    # rerun (in this process, on the same head): the finished search is reported, nothing runs, nothing new in MLflow
    trial_dirs = sorted(p.name for p in Path(res.experiment_dir).glob("trial_*"))
    capsys.readouterr()
    again = run_search(cfg)
    assert again.reused and again.rows == res.rows and again.model_version == res.model_version
    assert sorted(p.name for p in Path(res.experiment_dir).glob("trial_*")) == trial_dirs
    assert "already finished" in capsys.readouterr().out
    check_store(cfg, 2)
