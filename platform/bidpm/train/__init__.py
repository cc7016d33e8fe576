"""Ray Train: DDP Bi-DPM workers streaming the Parquet shards.

>>> result = run_training(cfg)                                  # jobs/train.py; one call per Tune trial
>>> model, ema_model, cfg = load_checkpoint_model(result.checkpoint)

launch.py (driver: configs, datasets, fit) -> loop.py (``train_loop_per_worker``) -> batches.py
(paired/unpaired mixing), checkpoint.py (save/load), samples.py (sample grid PNG).
Names are imported lazily so ``bidpm.train.checkpoint`` and ``bidpm.train.batches`` load without Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_datasets", "load_checkpoint", "load_checkpoint_model", "run_training", "save_checkpoint",
           "train_loop_per_worker"]

_WHERE = {
    "build_datasets": "launch",
    "run_training": "launch",
    "train_loop_per_worker": "loop",
    "load_checkpoint": "checkpoint",
    "load_checkpoint_model": "checkpoint",
    "save_checkpoint": "checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
