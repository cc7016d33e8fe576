"""jobs/study.py end to end, as a user runs it: a 4-cell study (Bi-DPM N=1 and RF x 100% and 50% paired)
in a subprocess on the session's Ray head; the driver is killed with SIGKILL after the first finished
cell, then the same job (``bidpm.commands.study.main``, in this process on the same head: the kill is
what needs a process of its own) runs to completion, then once more. Checks: cells finished before
the kill are not retrained (their scores and checkpoints untouched), every output of the report is
there and complete, one MLflow parent run with a FINISHED child run per cell, and the last rerun
trains nothing."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from procs import wait_placement_groups_removed  # tests/procs.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

from tiny import TINY_MODEL_OVERRIDES  # tests/tiny.py

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "study_phantom_cpu.yaml"
OVERRIDES = [
    "data.image_size=[16,16]", "data.num_slices=8", "data.phantom.num_subjects=8", "data.phantom.shape=[24,24,10]",
    "data.split.val_fraction=0.125", "data.split.test_fraction=0.25", *TINY_MODEL_OVERRIDES, "tune.autoscaling=false",
    "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "train.val_batches=1",
    "study.name=tiny", "study.pairing_ratios=[1.0,0.5]", "study.seeds=[0]", "study.baseline_nfe=[1,2]",
    "study.bootstrap_samples=200", "study.volume_metrics=true",
    "study.methods=[{label: Bi-DPM N=1, name: bidpm, time_grid: [0.0, 1.0]}, {label: RF, name: rf}]",
]


def _args(out: Path) -> list[str]:
    return ["--config", str(CONFIG), f"output_dir={out}", *OVERRIDES]


def _snapshot(cells_dir: Path) -> dict[str, tuple[float, str]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in sorted(cells_dir.glob("*.json"))}


def _checkpoints(study: Path, cell: str) -> dict[str, int]:
    """Every checkpoint file of a cell's Train run, with its mtime: changes if the cell trains again."""
    run = study / "train_runs" / f"train_{cell}"
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in sorted(run.rglob("state.pt"))}


def test_study_is_killed_resumes_without_retraining_and_reports(tmp_path, session_env, ray_session, capsys):
    from bidpm.commands.study import main

    out = tmp_path / "out"
    study = out / "ray_results" / "tiny"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "study.py"), *_args(out)], stdout=log,
                            stderr=subprocess.STDOUT, env=session_env, cwd=str(tmp_path), start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any(line.startswith("finished ") for line in (tmp_path / "first.log").read_text().splitlines()):
            break
        time.sleep(1)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)                      # the driver: Ray then ends its job on the head
    proc.wait(timeout=60)
    before = _snapshot(study / "cells")
    assert len(before) >= 1, "the kill came after a finished cell, so its scores must be on disk"
    assert len(before) < 4, "the kill came before the study ended"
    ckpts = {name[:-5]: _checkpoints(study, name[:-5]) for name in before}
    assert all(ckpts.values())

    wait_placement_groups_removed()  # Ray ends the killed job within seconds; a rerun waits for it
    capsys.readouterr()
    assert main(_args(out)) == 0                             # the same job, resumed
    second = capsys.readouterr().out
    assert "restoring" in second
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
    assert "Table 1 (100% paired)" in second and "Table 2 (50% paired" in second
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

    assert main(_args(out)) == 0
    third = capsys.readouterr().out
    assert _snapshot(study / "cells") == after and "started " not in third    # nothing retrained
    assert "restoring" in third

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
    _check_cost(study, md, {k[:-5] for k in before}, trials)

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
    assert main(_args(out)) == 1                                                # that cell stays unscored
    fourth = capsys.readouterr()
    text = fourth.out + fourth.err
    assert f"cell {vid}: its scores" in text and "kept aside" in text
    assert f"cell {vid}: checkpoint" in text and "not the" in text and "recorded in the tracking database" in text
    assert not (study / "cells" / f"{vid}.json").exists() and len(list((study / "cells").glob("*.json"))) == 3


def _check_cost(study: Path, md: str, before_kill: set[str], trials: list) -> None:
    """Device-hours (bidpm.tune.cost): per cell the sum over its attempts' records (CPU-h: 0.5 CPU x 1 worker),
    in the report and on each cell's MLflow run; a cell trained once agrees with Tune's own clock
    (``time_total_s``, which starts before the fit: imports, datasets); every run that trained an epoch carries
    MLflow's system metrics of its worker's node."""
    import csv

    rows = list(csv.DictReader((study / "report" / "cost_cells.csv").read_text().splitlines()))
    assert len(rows) == 4 and "CPU-h (sum)" in md and "Per cell" in md
    for r in rows:
        recs = [json.loads(p.read_text()) for p in (study / "train_runs" / f"train_{r['cell']}" / "attempts").glob("*.json")]
        assert r["device"] == "CPU" and float(r["devices"]) == 0.5 and int(r["attempts"]) == len(recs) >= 1
        assert 0 < float(r["device_hours"]) == pytest.approx(sum(x["seconds"] * x["devices"] for x in recs) / 3600)
        if r["cell"] in before_kill:
            assert len(recs) == 1                            # finished before the kill: one attempt
            results = map(json.loads, (study / f"cell_{r['cell']}" / "result.json").read_text().splitlines())
            epoch = [x for x in results if "epoch" in x][-1]      # its training's last report
            print(f"cell {r['cell']}: cost/train_s {epoch['cost/train_s']:.1f} s, time_total_s {epoch['time_total_s']:.1f} s")
            assert 0.5 * epoch["time_total_s"] <= epoch["cost/train_s"] <= epoch["time_total_s"] + 5
    by_name = {t.info.run_name: t for t in trials}
    for r in rows:
        m = by_name[f"cell_{r['cell']}"].data.metrics
        # its latest result's running total (the final one; an epoch's if a restored trial's end shared a step)
        assert 0 < m["cost/device_hours"] <= float(r["device_hours"]) * (1 + 1e-9)
        if "train/loss" in m or r["cell"] in before_kill:
            assert any(k.startswith("system/cpu_utilization_percentage") for k in m), sorted(m)
