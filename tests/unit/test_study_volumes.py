"""A study's Volumes table (study.volume_metrics) from scored cells: mean over seeds, std over seeds and
the per-volume spread of each cell's volume scores, computed here with numpy; in report.md and volumes.csv."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from bidpm.config import load_config
from bidpm.study.report import write_report
from bidpm.study.volumes import volume_table


def _cell(label: str, method: str, seed: int, rng: np.random.Generator) -> dict:
    summ = {f"test/{d}_{m}_{s}": float(rng.uniform(0.2, 0.9)) for d in ("fwd", "bwd") for m in ("ssim", "psnr", "mae")
            for s in ("mean", "std")}
    summ.update({f"test/{m}_mean": 0.5 for m in ("ssim", "psnr", "mae")} | {"test/images": 8.0})
    vols = {f"test/{d}_vol_{m}_{s}": float(rng.uniform(0.1, 0.9)) for d in ("fwd", "bwd")
            for m in ("ssim", "psnr", "mae", "sag_ssim", "cor_ssim", "tp_grad_mae") for s in ("mean", "std")}
    ids = [[f"s{j}", k] for j in range(2) for k in range(4)]
    vals = {d: {m: list(rng.uniform(0, 1, 8)) for m in ("ssim", "psnr", "mae")} for d in ("fwd", "bwd")}
    return {"cell": {"id": f"{label}-{seed}", "label": label, "method": method, "ratio": 1.0, "seed": seed, "fraction": 1.0},
            "ids": ids, "params": 1, "checkpoint": "x",
            "grids": [{"label": "training grid", "steps": 1, "training_grid": True, "summary": summ, "values": vals}],
            "volumes": {"subjects": ["s0", "s1"], "summary": vols, "values": {}},
            "original": {"subjects": ["s0", "s1"], "values": {}, "skipped": {},
                         "summary": {f"test/{d}_orig_{m}_{s}": float(rng.uniform(0.1, 0.9)) for d in ("fwd", "bwd")
                                     for m in ("vol_ssim", "sag_ssim", "hu_mae") for s in ("mean", "std")}},
            "cost": {"train_wall_s": 1.0, "images_per_s": 1.0, "peak_mem_mb": 1.0, "epochs": 1}}


def test_the_volumes_table_averages_seeds_and_lands_in_the_report(tmp_path):
    cfg = load_config(None, ["study.methods=[{label: B, name: bidpm}, {label: RF, name: rf}]", "study.pairing_ratios=[1.0]",
                             "study.seeds=[0, 1, 2]", "study.volume_metrics=true", "study.baseline_nfe=[1]",
                             "study.bootstrap_samples=100"])
    rng = np.random.default_rng(3)
    cells = [_cell(lab, m, s, rng) for lab, m in (("B", "bidpm"), ("RF", "rf")) for s in (0, 1, 2)]
    md, rows = volume_table(cells, cfg, 1.0)
    assert [r["method"] for r in rows] == ["B", "RF"] and "SAG_SSIM" in md and "TP_GRAD_MAE" in md
    for r in rows:
        group = [c for c in cells if c["cell"]["label"] == r["method"]]
        for key in ("fwd_vol_ssim", "bwd_vol_sag_ssim", "fwd_vol_tp_grad_mae"):
            means = np.array([c["volumes"]["summary"][f"test/{key}_mean"] for c in group])
            stds = np.array([c["volumes"]["summary"][f"test/{key}_std"] for c in group])
            assert r[key] == pytest.approx(means.mean()) and r[f"{key}_seed_std"] == pytest.approx(means.std())
            assert r[f"{key}_spread"] == pytest.approx(stds.mean())
        assert f"{r['fwd_vol_sag_ssim']:.4f} ± {r['fwd_vol_sag_ssim_seed_std']:.4f}" in md
    assert volume_table([{**c, "volumes": None} for c in cells], cfg, 1.0) == ("", [])
    omd, orows = volume_table(cells, cfg, 1.0, source="original")
    group = [c for c in cells if c["cell"]["label"] == "B"]
    means = np.array([c["original"]["summary"]["test/fwd_orig_hu_mae_mean"] for c in group])
    assert orows[0]["fwd_hu_mae"] == pytest.approx(means.mean()) and "SR2023 MAE" in omd and omd.startswith("Original volumes: each subject")
    failed = [{**c, "original": {"error": "no salt here"}} for c in cells]
    assert volume_table(failed, cfg, 1.0, source="original") == ("Original volumes not scored: B: no salt here; "
                                                                "B: no salt here; B: no salt here", [])
    write_report(cfg, str(tmp_path), cells)
    report = tmp_path / "report"
    assert "## Volumes: 3-D and inter-slice consistency" in (report / "report.md").read_text()
    assert "## Original volumes" in (report / "report.md").read_text() and (report / "original_volumes.csv").exists()
    got = list(csv.DictReader((report / "volumes.csv").read_text().splitlines()))
    assert float(got[0]["fwd_vol_ssim"]) == pytest.approx(rows[0]["fwd_vol_ssim"])
