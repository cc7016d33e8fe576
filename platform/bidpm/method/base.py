"""What every training objective shares: the batch, the loss result and sampling (through ``solver``).

Bi-DPM and the flow-matching baselines differ only in ``loss``; all of them synthesise by integrating
the learnt field u_theta(x, t) with explicit Euler steps on a time grid (paper Eq. 5, Algorithm 2), so
a step-count sweep compares every method on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .solver import Direction, check_grid, euler_integrate, euler_states, uniform_grid  # noqa: F401 - re-exported

@dataclass
class Batch:
    """One training batch of B rows.

    source: (B, ...) samples x of the source modality (X_0).
    target: (B, ...) samples z of the target modality (X_1).
    paired: (B,) bool; where False, ``source`` and ``target`` were drawn independently (the data
        loader guarantees it), so that row carries no correspondence.

    ``n_paired`` and the row indices ``paired_index``/``unpaired_index`` are worked out once, where the
    batch is built (on the host, from the loader's flags), and travel with ``to``: the objectives select
    rows with ``index_select`` on them, so a training step on CUDA never waits for the device to count
    or look up rows (boolean-mask indexing and ``.item()`` both synchronise the host with the GPU).
    """

    source: Tensor
    target: Tensor
    paired: Tensor
    n_paired: int = -1
    paired_index: Optional[Tensor] = None
    unpaired_index: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.source.shape != self.target.shape:
            raise ValueError(f"Batch: source {tuple(self.source.shape)} and target {tuple(self.target.shape)} must have the same shape")
        if self.paired.shape != (self.source.shape[0],) or self.paired.dtype != torch.bool:
            raise ValueError(f"Batch.paired: needs a bool tensor of shape ({self.source.shape[0]},), got {self.paired.dtype} {tuple(self.paired.shape)}")
        if self.paired_index is None or self.unpaired_index is None or self.n_paired < 0:
            flags = self.paired.cpu()
            self.paired_index = flags.nonzero().flatten().to(self.paired.device)
            self.unpaired_index = (~flags).nonzero().flatten().to(self.paired.device)
            self.n_paired = int(self.paired_index.numel())

    @property
    def n_unpaired(self) -> int:
        return self.paired.shape[0] - self.n_paired

    @classmethod
    def fully_paired(cls, source: Tensor, target: Tensor) -> "Batch":
        return cls.paired_first(source, target, source.shape[0])

    @classmethod
    def paired_first(cls, source: Tensor, target: Tensor, n_paired: int) -> "Batch":
        """Rows ``[0, n_paired)`` paired, the rest unpaired (the loader's layout), built without reading
        anything back from the device."""
        b, dev = source.shape[0], source.device
        flags = torch.arange(b, device=dev) < n_paired
        return cls(source, target, flags, n_paired, torch.arange(n_paired, device=dev), torch.arange(n_paired, b, device=dev))

    def to(self, device: torch.device | str, non_blocking: bool = False,
           memory_format: torch.memory_format = torch.preserve_format) -> "Batch":
        """On ``device``; ``non_blocking`` overlaps the copy from pinned memory; ``memory_format``
        (``torch.channels_last`` for 4-D images when the model is channels_last)."""
        def move(t: Tensor, images: bool) -> Tensor:
            fmt = memory_format if images and t.dim() == 4 else torch.preserve_format
            return t.to(device, non_blocking=non_blocking, memory_format=fmt)

        return Batch(move(self.source, True), move(self.target, True), move(self.paired, False), self.n_paired,
                     move(self.paired_index, False), move(self.unpaired_index, False))


@dataclass
class LossOutput:
    """total: scalar with grad (what the optimiser steps on); logged: detached scalars for logging.

    ``logged`` values may be 0-dim tensors still on the device: the training loop sums them there and
    fetches them to the host only when it reports (no device synchronisation inside a step).
    ``components`` converts them all to floats in one transfer (tests, one-off callers).
    """

    total: Tensor
    logged: dict[str, Tensor | float] = field(default_factory=dict)

    @property
    def components(self) -> dict[str, float]:
        return to_floats(self.logged)


def to_floats(values: dict[str, Tensor | float]) -> dict[str, float]:
    """Detached scalars (0-dim tensors on any device, or floats) -> floats, with one device transfer."""
    keys = [k for k, v in values.items() if isinstance(v, Tensor)]
    out = {k: float(v) for k, v in values.items() if not isinstance(v, Tensor)}
    if keys:
        exact = torch.float32 if values[keys[0]].device.type == "mps" else torch.float64  # MPS has no float64
        stacked = torch.stack([values[k].detach().to(exact).reshape(()) for k in keys]).tolist()
        out.update(zip(keys, stacked))
    return {k: out[k] for k in values}


class Method:
    """Common base: config, time grid, device moves and synthesis; subclasses define ``loss``.

    ``sample`` never changes the model's train/eval mode (callers pass an EMA/eval copy for synthesis).
    """

    name: str = "method"

    def __init__(self, time_grid: Sequence[float]) -> None:
        self.time_grid = check_grid(time_grid, "method.time_grid")
        self.device: Optional[torch.device] = None

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        """Frozen modules the method owns (e.g. LPIPS), moved by ``to``."""
        return []

    def to(self, device: torch.device | str) -> "Method":
        self.device = torch.device(device)
        for m in self.modules():
            m.to(self.device)
        return self

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        x: Tensor,
        grid: Optional[Sequence[float]] = None,
        direction: Direction = "forward",
    ) -> Tensor:
        """Algorithm 2: forward maps a source batch to synthetic targets (X^f_1), backward maps a
        target batch to synthetic sources (X^b_0). grid None = the training grid ``time_grid``.

        x: (B, ...) -> (B, ...).
        """
        where = "sample(grid=...)"
        g = self.time_grid if grid is None else check_grid(grid, where)
        return euler_integrate(model, x, g, direction)
