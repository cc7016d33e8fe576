"""Ray Train settings (``train:`` section)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..io.storage import check_no_credentials
from .base import SafeName, Section

DEFAULT_MAX_FAILURES = 3  # worker-group restarts from the last checkpoint (preemptible nodes: the common case)


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
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="Ray resources each Train worker reserves: a custom resource a node type offers (e.g. "
                    "{accelerator_slot: 1}, so trials land on - and an autoscaler adds - such nodes), or CPU/GPU, "
                    "which replace cpus_per_worker/gpus_per_worker; GPU > 0 implies use_gpu ({GPU: 1} runs on GPUs)")
    torch_threads: Optional[int] = Field(
        None, ge=1, description="torch.set_num_threads in each worker; None keeps Ray's (OMP_NUM_THREADS from the CPU request)"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype on any device (CPU too); fp16 adds loss scaling (GradScaler)")
    # Speed and memory switches (bidpm.model.runtime): null = on for CUDA workers, off on CPU.
    matmul_precision: Optional[Literal["highest", "high", "medium"]] = Field(
        None, description="torch.set_float32_matmul_precision (training and scoring); null = high on CUDA "
                          "(TF32 on Ampere+), CPU untouched")
    cudnn_benchmark: Optional[bool] = Field(None, description="cuDNN autotuning per input shape; null = on CUDA")
    compile: Optional[bool] = Field(None, description="torch.compile the velocity field once per worker; null = on CUDA")
    compile_mode: Optional[Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]] = Field(
        None, description="torch.compile mode; null = inductor's default (reduce-overhead adds CUDA graphs)")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(
        "inductor", description="torch.compile backend: inductor generates fused kernels; aot_eager traces the same "
                                "graphs (dynamo + AOTAutograd) without code generation, for debugging and quick CPU checks")
    channels_last: Optional[bool] = Field(None, description="NHWC weights and images (tensor-core convolutions); null = on CUDA")
    fused_adam: Optional[bool] = Field(None, description="Adam as one fused kernel; null = on CUDA")
    checkpoint_unroll: bool = Field(
        False, description="activation checkpointing of each network evaluation in the Euler unrolls: memory for N "
                           "steps stays near one evaluation's activations plus the N+1 states, for ~1/3 more compute; "
                           "same gradients")
    gpu_memory_gb: Optional[float] = Field(
        None, gt=0.0, description="GPU memory per worker (vendor GB) of the node type trials run on: train, tune_steps "
                                  "and study refuse a config whose estimated step peak (bidpm plan) exceeds it; "
                                  "null = the cluster's accelerator_type where Ray reports one, else not checked")
    prefetch_batches: int = Field(2, ge=0, description="batches Ray Data prepares (and moves to the device) ahead of use")
    pin_memory: Optional[bool] = Field(None, description="pinned host batches for asynchronous copies; null = on CUDA")
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
    checkpoint_upload: Literal["async", "sync"] = Field(
        "sync", description="rank 0's checkpoint upload in ray.train.report: async uploads on Ray's background thread "
                            "while the next epoch trains (Ray 2.60 CheckpointUploadMode.ASYNC, alpha; bidpm.train.upload); "
                            "sync (default) waits: with async, a driver killed while an upload ran lost that epoch's "
                            "MLflow metrics in a resumed study (tests/integration/test_object_storage.py)")
    checkpoint_score: str = Field("val/ssim_mean", description="reported metric that ranks checkpoints for retention")
    checkpoint_score_mode: Literal["max", "min"] = "max"
    storage_path: str = Field("ray_results", description="relative paths resolve under output_dir; URIs kept as is")
    run_name: SafeName = "bidpm-train"
    max_failures: int = Field(
        DEFAULT_MAX_FAILURES, ge=-1,
        description="how often Ray Train restarts a failed worker group (a killed worker, a lost node) from the last "
                    "checkpoint before the run fails; 0 = fail at the first worker failure, -1 = retry forever")
    controller_failure_limit: int = Field(
        -1, ge=-1,
        description="how often Ray Train retries a worker group that did not start (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, "
                    "default 60 s) or another controller error; -1 = forever (right while an autoscaling cluster adds "
                    "nodes); on a fixed cluster a small number makes a run that cannot start fail instead of hanging")
    fail_at_step: Optional[FaultInjection] = Field(
        None, description="TESTS ONLY: kill one worker with os._exit at a step (see FaultInjection)"
    )

    @field_validator("storage_path")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        check_no_credentials(v)                           # credentials come from the environment, never YAML
        return v

    @field_validator("resources_per_worker")
    @classmethod
    def _resource_amounts(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: a for k, a in v.items() if not k or a < 0}
        if bad:
            raise ValueError(f"names must be non-empty and amounts >= 0 (got {bad})")
        return v

    @model_validator(mode="after")
    def _cpu_gpu_in_resources(self) -> "TrainConfig":
        """``resources_per_worker`` CPU/GPU are mirrored into ``cpus_per_worker``/``gpus_per_worker`` (and GPU > 0
        into ``use_gpu``) so every reader of those fields (scoring tasks, concurrency, the loop's device) agrees;
        a value given explicitly that disagrees is an error rather than a silent winner."""
        res, given, d = self.resources_per_worker, self.model_fields_set, self.__dict__
        if "CPU" in res and res["CPU"] != self.cpus_per_worker:
            if "cpus_per_worker" in given:
                raise ValueError(f"train.resources_per_worker.CPU={res['CPU']} and train.cpus_per_worker="
                                 f"{self.cpus_per_worker} disagree; set one of them")
            if res["CPU"] <= 0:
                raise ValueError("train.resources_per_worker.CPU must be > 0 (it is train.cpus_per_worker)")
            d["cpus_per_worker"] = float(res["CPU"])
        if "GPU" not in res:
            return self
        gpus = float(res["GPU"])
        if gpus == 0:
            if self.use_gpu:
                raise ValueError("train.resources_per_worker.GPU=0 with train.use_gpu=true; drop one of them")
            return self
        if not self.use_gpu and "use_gpu" in given:
            raise ValueError(f"train.resources_per_worker.GPU={gpus} with train.use_gpu=false; set use_gpu=true or "
                             f"drop GPU from resources_per_worker")
        if gpus != self.gpus_per_worker and "gpus_per_worker" in given:
            raise ValueError(f"train.resources_per_worker.GPU={gpus} and train.gpus_per_worker={self.gpus_per_worker} "
                             f"disagree; set one of them")
        d["use_gpu"], d["gpus_per_worker"] = True, gpus
        return self

    def worker_resources(self) -> dict[str, float]:
        """What one Train worker reserves: CPU, GPU when ``use_gpu``, and every custom resource asked for."""
        out = {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}
        out.update({k: float(v) for k, v in self.resources_per_worker.items() if k not in ("CPU", "GPU")})
        return out

    def custom_resources(self) -> dict[str, float]:
        """The non-CPU/GPU part of ``worker_resources`` (Ray's ``resources=`` argument of tasks and actors)."""
        return {k: v for k, v in self.worker_resources().items() if k not in ("CPU", "GPU")}
