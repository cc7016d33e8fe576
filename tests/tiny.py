"""The smallest configs that still run every part for real (importable: tests/ is on sys.path).

A 16 px phantom, a two-level UNet of 8 channels, one step per epoch: what the fault, outage and
registry tests need to exercise Ray, Tune and MLflow without spending minutes on training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bidpm.model import EMA, build_velocity_field
from bidpm.train.checkpoint import save_checkpoint


def tiny_study(name: str, epochs: int = 1, **tracking: Any) -> dict[str, Any]:
    """A one-trial study config (a fresh dict each call): experiment ``name``, Tune experiment ``name-tune``."""
    return {
        "name": name,
        "model": {"kind": "unet", "base_channels": 8, "channel_mults": [1, 2], "groups": 4, "attention_levels": []},
        "method": {"name": "bidpm", "paired_distance": "l2"},
        "data": {"layout": "phantom", "image_size": [16, 16], "num_slices": 4,
                 "phantom": {"num_subjects": 6, "shape": [24, 24, 8]}, "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
        "train": {"num_workers": 1, "cpus_per_worker": 0.5, "epochs": epochs, "batch_size": 4, "max_steps_per_epoch": 1,
                  "val_batches": 1},
        "tune": {"experiment_name": f"{name}-tune", "num_samples": 1, "space": {"n_steps": [1]}},
        "tracking": {"experiment_name": name, "register_best": False, "log_checkpoints": False, **tracking},
    }


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides for a tiny model and registry name ``tiny`` under ``tmp_path`` (tracking/registry tests)."""
    return [f"output_dir={tmp_path}", "model.base_channels=8", "model.groups=4", "model.channel_mults=[1,2]",
            "data.image_size=[16,16]", "method.paired_distance=l2", "method.time_grid=[0,0.4,1]",
            "tracking.registered_model_name=tiny", "tracking.experiment_name=t", *extra]


def tiny_checkpoint(cfg: Any, path: Path, seed: int = 0) -> Path:
    """A checkpoint of a randomly perturbed model of ``cfg`` (a fresh UNet may output exactly 0)."""
    torch.manual_seed(seed)
    model = build_velocity_field(cfg.model, tuple(cfg.data.image_size))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return save_checkpoint(path, model=model, ema=EMA(model, decay=0.9), optimizer=opt, step=1, epoch=1, cfg=cfg,
                           manifest_digest="d")
