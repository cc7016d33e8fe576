"""Ray Train settings (``train:`` section)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .base import Section


class TrainConfig(Section):
    """Workers, optimisation (paper: Adam, lr 1e-4 constant, EMA) and checkpointing.

    ``cpus_per_worker`` below 1 leaves CPU for Ray Data to read shards: with 2 workers at 1 CPU each
    on a 2-core laptop, the data pipeline starved and the run hung.
    """

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0.0)
    gpus_per_worker: float = Field(1.0, gt=0.0)
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast dtype on CUDA; CPU always runs fp32")
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1, description="per worker")
    lr: float = Field(1e-4, gt=0.0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    grad_clip: Optional[float] = Field(1.0, gt=0.0)
    grad_accum: int = Field(1, ge=1)
    seed: int = 0
    max_steps_per_epoch: Optional[int] = Field(None, ge=1, description="cap for smoke runs")
    val_batches: Optional[int] = Field(None, ge=1, description="cap on validation batches per report")
    checkpoint_keep: int = Field(2, ge=1)
    storage_path: str = Field("ray_results", description="relative paths resolve under output_dir; URIs kept as is")
    run_name: str = "bidpm-train"
    max_failures: int = Field(0, ge=-1)
