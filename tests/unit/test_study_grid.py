"""Studies without Ray: the grid, each cell's config and grids, the checks before training, the
refusal to mix designs, and the report's numbers against numpy / scipy recomputations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bidpm.study import figures as F
from bidpm.study import tables as R
from bidpm.config import ConfigError, load_config
from bidpm.study.cells import cell_config, cell_grids, check_cells, expand_cells, study_dir
from bidpm.study.spec import SPEC_FILE, check_spec

BASE = ["method.paired_distance=l2", "model.base_channels=8", "model.groups=4", "model.channel_mults=[1,2]",
        "data.image_size=[16,16]", "study.seeds=[0,1]", "study.pairing_ratios=[1.0,0.1]", "study.baseline_nfe=[1,2,5]",
        "study.bidpm_extra_nfe=[2]",
        "study.methods=[{label: Bi-DPM N=1, name: bidpm, time_grid: [0.0, 1.0]}, {label: RF, name: rf}, "
        "{label: CycleGAN, name: cyclegan}, {label: Bi-DPM N=2, name: bidpm, time_grid: [0, 0.5, 1], "
        "overrides: {method.lambda_unpaired: 0.3}}]"]


def cfg(*extra):
    return load_config(None, [*BASE, *extra])


def test_grid_cells_configs_and_grids():
    c = cfg()
    cells = expand_cells(c)
    assert len(cells) == c.study.cells == 4 * 2 * 2
    assert len({x.id for x in cells}) == 16 and cells[0].id == "Bi-DPM-N-1__p100__s0__f100"
    by = {(x.label, x.ratio, x.seed): x for x in cells}
    n2 = cell_config(c, by[("Bi-DPM N=2", 0.1, 1)])
    assert n2.method.time_grid == [0.0, 0.5, 1.0] and n2.method.step_weights == [1.0, 0.5, 1.0]   # paper weights
    assert n2.method.lambda_unpaired == 0.3 and n2.data.pairing_ratio == 0.1 and n2.train.seed == 1
    assert n2.train.checkpoint_score == c.tune.metric                    # ranked on validation, never on test
    assert cell_config(c, by[("Bi-DPM N=2", 1.0, 0)]).method.lambda_unpaired == 0.3   # the row's own override wins
    assert cell_config(c, by[("Bi-DPM N=1", 1.0, 0)]).method.lambda_unpaired == 0.0   # no unpaired rows at 100%
    gan = cell_config(c, by[("CycleGAN", 1.0, 0)])
    assert gan.model.kind == "cyclegan" and gan.method.time_grid == [0.0, 1.0]
    assert [g.steps for g in cell_grids(c, by[("RF", 1.0, 0)])] == [1, 2, 5]
    assert not any(g.training_grid for g in cell_grids(c, by[("RF", 1.0, 0)]))
    bd = cell_grids(c, by[("Bi-DPM N=1", 1.0, 0)])
    assert [(g.steps, g.training_grid) for g in bd] == [(1, True), (2, False)] and "not the training grid" in bd[1].label
    assert [g.steps for g in cell_grids(c, by[("Bi-DPM N=2", 1.0, 0)])] == [2]    # N=2 already is the extra N
    assert [g.steps for g in cell_grids(c, by[("CycleGAN", 1.0, 0)])] == [1]


@pytest.mark.parametrize("extra,match", [
    (["study.methods=[]"], "study.methods: empty"),
    (["study.pairing_ratios=[]"], "pairing_ratios"),
    (["study.pairing_ratios=[1.0, 1.0]"], "distinct"),
    (["study.seeds=[0, 0]"], "distinct seeds"),
    (["study.table2_ratio=0.5"], "table2_ratio"),
    (["study.methods=[{label: a, name: rf}, {label: a, name: icfm}]"], "unique"),
    (["study.methods=[{label: g, name: cyclegan, time_grid: [0, 0.5, 1]}]"], "one-step"),
    (["study.methods=[{label: r, name: rf, overrides: {epochs: 3}}]"], "not a model./method./train./data. key"),
    (["study.methods=[{label: r, name: nope}]"], "name"),
])
def test_bad_grids_are_clear_errors(extra, match):
    with pytest.raises(ConfigError, match=match):
        expand_cells(cfg(*extra))


def _manifest(n_subjects=3, slices=4):
    files = [{"path": f"train/s{i}.parquet", "split": "train", "subject": f"s{i}", "rows": slices} for i in range(n_subjects)]
    return {"files": files, "volumes": {f"s{i}": {"slices": list(range(slices))} for i in range(n_subjects)}}


def test_a_ratio_without_paired_rows_and_missing_lpips_weights_stop_before_training(tmp_path):
    from bidpm.data.readers import paired_train_rows

    c = cfg("study.pairing_ratios=[1.0, 0.0001]", "data.pairing_unit=slice")
    assert paired_train_rows(_manifest(), 0.0001, 0, unit="slice") == 0
    with pytest.raises(ConfigError, match=r"no training row is paired at 0.01%.*Nothing was trained"):
        check_cells(c, expand_cells(c), _manifest())
    c = cfg("method.paired_distance=lpips", f"method.lpips_backbone_weights={tmp_path}/vgg.pth", "study.pairing_ratios=[1.0]")
    with pytest.raises(ConfigError, match=r"study.methods\[Bi-DPM N=1\].*vgg.pth"):
        check_cells(c, expand_cells(c), _manifest())


def test_a_ratio_with_fewer_paired_rows_than_a_batch_needs_stops_before_training():
    """Issue 20: 8 subjects x 4 slices at 10% paired gave 1-3 paired rows for batches of 8 on 2 workers
    (4 paired rows each); the checks passed, and all cells then failed in Ray with "no full batch"."""
    from bidpm.data.readers import paired_train_rows

    m = _manifest(n_subjects=8, slices=4)
    for unit, have in (("slice", paired_train_rows(m, 0.1, 0, unit="slice")), ("subject", 4)):  # subject: 1 of 8 x 4 slices
        c = cfg("study.pairing_ratios=[1.0, 0.1]", "train.batch_size=8", "train.num_workers=2", f"data.pairing_unit={unit}")
        assert paired_train_rows(m, 0.1, 0, unit=unit) == have and 0 < have < 2 * 4
        with pytest.raises(ConfigError, match=rf"10% paired .*pairing_unit={unit}.* {have} paired training rows, fewer than "
                                              rf".*2 workers x train.batch_size 8 // 2 = 8.*Nothing was trained"):
            check_cells(c, expand_cells(c), m)
        check_cells(cfg("study.pairing_ratios=[1.0, 0.1]", "train.batch_size=2", "train.num_workers=1",
                        f"data.pairing_unit={unit}"), expand_cells(c), m)


def test_unpaired_subjects_too_few_for_a_side_stop_before_training():
    """The subject unit: 3 subjects at 50% -> 2 paired and 1 unpaired, which gives sources only; no target
    stream can be built, said before any training."""
    from bidpm.data.readers import pairing_rows

    m = _manifest(n_subjects=3, slices=4)
    rows = pairing_rows(m, 0.5, 0, unit="subject")
    assert rows["paired"] == 8 and sorted([rows["source"], rows["target"]]) == [0, 4]
    c = cfg("study.pairing_ratios=[0.5]", "train.batch_size=2", "train.num_workers=1")
    with pytest.raises(ConfigError, match=r"50% paired .*unpaired training rows give \d sources and \d targets.*Nothing was trained"):
        check_cells(c, expand_cells(c), m)


def test_train_fraction_is_a_nested_subject_subset():
    from bidpm.data.readers import train_subset

    files = _manifest(10)["files"]
    half, fifth = train_subset(files, 0.5, 0), train_subset(files, 0.2, 0)
    assert len(half) == 5 and len(fifth) == 2 and {f["path"] for f in fifth} <= {f["path"] for f in half}
    assert [f["path"] for f in half] == sorted(f["path"] for f in half)         # manifest order kept


@pytest.mark.parametrize("n", [7, 10, 13, 30])
def test_train_subjects_become_fractions_that_read_exactly_k_subjects(n):
    """study.train_subjects: counts people plan with; each k reads exactly k of the n training subjects,
    nested, and a count above n is refused naming n."""
    from bidpm.data.readers import train_subset
    from bidpm.study.cells import resolve_subject_counts

    m = _manifest(n)
    counts = [k for k in (1, 2, 4, 5, 7, 10, 13) if k <= n]
    c = resolve_subject_counts(cfg(f"study.train_subjects={counts}"), m)
    assert c.study.train_subjects is None and len(c.study.train_fractions) == len(counts)
    chosen = [{f["subject"] for f in train_subset(m["files"], frac, 0)} for frac in sorted(c.study.train_fractions)]
    assert [len(s) for s in chosen] == sorted(counts)
    assert all(a <= b for a, b in zip(chosen, chosen[1:]))
    assert len(expand_cells(c)) == cfg(f"study.train_subjects={counts}").study.cells
    with pytest.raises(ConfigError, match=rf"study.train_subjects: {n + 1} is more than the {n} training subjects"):
        resolve_subject_counts(cfg(f"study.train_subjects=[{n + 1}]"), m)
    with pytest.raises(ConfigError, match="set one of them"):
        cfg("study.train_subjects=[2]", "study.train_fractions=[0.5, 1.0]")


def test_a_study_folder_of_another_design_is_refused(tmp_path):
    c = cfg(f"output_dir={tmp_path}")
    check_spec(c)
    assert json.loads((tmp_path / "ray_results" / c.study.name / SPEC_FILE).read_text())["digest"]
    check_spec(cfg(f"output_dir={tmp_path}", "study.max_concurrent_trials=3"))      # scheduling only: same study
    with pytest.raises(ConfigError, match=r"another design.*study.*new study.name"):
        check_spec(cfg(f"output_dir={tmp_path}", "study.seeds=[0, 1, 2]"))
    assert study_dir(c).endswith("/ray_results/" + c.study.name)


def test_a_study_folder_from_before_a_new_field_resumes(tmp_path):
    """A folder whose spec predates a field (absent there) resumes while the field holds its default, and is
    refused once the field is set to something else."""
    c = cfg(f"output_dir={tmp_path}")
    check_spec(c)
    loc = tmp_path / "ray_results" / c.study.name / SPEC_FILE
    old = json.loads(loc.read_text())
    del old["spec"]["train"]["checkpoint_unroll"]          # as an older version wrote it
    old["digest"] = "0" * 16
    loc.write_text(json.dumps(old))
    check_spec(c)                                         # default value: the same design
    assert c.train.checkpoint_unroll is False
    with pytest.raises(ConfigError, match="another design"):
        check_spec(cfg(f"output_dir={tmp_path}", "train.checkpoint_unroll=true"))
    check_spec(cfg(f"output_dir={tmp_path}", "train.gpu_memory_gb=24"))   # a pre-flight setting, not the design


@pytest.mark.parametrize("ratios, resumes_by_default", [("[1.0,0.1]", False), ("[1.0]", True)])
def test_a_study_folder_from_before_the_pairing_unit_resumes_as_slice_pairing(tmp_path, ratios, resumes_by_default):
    """data.pairing_unit's default (subject) is not what older folders did (slices): absent from an old spec,
    the field means slice; the default is refused with the fix named, unless every ratio is 100%."""
    c = cfg(f"output_dir={tmp_path}", f"study.pairing_ratios={ratios}")
    check_spec(c)
    loc = tmp_path / "ray_results" / c.study.name / SPEC_FILE
    old = json.loads(loc.read_text())
    del old["spec"]["data"]["pairing_unit"]
    old["digest"] = "0" * 16
    loc.write_text(json.dumps(old))
    check_spec(cfg(f"output_dir={tmp_path}", f"study.pairing_ratios={ratios}", "data.pairing_unit=slice"))
    if resumes_by_default:
        check_spec(c)
    else:
        with pytest.raises(ConfigError, match=r"another design.*made before data.pairing_unit=slice became a choice"):
            check_spec(c)


# --- the report ---------------------------------------------------------------------------------------
def _cell(label, method, ratio, seed, grids, rng, fraction=1.0):
    """A scored cell as bidpm.study.score writes it; values[d][m] per image (10 images)."""
    ids = [["s0", k] for k in range(10)]
    out = []
    for g_label, steps, train, shift in grids:
        vals = {d: {m: (rng.normal(0.5 + shift, 0.05, 10) if m != "mae" else rng.normal(0.2 - shift / 4, 0.02, 10)).tolist()
                    for m in ("ssim", "psnr", "mae")} for d in ("fwd", "bwd")}
        summ = {}
        for d in ("fwd", "bwd"):
            for m in ("ssim", "psnr", "mae"):
                v = np.array(vals[d][m])
                summ[f"test/{d}_{m}_mean"], summ[f"test/{d}_{m}_std"] = float(v.mean()), float(v.std())
        for m in ("ssim", "psnr", "mae"):
            summ[f"test/{m}_mean"] = 0.5 * (summ[f"test/fwd_{m}_mean"] + summ[f"test/bwd_{m}_mean"])
        out.append({"label": g_label, "steps": steps, "training_grid": train, "summary": summ, "values": vals})
    return {"cell": {"id": f"{label}-{ratio}-{seed}-{fraction}", "label": label, "method": method, "ratio": ratio, "seed": seed,
                     "fraction": fraction}, "grids": out, "ids": ids, "params": 10,
            "cost": {"train_wall_s": 5.0 + seed, "images_per_s": 2.0, "peak_mem_mb": 100.0, "epochs": 1}, "checkpoint": "ck"}


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    c = cfg("study.methods=[{label: B, name: bidpm}, {label: RF, name: rf}]", "study.bootstrap_samples=500")
    cells = []
    for r in (1.0, 0.1):
        for s in (0, 1):
            cells.append(_cell("B", "bidpm", r, s, [("training grid N=1", 1, True, 0.1)], rng))
            cells.append(_cell("RF", "rf", r, s, [("uniform N=1", 1, False, 0.0), ("uniform N=5", 5, False, 0.05)], rng))
    return c, cells


def test_tables_aggregate_over_seeds_and_pick_the_baselines_best_nfe(scored):
    c, cells = scored
    assert R.representative(cells, "RF", 1.0, "ssim") == "uniform N=5"
    a = R.aggregate(cells, "RF", 1.0, "uniform N=5")
    per_seed = [np.mean(x["grids"][1]["values"]["fwd"]["ssim"]) for x in cells if x["cell"]["label"] == "RF" and x["cell"]["ratio"] == 1.0]
    assert a["fwd_ssim"] == pytest.approx(np.mean(per_seed)) and a["fwd_ssim_seed_std"] == pytest.approx(np.std(per_seed))
    spread = [np.std(x["grids"][1]["values"]["fwd"]["ssim"]) for x in cells if x["cell"]["label"] == "RF" and x["cell"]["ratio"] == 1.0]
    assert a["fwd_ssim_spread"] == pytest.approx(np.mean(spread)) and a["seeds"] == 2
    md, rows = R.table(cells, c, 0.1, bracket=1.0)
    assert md.count("\n") == 3 and "| RF | 5 |" in md and f"({R.aggregate(cells, 'B', 1.0, 'training grid N=1')['fwd_ssim']:.4f})" in md
    assert [r["method"] for r in rows] == ["B", "RF"]


def test_significance_is_a_paired_bootstrap_of_seed_averaged_images(scored):
    from scipy.stats import wilcoxon

    c, cells = scored
    out = R.significance(cells, c, 1.0)
    fwd = next(s for s in out if s["direction"] == "fwd")
    b = np.mean([x["grids"][0]["values"]["fwd"]["ssim"] for x in cells if x["cell"]["label"] == "B" and x["cell"]["ratio"] == 1.0], axis=0)
    rf = np.mean([x["grids"][1]["values"]["fwd"]["ssim"] for x in cells if x["cell"]["label"] == "RF" and x["cell"]["ratio"] == 1.0], axis=0)
    d = b - rf
    assert fwd["baseline"] == "RF" and fwd["images"] == 10 and fwd["mean_diff"] == pytest.approx(d.mean())
    assert fwd["wilcoxon_p"] == pytest.approx(wilcoxon(d).pvalue)
    boot = d[np.random.default_rng(0).integers(0, 10, (500, 10))].mean(axis=1)
    assert (fwd["ci_low"], fwd["ci_high"]) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])))
    assert fwd["supported"] == (fwd["ci_low"] > 0)
    mae = R.significance(cells, cfg("study.methods=[{label: B, name: bidpm}, {label: RF, name: rf}]", "study.metric=mae"), 1.0)
    assert all(s["supported"] == (s["ci_high"] < 0) for s in mae)                  # lower MAE is better


def test_figures_and_csv(scored):
    c, cells = scored
    png5, rows5 = F.figure5(cells, c)
    png7, rows7 = F.figure7(cells, c, 1.0)
    assert png5[:8] == png7[:8] == b"\x89PNG\r\n\x1a\n"
    assert {(r["method"], r["paired_pct"]) for r in rows5} == {("B", 100.0), ("B", 10.0), ("RF", 100.0), ("RF", 10.0)}
    assert sorted(r["nfe"] for r in rows7 if r["method"] == "RF") == [1, 5]
    text = R.to_csv(rows5).decode().splitlines()
    assert text[0].startswith("method,paired_pct,grid,") and len(text) == 5
    md, cost = R.cost_table(cells, c)
    assert cost[0]["train_wall_s"] == pytest.approx(5.5) and "| B | 4 |" in md


def test_a_study_of_any_training_fractions_reports_every_fraction(tmp_path, capsys):
    """Issue 20: a study with train_fractions [0.5, 0.25] wrote empty Tables 1-2 and Figures 5/7 (every
    table filtered to fraction 1.0). Now each fraction has its tables, figures and significance, named;
    the numbers are numpy means over that fraction's cells only."""
    from bidpm.study.report import write_report

    rng = np.random.default_rng(1)
    c = cfg("study.methods=[{label: B, name: bidpm}, {label: RF, name: rf}]", "study.bootstrap_samples=200",
            "study.train_fractions=[0.5, 0.25]", "study.pairing_ratios=[1.0, 0.1]")
    cells = []
    for f, shift in ((0.5, 0.1), (0.25, 0.0)):
        for r in (1.0, 0.1):
            for s in (0, 1):
                cells.append(_cell("B", "bidpm", r, s, [("training grid N=1", 1, True, shift)], rng, fraction=f))
                cells.append(_cell("RF", "rf", r, s, [("uniform N=1", 1, False, shift - 0.05)], rng, fraction=f))
    paths = write_report(c, str(tmp_path), cells, n_train=20)
    for suffix, d in (("", 10), ("_f25", 5)):        # quality vs paired subjects at a fixed total D = ceil(f * 20)
        rows = list(csv.DictReader((tmp_path / "report" / f"paired_subjects{suffix}.csv").read_text().splitlines()))
        assert {(r["method"], int(r["train_subjects"]), int(r["paired_subjects"])) for r in rows} == \
            {(m, d, p) for m in ("B", "RF") for p in (d, 1)}                       # 100% and 10% (ceil(0.1 d) = 1)
    for suffix in ("", "_f25"):
        for name in ("table1", "table2", "figure5", "figure7", "paired_subjects"):
            assert paths[f"{name}{suffix}.csv"] and (tmp_path / "report" / f"{name}{suffix}.csv").stat().st_size > 0
        assert (tmp_path / "report" / f"figure5{suffix}.png").read_bytes()[:4] == b"\x89PNG"
    for f, suffix in ((0.5, ""), (0.25, "_f25")):
        text = (tmp_path / "report" / f"table1{suffix}.md").read_text()
        assert text.count("\n") == 3                               # header, rule, B, RF
        mine = [np.mean(x["grids"][0]["values"]["fwd"]["ssim"]) for x in cells
                if x["cell"]["label"] == "B" and x["cell"]["ratio"] == 1.0 and x["cell"]["fraction"] == f]
        assert f"| B | 1 | {np.mean(mine):.4f} ± {np.std(mine):.4f}" in text
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Table 1: 100% paired, 50% of the training subjects" in md and "## Table 1: 100% paired, 25% of the training subjects" in md
    assert "figure5_f25.png" in md and "Figure 7 (100% paired, 25% of the training subjects)" in md
    assert "paired_subjects_f25.png" in md and "Pairing by subject (data.pairing_unit=subject" in md
    sig = R.to_csv(R.significance(cells, c, 1.0, 0.25)).decode()
    assert sig and (tmp_path / "report" / "significance.csv").read_text().count("\n") == 1 + 2 * 2 * 2  # fractions x ratios x dirs
    assert "25% of the training subjects" in capsys.readouterr().out


