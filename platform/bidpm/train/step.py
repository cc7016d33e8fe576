"""One optimizer step on accumulated gradients, shared by the Ray Train loop and the Ray-free benchmarks.

Imports torch only, so ``benchmarks/gpu_step.py`` times exactly the update the workers run on a machine
without Ray.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bidpm.model import EMA


def apply_gradients(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, ema: EMA,
                    grad_clip: Optional[float]) -> None:
    """Unscale (fp16 only), clip the global gradient norm, step Adam, clear gradients, update the EMA.

    Nothing here reads a value back to the host: ``clip_grad_norm_`` scales by a device-side clamp, and
    a disabled ``GradScaler`` (fp32/bf16) is a pass-through.
    """
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model)
