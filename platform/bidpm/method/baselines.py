"""Flow-matching baselines of the paper's comparisons (section 2.2, Tables 1-2): RF, I-CFM, OT-CFM, VP-CFM.

Each regresses u_theta(x_t, t) onto a prescribed conditional velocity u_t along a prescribed path
between a source x_0 and a target x_1, with t ~ U[0, 1] per row (the "continuous flow" loss of 2.2);
they share Bi-DPM's interface and synthesise with the same Euler sampler on ``time_grid``.

Choices, stated once:

* Loss is the mean squared error E ||u_theta - u_t||^2 / D (as RF, torchcfm and Lipman et al. train),
  not the un-squared ||.||_2 written in 2.2: the squared form is what those methods' papers use and its
  minimiser is the conditional expectation the methods rely on.
* Coupling: every row (x_0 = batch.source[i], x_1 = batch.target[i]) is used as a pair. Paired rows are
  true pairs; unpaired rows were drawn independently, which is exactly the independent coupling that RF
  and I-CFM assume. These methods have no other way to use the ``paired`` flag.
* OT-CFM ignores the given pairing on purpose: it re-pairs the whole batch by an exact minibatch OT plan
  (squared Euclidean cost, uniform weights). With equal sizes the optimal plan is a permutation
  (Birkhoff), found exactly by ``scipy.optimize.linear_sum_assignment``.
* VP-CFM uses the noiseless trigonometric interpolant of Albergo & Vanden-Eijnden / torchcfm;
  ``cfm_sigma`` only applies to I-CFM and OT-CFM.

Random draws in ``loss`` happen in this order, so a test can replay them from the same seed:
t = torch.rand(B), then (sigma > 0 only) eps = torch.randn(x_0.shape).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .base import Batch, LossOutput, Method


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) so it scales rows of x (B, ...)."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


class FlowMatching(Method):
    """Shared regression loss; subclasses define the path ``(x_0, x_1, t, eps) -> (x_t, u_t)``."""

    sigma: float = 0.0

    def __init__(self, time_grid: Sequence[float], sigma: float = 0.0) -> None:
        super().__init__(time_grid)
        self.sigma = float(sigma)

    def couple(self, x_0: Tensor, x_1: Tensor) -> tuple[Tensor, Tensor]:
        """Which x_1 goes with which x_0: row i with row i (overridden by OT-CFM)."""
        return x_0, x_1

    def path(self, x_0: Tensor, x_1: Tensor, t: Tensor, eps: Tensor | None) -> tuple[Tensor, Tensor]:
        """x_t and the target velocity u_t; x_0, x_1, eps: (B, ...), t: (B,)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        x_0, x_1 = self.couple(batch.source, batch.target)
        t = torch.rand(x_0.shape[0], device=x_0.device, dtype=x_0.dtype)
        eps = torch.randn(x_0.shape, device=x_0.device, dtype=x_0.dtype) if self.sigma > 0 else None
        x_t, u_t = self.path(x_0, x_1, t, eps)
        total = (model(x_t, t) - u_t).pow(2).mean()
        value = total.detach()  # stays on the device until the loop reports (no sync per step)
        return LossOutput(total=total, logged={"loss/fm": value, "loss/total": value})


class RectifiedFlow(FlowMatching):
    """RF (Liu et al. 2022): x_t = (1 - t) x_0 + t x_1, u_t = x_1 - x_0."""

    name = "rf"

    def __init__(self, time_grid: Sequence[float]) -> None:
        super().__init__(time_grid, sigma=0.0)

    def path(self, x_0, x_1, t, eps=None):
        tb = _bcast(t, x_0)
        return (1 - tb) * x_0 + tb * x_1, x_1 - x_0


class ICFM(FlowMatching):
    """I-CFM (Tong et al. 2023): x_t = (1 - t) x_0 + t x_1 + sigma eps, u_t = x_1 - x_0 (sigma constant in t)."""

    name = "icfm"

    def path(self, x_0, x_1, t, eps=None):
        tb = _bcast(t, x_0)
        x_t = (1 - tb) * x_0 + tb * x_1
        if self.sigma > 0:
            if eps is None:
                raise ValueError("I-CFM with sigma > 0 needs eps of x_0's shape")
            x_t = x_t + self.sigma * eps
        return x_t, x_1 - x_0


def ot_permutation(x_0: Tensor, x_1: Tensor) -> Tensor:
    """Exact minibatch OT for uniform weights: perm with x_1[perm[i]] paired to x_0[i], minimising
    sum_i ||x_0[i] - x_1[perm[i]]||^2. x_0, x_1: (B, ...) -> (B,) long on x_0's device."""
    a = x_0.detach().reshape(x_0.shape[0], -1).double()
    b = x_1.detach().reshape(x_1.shape[0], -1).double()
    cost = torch.cdist(a, b).pow(2).cpu().numpy()
    from scipy.optimize import linear_sum_assignment  # here: importing SciPy costs every Train worker ~1 s

    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm).to(x_0.device)


class OTCFM(ICFM):
    """OT-CFM (Tong et al. 2023): I-CFM on the minibatch OT coupling (the given pairing is ignored)."""

    name = "otcfm"

    def couple(self, x_0, x_1):
        return x_0, x_1[ot_permutation(x_0, x_1)]


class VPCFM(FlowMatching):
    """VP-CFM: x_t = cos(pi t / 2) x_0 + sin(pi t / 2) x_1, u_t = pi/2 (cos(pi t / 2) x_1 - sin(pi t / 2) x_0)."""

    name = "vpcfm"

    def __init__(self, time_grid: Sequence[float]) -> None:
        super().__init__(time_grid, sigma=0.0)

    def path(self, x_0, x_1, t, eps=None):
        c = _bcast(torch.cos(0.5 * math.pi * t), x_0)
        s = _bcast(torch.sin(0.5 * math.pi * t), x_0)
        return c * x_0 + s * x_1, 0.5 * math.pi * (c * x_1 - s * x_0)