def test_fid_without_inception_weights_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))          # an empty hub cache: nothing is downloaded
    c = cfg("study.fid=true", "study.pairing_ratios=[1.0]")
    with pytest.raises(ConfigError, match=r"study.fid=true: .*inception_v3_google.*Nothing was trained"):
        check_cells(c, expand_cells(c), _manifest())


def test_an_unreadable_score_file_is_set_aside_and_the_cell_counts_as_unscored(tmp_path):
    """A truncated cells/<id>.json (tried as a new user would): not a JSONDecodeError ending the study, but
    one line, the file kept aside, and the cell scored again (it reads as having no scores)."""
    from bidpm.study.cells import cell_file, read_cell

    c = cfg(f"output_dir={tmp_path}")
    cell = expand_cells(c)[0]
    loc = Path(cell_file(c, cell.id))
    loc.parent.mkdir(parents=True)
    loc.write_text('{"grids": [{"label": "training grid N=1", "st')          # cut mid-write
    said = []
    assert read_cell(c, cell.id, print_fn=said.append) is None
    assert not loc.exists() and len(list(loc.parent.glob(f"{cell.id}.json.damaged-*"))) == 1
    assert len(said) == 1 and "cannot be read" in said[0] and "scored again" in said[0]
    loc.write_text(json.dumps({"grids": [], "cell": cell.as_dict()}))
    assert read_cell(c, cell.id) == {"grids": [], "cell": cell.as_dict()}
    assert read_cell(c, "no-such-cell") is None
