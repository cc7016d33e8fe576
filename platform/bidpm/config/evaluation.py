"""How models are scored (``evaluation:`` section): the value scale of SSIM/PSNR/MAE, batches, device."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from .base import Section

ValueScale = Literal["unit", "native"]


class EvaluationConfig(Section):
    """One setting for every scorer: training validation, registry promotion, ``jobs/evaluate.py``.

    ``scale`` names the value convention every reported SSIM/PSNR/MAE uses. SSIM's luminance term is not
    shift-invariant (the same pair scores about 0.70 on [-1, 1] and 0.92 on [0, 2]), so numbers compare
    only under one convention. ``unit`` (default, the common one in published tables): images mapped from
    the training scale [-1, 1] to [0, 1], data range 1. ``native``: the training scale [-1, 1], data range 2
    (what this platform reported before). PSNR is the same under both; MAE under ``unit`` is half.
    ``batch_size``/``max_batches`` apply to test-split and offline scoring; validation during training
    uses ``train.batch_size``/``train.val_batches``.
    """

    scale: ValueScale = Field("unit", description="unit: [0, 1], data range 1; native: [-1, 1], data range 2")
    batch_size: int = Field(16, ge=1, description="slices per batch when scoring a split offline (test, promotion)")
    max_batches: Optional[int] = Field(None, ge=1, description="cap on batches per split (smoke runs); None: the whole split")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1 ... for offline scoring")
    precision: Optional[Literal["fp32", "bf16", "fp16"]] = Field(
        None, description="autocast dtype of the network while scoring, on any device; None: train.precision")
    compile: Optional[bool] = Field(
        None, description="torch.compile the field for synthesis and scoring (validation, evaluate, synthesize, "
                          "promotion); null = on CUDA")
    compile_mode: Optional[Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]] = Field(
        None, description="torch.compile mode for inference; reduce-overhead captures CUDA graphs (fixed batch shapes)")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field("inductor", description="torch.compile backend (train.compile_backend)")
    channels_last: Optional[bool] = Field(None, description="NHWC weights for inference; null = on CUDA")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and v != "cpu" and not v.startswith(("cuda", "mps")):
            raise ValueError(f"must be auto, cpu, cuda or cuda:<index> (got {v!r})")
        return v
