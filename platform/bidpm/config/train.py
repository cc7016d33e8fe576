"""Ray Train settings (``train:`` section)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .base import Section


class FaultInjection(Section):
    """TESTS ONLY: rank ``rank`` calls ``os._exit(1)`` just before optimizer step ``step`` (1-based, global).

    It fires only in an attempt that started from scratch (no checkpoint restored), so after Ray Train
    restarts the worker group from a checkpoint the run goes on. Pick a step after the first checkpoint
    (i.e. in epoch 2 or later), or the restarted attempt fails again at the same step.
    """

    rank: int = Field(0, ge=0)
    step: int = Field(..., ge=1)


class TrainConfig(Section):
    """Workers, optimisation (paper: Adam, lr 1e-4 constant, EMA) and checkpointing.

    ``cpus_per_worker`` below 1 leaves CPU for Ray Data to read shards: with 2 workers at 1 CPU each
    on a 2-core laptop, the data pipeline starved and the run hung.
    """

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0.0)
    gpus_per_worker: float = Field(1.0, gt=0.0)
    torch_threads: Optional[int] = Field(
        None, ge=1, description="torch.set_num_threads in each worker; None keeps Ray's (OMP_NUM_THREADS from the CPU request)"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast dtype on CUDA; CPU always runs fp32")
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1, description="per worker; with pairing_ratio < 1 half paired, half unpaired rows")
    lr: float = Field(1e-4, gt=0.0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup: bool = Field(False, description="decay min(ema_decay, (1+k)/(10+k)) at update k: for short runs")
    grad_clip: Optional[float] = Field(1.0, gt=0.0)
    grad_accum: int = Field(1, ge=1)
    seed: int = 0
    max_steps_per_epoch: Optional[int] = Field(None, ge=1, description="cap for smoke runs")
    val_batches: Optional[int] = Field(None, ge=1, description="cap on validation batches per report")
    sample_grid_rows: int = Field(4, ge=1, description="validation slices in the sample grid PNG of each checkpoint")
    materialize_datasets: bool = Field(
        True,
        description="cache the shards in the Ray object store once per fit() so epochs do not re-read Parquet; "
        "set false when the split is larger than the object store (each epoch then re-reads the shards)",
    )
    shuffle_buffer_rows: Optional[int] = Field(256, ge=1, description="per-worker local shuffle buffer (rows) of every train stream; null = no local shuffle (rows then arrive in shard order: for measurements only)")
    checkpoint_keep: int = Field(2, ge=1)
    checkpoint_score: str = Field("val/ssim_mean", description="reported metric that ranks checkpoints for retention")
    checkpoint_score_mode: Literal["max", "min"] = "max"
    storage_path: str = Field("ray_results", description="relative paths resolve under output_dir; URIs kept as is")
    run_name: str = "bidpm-train"
    max_failures: int = Field(0, ge=-1)
    controller_failure_limit: int = Field(
        -1, ge=-1,
        description="how often Ray Train retries a worker group that did not start (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, "
                    "default 60 s) or another controller error; -1 = forever (right while an autoscaling cluster adds "
                    "nodes); on a fixed cluster a small number makes a run that cannot start fail instead of hanging")
    fail_at_step: Optional[FaultInjection] = Field(
        None, description="TESTS ONLY: kill one worker with os._exit at a step (see FaultInjection)"
    )
