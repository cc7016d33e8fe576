"""One optimizer step on accumulated gradients (and the accumulation's bookkeeping), shared by the Ray Train
loop and the Ray-free benchmarks.

Imports torch only, so ``benchmarks/gpu_step.py`` times exactly the update the workers run on a machine
without Ray.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, TypeVar

import torch
from torch import nn

from bidpm.model import EMA

T = TypeVar("T")


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


def flag_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with whether it is the stream's last: a one-item lookahead, since a streamed epoch's
    length is not known in advance. Every rank sees the same number of batches (equal shards, full
    batches only), so all ranks flag the same micro-batch and DDP syncs on it together."""
    it = iter(items)
    prev = next(it, None)
    for item in it:
        yield prev, False  # type: ignore[misc]
        prev = item
    if prev is not None:
        yield prev, True


def average_partial_group(params: Iterable[nn.Parameter], grad_accum: int, in_group: int) -> None:
    """Each micro-batch loss is scaled by 1/grad_accum, so a full group's summed gradient is the mean
    over its micro-batches. An epoch's last group may hold only ``in_group`` of them: rescale its
    sum to their mean too, instead of dropping those micro-batches (which an earlier version did)."""
    for p in params:
        if p.grad is not None:
            p.grad.mul_(grad_accum / in_group)
