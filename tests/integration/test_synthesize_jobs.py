"""jobs/synthesize.py and jobs/evaluate.py as subprocesses, on a checkpoint of a real (tiny) Ray Train run.

One module fixture prepares phantom shards and trains 1 epoch of a tiny UNet (1 worker, 2 steps);
the jobs then run against its checkpoint, and once against the same model logged + registered in a
SQLite MLflow store (``--model-uri models:/<name>@champion``). Checks: files exist and parse, volumes
keep the input's shape and affine, the registry path gives the same volume as the checkpoint path,
the evaluation table/JSON/PNG hold every (grid, direction, metric) and match an in-process
recomputation, and wrong inputs fail with exit status 2 and a message naming the problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

from tiny import TINY_MODEL_OVERRIDES  # tests/tiny.py

REPO = Path(__file__).resolve().parents[2]

BASE = [
    "data.layout=phantom", "data.phantom.layout=brats", "data.image_size=[16,16]", "data.num_slices=4",
    "data.phantom.num_subjects=4", "data.phantom.shape=[24,24,10]",
    "data.split.val_fraction=0.25", "data.split.test_fraction=0.25",
    *TINY_MODEL_OVERRIDES, "method.paired_distance=l2", "method.time_grid=[0,0.5,1]",
    "train.num_workers=1", "train.cpus_per_worker=1", "train.torch_threads=1", "train.epochs=1",
    "train.batch_size=4", "train.max_steps_per_epoch=2", "train.lr=1e-2", "train.ema_warmup=true", "train.val_batches=1", "train.sample_grid_rows=2",
    "train.run_name=synth-test", "tracking.registered_model_name=synth-tiny", "tracking.experiment_name=synth",
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(REPO / "platform")
    env["MPLBACKEND"] = "Agg"
    return env


def run_job(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, env=_env(), cwd=str(REPO), timeout=240)


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    from bidpm.config import load_config
    from bidpm.data.shards import prepare_shards
    from bidpm.train import run_training

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # module fixtures run before conftest's per-test cleanup
    out = tmp_path_factory.mktemp("synth_jobs")
    overrides = BASE + [f"output_dir={out}"]
    cfg = load_config(None, overrides)
    prepare_shards(cfg)
    result = run_training(cfg)
    assert result.checkpoint is not None, "the tiny training run produced no checkpoint"
    return {"cfg": cfg, "out": out, "overrides": overrides, "checkpoint": Path(result.checkpoint.path)}


def t1_files(out: Path) -> list[Path]:
    return sorted((out / "phantoms").rglob("*_t1.nii.gz"))


def test_synthesize_checkpoint_and_registry_model(trained, monkeypatch):
    out, ck = trained["out"], trained["checkpoint"]
    inputs = t1_files(out)
    assert len(inputs) == 4
    res = run_job("synthesize", "--checkpoint", ck, "--input", out / "phantoms", "--output", out / "synth",
                  "--steps", "2", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    written = sorted((out / "synth").rglob("*_synth-t2.nii.gz"))
    assert len(written) == 4 and "4 synthetic t2 volume(s)" in res.stdout
    for f in written:
        assert f"wrote {f}" in res.stdout
        src = out / "phantoms" / f.parent.name / f.name.replace("_synth-t2", "")
        a, b = nib.load(f), nib.load(src)
        assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-6)
        data = np.asarray(a.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0.0 and data.max() <= 1000.0
    assert not list((out / "synth").rglob(".*tmp*"))

    # the same checkpoint logged + registered as champion; --model-uri must give the same volume
    from bidpm import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = trained["cfg"]
    client, exp_id = tracking.connect(cfg)
    run = client.create_run(exp_id)
    version = tracking.register(client, cfg, tracking.log_model(cfg, run.info.run_id, str(ck)), run.info.run_id, {})
    client.set_registered_model_alias(cfg.tracking.registered_model_name, "champion", version)
    one = inputs[0]
    res = run_job("synthesize", "--model-uri", "models:/synth-tiny@champion", "--input", one, "--output", out / "reg",
                  "--steps", "2", "--device", "cpu", f"output_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    via_registry = nib.load(out / "reg" / one.name.replace(".nii.gz", "_synth-t2.nii.gz")).get_fdata()
    via_checkpoint = nib.load(out / "synth" / one.parent.name / one.name.replace(".nii.gz", "_synth-t2.nii.gz")).get_fdata()
    np.testing.assert_allclose(via_registry, via_checkpoint, atol=1e-3)
    # the trained field is not the zero field (which would make the two paths trivially agree):
    # 2 Adam steps at lr 1e-2 with EMA warm-up move the UNet's zero-initialised output
    import torch

    from bidpm.train.checkpoint import load_checkpoint_model

    _, net, _ = load_checkpoint_model(ck)
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 16, 16), torch.zeros(1)).abs().max() > 1e-3


def test_synthesize_refuses_wrong_inputs(trained):
    from bidpm.config import ConfigError, load_config

    out, ck = trained["out"], trained["checkpoint"]
    from bidpm.commands import synthesize as job
    from bidpm.data.inputs import resolve_inputs
    from bidpm.trained import check_compatible

    t2 = sorted((out / "phantoms").rglob("*_t2.nii.gz"))[0]
    with pytest.raises(ConfigError, match="--direction backward"):           # t2 given, forward = t1 -> t2
        resolve_inputs([str(t2)], "t1", "t2", "forward")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_inputs([str(out / "nope.nii.gz")], "t1", "t2", "forward")
    with pytest.raises(ConfigError, match="no NIfTI named for the input modality 'ct'"):
        resolve_inputs([str(out / "phantoms")], "ct", "mr", "forward")
    with pytest.raises(ConfigError, match="--grid"):
        job.parse_grid(None, "0,0.7")
    assert job.parse_grid(4, None) == [0.0, 0.25, 0.5, 0.75, 1.0] and job.parse_grid(None, "0,0.3,1") == [0.0, 0.3, 1.0]
    with pytest.raises(ConfigError, match="t1<->t2 but the config names mr<->ct"):
        check_compatible(trained["cfg"], load_config(None, trained["overrides"] + ["data.phantom.layout=synthrad"]), "m")
    # the job end to end: a config whose image size differs from the model's is refused (exit 2, nothing written)
    res = run_job("synthesize", "--checkpoint", ck, "--input", t2, "--direction", "backward", "--output", out / "bad",
                  "data.image_size=[32,32]")
    assert res.returncode == 2 and "trained on 16x16" in res.stderr, res.stderr[-2000:]
    assert not (out / "bad").exists()


def test_evaluate_table_json_plot(trained):
    out, ck = trained["out"], trained["checkpoint"]
    js, png = out / "eval" / "eval.json", out / "eval" / "eval.png"
    res = run_job("evaluate", "--checkpoint", ck, "--steps", "1,2,5", "--json", js, "--plot", png, "--device", "cpu",
                  "--volumes")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(js.read_text())
    # --volumes: the test subject's original files (24 x 24 x 10, the model at 16 px) synthesised at their geometry
    orig = result["original_volumes"]
    assert len(orig["subjects"]) == 1 and not orig["skipped"]
    for d in ("fwd", "bwd"):                                   # t1 <-> t2: no CT, so no HU metrics
        assert set(orig["values"][d]) == {"vol_ssim", "vol_psnr", "vol_mae", "sag_ssim", "cor_ssim", "tp_grad_mae"}
        assert all(np.isfinite(v[0]) for v in orig["values"][d].values())
        assert -1 <= orig["summary"][f"test/{d}_orig_vol_ssim_mean"] <= 1
    assert "1 original volumes" in res.stdout and "3-D SSIM" in res.stdout and "SAG_SSIM" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = result["rows"]
    # N = 1, 2, 5; the training grid [0, 0.5, 1] is uniform N = 2, so it is marked there, not repeated
    assert [r["steps"] for r in rows] == [1, 2, 5] and [r["training_grid"] for r in rows] == [False, True, False]
    assert result["split"] == "test" and result["slices"] == 4              # 1 test subject x 4 central slices
    for r in rows:
        for d in ("fwd", "bwd"):
            assert 0.0 < r[f"{d}_psnr_mean"] < 100.0 and -1.0 <= r[f"{d}_ssim_mean"] <= 1.0 and r[f"{d}_mae_mean"] >= 0
    for r in rows:
        assert r["label"] in res.stdout
    assert "fwd SSIM" in res.stdout and "bwd PSNR" in res.stdout and "evaluation.scale=unit" in res.stdout
    assert result["scale"] == "unit" and len(result["per_image"]["uniform N=1"]["fwd"]["ssim"]) == 4

    # independent recomputation of one cell: read the test rows with Ray Data, synthesise in-process
    import torch

    from bidpm.data.readers import read_split
    from bidpm.method import build_method, uniform_grid
    from bidpm.metrics import image_metrics
    from bidpm.train.checkpoint import load_checkpoint_model

    _, net, ck_cfg = load_checkpoint_model(ck)
    rows_t = read_split(trained["cfg"], "test", columns=["source", "target", "mask"]).take_all()
    x_0, x_1, m = (torch.as_tensor(np.stack([r[k] for r in rows_t]))[:, None] for k in ("source", "target", "mask"))
    with torch.no_grad():
        y = build_method(ck_cfg.method).sample(net, x_1, grid=uniform_grid(5), direction="backward")
    ref = image_metrics((y + 1) / 2, (x_0 + 1) / 2, 1.0, m)               # evaluation.scale=unit, by hand
    assert rows[2]["bwd_psnr_mean"] == pytest.approx(float(ref["psnr"].nanmean()), abs=1e-3)
    assert rows[2]["bwd_ssim_mean"] == pytest.approx(float(ref["ssim"].nanmean()), abs=1e-4)


def test_every_caller_gets_the_same_numbers(trained, monkeypatch):
    """Training validation, registry promotion scoring and jobs/evaluate.py on one checkpoint and split
    go through the one evaluation: their values agree (to float32 batch-composition noise)."""
    import torch

    from bidpm import tracking
    from bidpm.data.readers import read_split
    from bidpm.train.checkpoint import load_checkpoint_model
    from bidpm.train.loop import validate

    out, ck = trained["out"], trained["checkpoint"]
    cfg = trained["cfg"].model_copy(update={"train": trained["cfg"].train.model_copy(update={"val_batches": None})})
    # 1. the train loop's validation, on Ray Data batches as a worker streams them (batch = train.batch_size)
    _, net, _ = load_checkpoint_model(ck)
    rows = read_split(cfg, "val", columns=["source", "target", "mask"]).iter_torch_batches(batch_size=cfg.train.batch_size,
                                                                                         dtypes=torch.float32)
    in_loop = validate(net, cfg, rows, torch.device("cpu")).summary()
    # 2. promotion's scoring of the registered model (pyarrow reader, evaluation.batch_size = 16)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client, exp_id = tracking.connect(cfg)
    run = client.create_run(exp_id)
    tracking.register(client, cfg, tracking.log_model(cfg, run.info.run_id, str(ck)), run.info.run_id, {})
    promoted = tracking.score_model("models:/synth-tiny@challenger", cfg, "val")
    # 3. the evaluate job as a subprocess, batch size 3
    js = out / "eval_same" / "val.json"
    res = run_job("evaluate", "--checkpoint", ck, "--split", "val", "--steps", "2", "--batch-size", "3", "--json", js)
    assert res.returncode == 0, res.stderr[-3000:]
    job = json.loads(js.read_text())["summary"]
    keys = [k for k in in_loop if not k.startswith("val/images")]
    assert len(keys) == 15 and in_loop["val/images"] == promoted["val/images"] == job["val/images"] == 4
    for k in keys:
        assert promoted[k] == pytest.approx(in_loop[k], rel=1e-5, abs=1e-6), k
        assert job[k] == pytest.approx(in_loop[k], rel=1e-5, abs=1e-6), k
