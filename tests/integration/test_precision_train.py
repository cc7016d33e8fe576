"""A bf16 Ray Train run on CPU (issue 24): autocast now runs on any device, so the mixed-precision branch of
the worker loop (autocast, the disabled GradScaler, MMD and SSIM under autocast, bf16 validation) runs in CI.

One worker, a 16 px phantom and a tiny UNet: one fit of 2 epochs whose loss falls, then the same command
with ``train.epochs=3``, which resumes from the epoch-2 checkpoint. fp16's GradScaler state in checkpoints
and its restore are held by tests/unit/test_precision.py (the same ``save_checkpoint``/``restore_state``
the loop calls; a second Ray run for it would double this test's ~16 s worker start-up).
"""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.integration]

STEPS = 6  # optimizer steps per epoch

BASE = [
    "data.layout=phantom", "data.image_size=[16,16]", "data.num_slices=8",
    "data.phantom.num_subjects=8", "data.phantom.shape=[24,24,12]",
    "data.split.val_fraction=0.15", "data.split.test_fraction=0.1",
    "model.base_channels=8", "model.channel_mults=[1,2]", "model.groups=4", "model.attention_levels=[]",
    "method.name=bidpm", "method.paired_distance=l2", "method.lambda_unpaired=0.1", "data.pairing_ratio=0.5",
    "data.pairing_unit=slice",        # 6 full steps per epoch from 6 training subjects (by subject: 2); bf16 is the point here
    "train.num_workers=1", "train.cpus_per_worker=0.5", "train.torch_threads=1", "train.precision=bf16",
    "train.batch_size=8", "train.lr=3e-3", "train.ema_warmup=true", f"train.max_steps_per_epoch={STEPS}",
    "train.val_batches=1", "train.checkpoint_keep=3", "train.run_name=bf16-cpu",
    "train.checkpoint_upload=async",   # the opt-in background upload: its checkpoints resume too
]


def test_bf16_run_on_cpu_learns_and_resumes_from_its_checkpoint(ray_session, tmp_path):
    from bidpm.config import load_config
    from bidpm.train import run_training
    from bidpm.train.checkpoint import load_checkpoint

    cfg = load_config(None, BASE + [f"output_dir={tmp_path}", "train.epochs=2"])
    first = run_training(cfg, resume=False)
    assert first.error is None
    df = first.metrics_dataframe.sort_values("epoch").reset_index(drop=True)
    assert df["epoch"].tolist() == [1, 2] and df["step"].tolist() == [STEPS, 2 * STEPS]
    losses = df["train/loss"].tolist()
    assert all(math.isfinite(v) for v in losses + df["train/loss/unpaired"].tolist() + df["val/ssim_mean"].tolist())
    # seeded weights and shuffles, zero-initialised output, lr 3e-3: the epoch means fall clearly (measured
    # total 0.77 -> 0.52 -> 0.39 in epoch 3, paired 0.37 -> 0.24); 0.85 leaves room for thread-order noise
    assert losses[1] < 0.85 * losses[0], losses
    assert df["train/loss/paired"].iloc[1] < 0.85 * df["train/loss/paired"].iloc[0]
    state = load_checkpoint(first.checkpoint)
    assert state["config"]["train"]["precision"] == "bf16" and state["scaler"] is None   # bf16: no loss scaling

    resumed = run_training(load_config(None, BASE + [f"output_dir={tmp_path}", "train.epochs=3"]), resume=True)
    m = resumed.metrics
    assert (m["epoch"], m["step"], m["resumed_from_step"]) == (3, 3 * STEPS, 2 * STEPS)   # epochs 1-2 not redone
    table = resumed.metrics_dataframe.sort_values("epoch")
    assert table["epoch"].tolist() == [1, 2, 3] and table["resumed_from_step"].tolist() == [0, 0, 2 * STEPS]
    assert math.isfinite(m["train/loss"]) and m["train/loss"] < losses[0]
    assert math.isfinite(m["val/ssim_mean"]) and 0 < m["val/ssim_mean"] <= 1
