"""What every training objective shares: the batch, the loss result, the Euler integrator, sampling.

Bi-DPM and the flow-matching baselines differ only in ``loss``; all of them synthesise by integrating
the learnt field u_theta(x, t) with explicit Euler steps on a time grid (paper Eq. 5, Algorithm 2), so
a step-count sweep compares every method on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor, nn

Direction = Literal["forward", "backward"]


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


def check_grid(grid: Sequence[float], where: str = "grid") -> list[float]:
    """A synthesis/training grid must run 0 = t_0 < ... < t_N = 1 (same rule as ``method.time_grid``)."""
    g = [float(t) for t in grid]
    if len(g) < 2 or abs(g[0]) > 1e-9 or abs(g[-1] - 1.0) > 1e-9:
        raise ValueError(f"{where}: needs 0 = t_0 < ... < t_N = 1 with N >= 1, got {g}; e.g. uniform_grid(2) = [0, 0.5, 1]")
    if any(not b > a for a, b in zip(g, g[1:])):
        raise ValueError(f"{where}: must be strictly increasing, got {g}")
    return g


def uniform_grid(n_steps: int) -> list[float]:
    """[0, 1/N, ..., 1]: the paper's N-step grid (3.2: step size 1/N)."""
    if n_steps < 1:
        raise ValueError(f"uniform_grid: n_steps must be >= 1, got {n_steps}")
    return [n / n_steps for n in range(n_steps + 1)]


def _time(t: float, x: Tensor) -> Tensor:
    """Scalar time -> (B,) tensor on x's device/dtype, the model's time input."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def euler_states(model: nn.Module, x: Tensor, grid: Sequence[float], direction: Direction) -> list[Tensor]:
    """All Euler states on the grid, indexed by n: ``states[n]`` is X_{t_n}. Paper Eq. 5.

    forward  (x = X^f_{t_0}): X^f_{t_n}     = X^f_{t_{n-1}} + u(X^f_{t_{n-1}}, t_{n-1}) (t_n - t_{n-1}), n = 1..N
    backward (x = X^b_{t_N}): X^b_{t_{n-1}} = X^b_{t_n}     + u(X^b_{t_n}, t_n)         (t_{n-1} - t_n), n = N..1
    The backward chain runs from n = N down (Algorithm 1 lists both updates in one n = 1..N loop, which
    only works for N = 1; Eq. 5 defines the recursion). Autograd is whatever the caller enables:
    Bi-DPM training keeps the graph through every step.

    x: (B, ...); returns N + 1 tensors of x's shape (``states[0]`` is x for forward, ``states[N]`` for backward).
    """
    g = check_grid(grid)
    n_steps = len(g) - 1
    if direction == "forward":
        states = [x]
        for n in range(1, n_steps + 1):
            prev = states[-1]
            states.append(prev + model(prev, _time(g[n - 1], prev)) * (g[n] - g[n - 1]))
        return states
    if direction == "backward":
        rev = [x]
        for n in range(n_steps, 0, -1):
            cur = rev[-1]
            rev.append(cur + model(cur, _time(g[n], cur)) * (g[n - 1] - g[n]))
        return rev[::-1]
    raise ValueError(f"direction: expected 'forward' or 'backward', got {direction!r}")


def euler_integrate(model: nn.Module, x: Tensor, grid: Sequence[float], direction: Direction) -> Tensor:
    """Final Euler state: X^f_1 from x (forward) or X^b_0 from x (backward). Same steps as ``euler_states``."""
    return euler_states(model, x, grid, direction)[-1 if direction == "forward" else 0]


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
