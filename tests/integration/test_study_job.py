"""jobs/study.py end to end, as a user runs it: a 4-cell study (Bi-DPM N=1 and RF x 100% and 50% paired)
in a subprocess with its own local Ray; the driver is killed with SIGKILL after the first finished
cell, rerun to completion, then rerun once more. Checks: cells finished before the kill are not
retrained (their scores and checkpoints untouched), every output of the report is there and complete,
one MLflow parent run with a FINISHED child run per cell, and the last rerun trains nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "data.image_size=[16,16]", "data.num_slices=4", "data.phantom.num_subjects=8", "data.phantom.shape=[24,24,10]",
    "data.split.val_fraction=0.125", "data.split.test_fraction=0.25",
    "model.base_channels=8", "model.channel_mults=[1,2]", "model.groups=4", "model.attention_levels=[]",
    "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "train.val_batches=1",
    "study.name=tiny", "study.pairing_ratios=[1.0,0.5]", "study.seeds=[0]", "study.baseline_nfe=[1,2]",
    "study.bootstrap_samples=200",
    "study.methods=[{label: Bi-DPM N=1, name: bidpm, time_grid: [0.0, 1.0]}, {label: RF, name: rf}]",
]


def _cmd(out: Path) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "study.py"), "--config", str(REPO / "configs" / "study_phantom_cpu.yaml"),
            f"output_dir={out}", *OVERRIDES]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(RAY_ADDRESS="local", MPLBACKEND="Agg", PYTHONPATH=str(REPO / "platform"))  # its own Ray, never a shared one
    return env


def _snapshot(cells_dir: Path) -> dict[str, tuple[float, str]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in sorted(cells_dir.glob("*.json"))}


def _checkpoints(study: Path, cell: str) -> dict[str, int]:
    """Every checkpoint file of a cell's Train run, with its mtime: changes if the cell trains again."""
    run = study / "train_runs" / f"train_{cell}"
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in sorted(run.rglob("state.pt"))}


def test_study_is_killed_resumes_without_retraining_and_reports(tmp_path):
    out = tmp_path / "out"
    study = out / "ray_results" / "tiny"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_cmd(out), stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=str(tmp_path),
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any(line.startswith("finished ") for line in (tmp_path / "first.log").read_text().splitlines()):
            break
        time.sleep(1)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)                      # the driver and everything it started
    proc.wait(timeout=60)
    before = _snapshot(study / "cells")
    assert len(before) >= 1, "the kill came after a finished cell, so its scores must be on disk"
    assert len(before) < 4, "the kill came before the study ended"
    ckpts = {name[:-5]: _checkpoints(study, name[:-5]) for name in before}
    assert all(ckpts.values())

    second = subprocess.run(_cmd(out), capture_output=True, text=True, env=_env(), cwd=str(tmp_path), timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-3000:]
    assert "restoring" in second.stdout
    after = _snapshot(study / "cells")
    assert len(after) == 4
    assert {k: after[k] for k in before} == before           # finished before the kill: not retrained, not rewritten
    # a cell that had finished may be restored as a trial (if Tune had not saved its end before the kill),
    # but it reports its stored scores: no epoch is trained again
    assert {cell: _checkpoints(study, cell) for cell in ckpts} == ckpts
    report = study / "report"
    for f in ("report.md", "table1.md", "table2.md", "figure5.png", "figure7.png", "significance.csv", "cost.csv",
              "cells.csv", "figure5.csv", "figure7.csv"):
        assert (report / f).stat().st_size > 0, f
    assert not list(report.glob("*.tmp-*"))
    md = (report / "report.md").read_text()
    assert "| Bi-DPM N=1 | 1 |" in md and "| RF |" in md and "evaluation.scale=unit" in md and "Wilcoxon" in md
    assert "Table 1 (100% paired)" in second.stdout and "Table 2 (50% paired" in second.stdout
    cells = [json.loads(v[1]) for v in after.values()]
    assert {c["cell"]["ratio"] for c in cells} == {1.0, 0.5}
    rf = next(c for c in cells if c["cell"]["method"] == "rf")
    assert [g["steps"] for g in rf["grids"]] == [1, 2] and len(rf["ids"]) == len(rf["grids"][0]["values"]["fwd"]["ssim"])

    third = subprocess.run(_cmd(out), capture_output=True, text=True, env=_env(), cwd=str(tmp_path), timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert _snapshot(study / "cells") == after and "started " not in third.stdout    # nothing retrained
    assert "restoring" in third.stdout

    from mlflow import MlflowClient

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("study_phantom_cpu")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("bidpm.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("bidpm.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 4 and {r.info.status for r in trials} == {"FINISHED"}
    assert {r.data.params["data.pairing_ratio"] for r in trials} == {"1.0", "0.5"}
    assert "report" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
