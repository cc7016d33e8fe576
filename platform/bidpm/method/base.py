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
    """

    source: Tensor
    target: Tensor
    paired: Tensor

    def __post_init__(self) -> None:
        if self.source.shape != self.target.shape:
            raise ValueError(f"Batch: source {tuple(self.source.shape)} and target {tuple(self.target.shape)} must have the same shape")
        if self.paired.shape != (self.source.shape[0],) or self.paired.dtype != torch.bool:
            raise ValueError(f"Batch.paired: needs a bool tensor of shape ({self.source.shape[0]},), got {self.paired.dtype} {tuple(self.paired.shape)}")

    @classmethod
    def fully_paired(cls, source: Tensor, target: Tensor) -> "Batch":
        return cls(source, target, torch.ones(source.shape[0], dtype=torch.bool, device=source.device))

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.source.to(device), self.target.to(device), self.paired.to(device))


@dataclass
class LossOutput:
    """total: scalar with grad (what the optimiser steps on); components: detached floats for logging."""

    total: Tensor
    components: dict[str, float] = field(default_factory=dict)


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
