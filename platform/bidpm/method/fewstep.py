"""Few-step flow competitors trained to take large steps: shortcut models (Frans et al. 2024,
arXiv 2410.12557) and MeanFlow (Geng et al. 2025, arXiv 2505.13447), on the paths of the baselines.

Both learn a field conditioned on a second scalar, the signed step h (``model.step_conditioned``):
u(x, t, h) is the average velocity from t to t + h, so one Euler step x + h u(x, t, h) is exact for
an exact field, and ``solver.euler_states`` passes h = t_n - t_{n-1} forward and t_{n-1} - t_n backward.
Path and coupling as RF: x_t = (1 - t) x_0 + t x_1 with x_0 = source, x_1 = target, v = x_1 - x_0;
every row is a pair (paired rows true pairs, unpaired rows the independent coupling RF assumes: these
methods have no other use for the ``paired`` flag). Bidirectional because h is signed: backward
synthesis integrates from 1 to 0 with h < 0, and training draws both signs.

Shortcut (Frans et al. Eq. 5): rows with h = 0 regress the velocity, s(x_t, t, 0) ~ v; the other
``shortcut_consistency_fraction`` of the batch learns s(x, t, 2d) from the stop-gradient target
(s(x, t, d) + s(x', t + d, d)) / 2 with x' = x + d s(x, t, d), d = +-1/2^k, k = 1..``shortcut_levels``.
Choices: t uniform on the interval that keeps t + 2d in [0, 1] (not on multiples of d: the evaluation
grids are uniform in N, not dyadic); the targets come from the model itself, not an EMA copy.

MeanFlow (Geng et al. Eq. 6-10): with r = t + h, u(z_t, r, t) = v - (t - r) du/dt, du/dt the total
derivative along the path at fixed r: in (z, t, h) coordinates the Jacobian-vector product with
tangent (v, 1, -1). Loss sg(w) ||u_theta(z_t, t, h) - sg(v + h du/dt)||^2 with the paper's adaptive weight
w = 1 / (||.||^2 + c)^p (p = ``meanflow_adaptive_p``, 1 as the paper; 0 = plain squared error). Without
it the loss ran away here (0.3 -> 1.7 in 8 steps on phantoms): the JVP carries d/dt of the sinusoidal
time embedding (of 1000 t), so early targets are large. Choices: ||.||^2 is the mean over pixels (not the
sum: c = 1e-3 then means the same at every image size); t, r uniform on [0, 1] (the paper's logit-normal
sampling is for noise-to-image); r = t on 1 - ``meanflow_distinct_fraction`` of the rows; the JVP runs
under no_grad on the bare network, the prediction through the (DDP) model, so gradients sync as usual.
Logged: ``loss/mse`` (unweighted, what falls) and ``loss/total`` (weighted, near 1 while errors >> c).

Random draws happen in ``loss`` in this order (tests replay them): shortcut - t, k, sign; MeanFlow - a,
b, distinct.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..model.ema import unwrap_model
from .base import Batch, LossOutput, Method

__all__ = ["MeanFlow", "Shortcut", "meanflow_target", "shortcut_target"]


def _rows(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def shortcut_target(field: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """The self-consistency target of s(x, t, h): two half steps, (s(x, t, h/2) + s(x', t + h/2, h/2)) / 2,
    x' = x + h/2 s(x, t, h/2). Evaluated as given (callers run it under no_grad)."""
    half = h / 2
    s1 = field(x, t, half)
    s2 = field(x + _rows(half, x) * s1, t + half, half)
    return (s1 + s2) / 2


def meanflow_target(field: Callable[[Tensor, Tensor, Tensor], Tensor], z: Tensor, t: Tensor, h: Tensor, v: Tensor) -> Tensor:
    """v + h du/dt with du/dt = JVP of u(z, t, h) along (v, 1, -1): MeanFlow's identity, r = t + h fixed."""
    _, dudt = torch.func.jvp(field, (z, t, h), (v, torch.ones_like(t), -torch.ones_like(h)))
    return v + _rows(h, z) * dudt


class _FewStep(Method):
    """Shared: the RF path and the squared error over one forward pass of the rows."""

    def _path(self, batch: Batch, t: Tensor) -> tuple[Tensor, Tensor]:
        x_0, x_1 = batch.source, batch.target
        return (1 - _rows(t, x_0)) * x_0 + _rows(t, x_0) * x_1, x_1 - x_0


class Shortcut(_FewStep):
    """Shortcut model (module docstring)."""

    name = "shortcut"

    def __init__(self, time_grid: Sequence[float], levels: int = 7, consistency_fraction: float = 0.25) -> None:
        super().__init__(time_grid)
        self.levels, self.fraction = int(levels), float(consistency_fraction)

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        b, dev, dt = batch.source.shape[0], batch.source.device, batch.source.dtype
        n_c = min(max(1, round(self.fraction * b)), b - 1) if b > 1 else 0       # consistency rows: the last n_c
        u = torch.rand(b, device=dev, dtype=dt)
        k = torch.randint(1, self.levels + 1, (b,), device=dev)
        sign = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0).to(dt)
        d = 0.5 ** k.to(dt)
        cons = torch.arange(b, device=dev) >= b - n_c
        start = torch.where(cons, u * (1 - 2 * d), u)                   # the interval [start, start + 2d] in [0, 1]
        t = torch.where(cons & (sign < 0), start + 2 * d, start)        # backward rows start at its end
        h = torch.where(cons, sign * 2 * d, torch.zeros_like(d))
        x_t, v = self._path(batch, t)
        net = unwrap_model(model)
        target = v.clone()
        if n_c:
            with torch.no_grad():                                   # the last n_c rows: no index from the device
                target[b - n_c:] = shortcut_target(net, x_t[b - n_c:], t[b - n_c:], h[b - n_c:])
        err = (model(x_t, t, h) - target).pow(2).flatten(1).mean(1)
        total = err.mean()
        fm = err[: b - n_c].mean().detach()                         # slices, not masks: no host sync
        sc = err[b - n_c:].mean().detach() if n_c else torch.zeros((), device=dev)
        return LossOutput(total=total, logged={"loss/fm": fm, "loss/consistency": sc, "loss/total": total.detach()})


class MeanFlow(_FewStep):
    """MeanFlow (module docstring)."""

    name = "meanflow"

    def __init__(self, time_grid: Sequence[float], distinct_fraction: float = 0.25, adaptive_p: float = 1.0,
                 adaptive_c: float = 1e-3) -> None:
        super().__init__(time_grid)
        self.fraction, self.p, self.c = float(distinct_fraction), float(adaptive_p), float(adaptive_c)

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        b, dev, dt = batch.source.shape[0], batch.source.device, batch.source.dtype
        a, r = torch.rand(b, device=dev, dtype=dt), torch.rand(b, device=dev, dtype=dt)
        distinct = torch.rand(b, device=dev) < self.fraction
        t, h = a, torch.where(distinct, r - a, torch.zeros_like(a))
        z, v = self._path(batch, t)
        net = unwrap_model(model)
        with torch.no_grad():
            target = meanflow_target(lambda z_, t_, h_: net(z_, t_, h_), z, t, h, v)
        err = (model(z, t, h) - target).pow(2).flatten(1).mean(1)               # per row
        weight = (err.detach() + self.c).pow(-self.p)                            # Geng et al.'s adaptive weight, sg
        total = (weight * err).mean()
        return LossOutput(total=total, logged={"loss/mse": err.mean().detach(), "loss/total": total.detach()})
