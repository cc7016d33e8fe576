"""A bf16 Ray Train run on CPU whose checkpoint location stops taking writes, then resumes (issue 24).

autocast runs on any device, so the mixed-precision branch of the worker loop (autocast, the disabled
GradScaler, MMD and SSIM under autocast, bf16 validation) runs in CI. One worker, a 16 px phantom, a tiny
UNet and the opt-in background checkpoint upload: one fit of 2 epochs whose loss falls; then the train job
with ``train.epochs=3`` while epoch 3's checkpoint folder is taken by a regular file (what a full or
read-only location is for the copy into storage, and real for root too): the background upload fails the
run, the job stops with one line naming the location, epoch 2's checkpoint stays the latest complete one,
nothing partial is left and the run's placement group leaves the shared cluster; once the file is gone the
same command resumes from epoch 2, removes the failed upload's local folder and exits 0.
fp16's GradScaler state in checkpoints and its restore are held by tests/unit/test_precision.py (the same
``save_checkpoint``/``restore_state`` the loop calls).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pytest

from procs import wait_placement_groups_removed  # tests/procs.py

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


def _registered(run: Path) -> dict[int, dict]:
    """epoch -> metrics of each checkpoint Ray Train's controller registered for ``run`` (its snapshot file)."""
    snap = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    return {c["metrics"]["epoch"]: c["metrics"] for c in snap["checkpoint_results"]}


def test_bf16_run_learns_stops_on_an_unwritable_checkpoint_in_one_line_and_resumes(ray_session, tmp_path, capsys):
    from bidpm.commands.train import main
    from bidpm.config import load_config
    from bidpm.data.manifest import DataError
    from bidpm.train import run_training
    from bidpm.train.checkpoint import load_checkpoint
    from bidpm.train.upload import folder_owner

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

    # the train job, one epoch more, while epoch 3's checkpoint cannot be written
    job = BASE + [f"output_dir={tmp_path}", "train.epochs=3", "train.max_failures=0"]   # no restarts against a location that fails
    run = tmp_path / "ray_results" / "bf16-cpu"
    (run / "checkpoint_epoch_0003").write_text("not a folder")
    with pytest.raises(DataError) as e:
        main(job)
    msg = str(e.value)
    print(f"train job: error: {msg}")
    assert "\n" not in msg and f"train.storage_path {tmp_path / 'ray_results'}" in msg and "rerun" in msg, msg
    assert load_checkpoint(run / "checkpoint_epoch_0002")["epoch"] == 2          # the last complete checkpoint
    assert sorted(_registered(run)) == [1, 2] and not list(run.rglob("*.tmp"))
    wait_placement_groups_removed()   # the failed run gave its worker's slot back to the shared cluster
    # the local folder of the upload that failed: Ray keeps it; the run's next attempt removes it
    owner = folder_owner(str(run), 0)
    (left,) = Path(tempfile.gettempdir()).glob(f"bidpm-upload-{owner}-*")
    assert json.loads((left / "metrics.json").read_text())["metrics"]["epoch"] == 3

    (run / "checkpoint_epoch_0003").unlink()
    capsys.readouterr()
    assert main(job) == 0                                                         # the same command, location fixed
    printed = capsys.readouterr().out
    m = json.loads(re.search(r"^\{$.*?^\}$", printed, re.M | re.S).group(0))   # the job's final metrics
    assert (m["epoch"], m["step"]) == (3, 3 * STEPS)
    assert f"latest checkpoint: {run / 'checkpoint_epoch_0003'}" in printed
    assert not left.exists() and not list(Path(tempfile.gettempdir()).glob(f"bidpm-upload-{owner}-*"))
    reg = _registered(run)                                                        # epochs 1-2 not redone
    assert sorted(reg) == [1, 2, 3] and [reg[e]["resumed_from_step"] for e in (1, 2, 3)] == [0, 0, 2 * STEPS]
    state = load_checkpoint(run / "checkpoint_epoch_0003")
    assert (state["epoch"], state["step"]) == (3, 3 * STEPS)
    assert math.isfinite(m["train/loss"]) and m["train/loss"] < losses[0]
    assert math.isfinite(m["val/ssim_mean"]) and 0 < m["val/ssim_mean"] <= 1
