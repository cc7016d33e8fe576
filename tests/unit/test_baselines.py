"""Flow-matching baselines (RF, I-CFM, OT-CFM, VP-CFM): paths, targets, coupling and synthesis.

References are the formulas themselves (numpy), finite-difference time derivatives of the paths
(u_t must be d x_t / dt), and brute force over all permutations for the minibatch OT coupling.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from bidpm.config import MethodConfig
from bidpm.method import ICFM, OTCFM, VPCFM, Batch, RectifiedFlow, build_method, ot_permutation

GRID = [0.0, 0.5, 1.0]


pytestmark = pytest.mark.usefixtures("float64_default")


class Recorder(nn.Module):
    """Returns zeros and remembers its inputs, so a test can see x_t and t the loss used."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        self.x, self.t = x.detach().clone(), t.detach().clone()
        return x * self.w


class Constant(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t):
        return self.c.expand_as(x)


def pairs(b=5, shape=(3,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *shape, generator=g), torch.randn(b, *shape, generator=g) + 1.0


ALL = [RectifiedFlow(GRID), ICFM(GRID, sigma=0.3), OTCFM(GRID, sigma=0.0), VPCFM(GRID)]


# --- paths and targets at fixed t ----------------------------------------------------------------
def test_rf_path_and_target():
    x0, x1 = pairs(shape=(1, 4, 4))
    t = torch.linspace(0, 1, 5)
    x_t, u_t = RectifiedFlow(GRID).path(x0, x1, t, None)
    tn = t.numpy()[:, None, None, None]
    np.testing.assert_allclose(x_t.numpy(), (1 - tn) * x0.numpy() + tn * x1.numpy())
    np.testing.assert_allclose(u_t.numpy(), x1.numpy() - x0.numpy())


def test_icfm_path_adds_sigma_noise_target_unchanged():
    x0, x1 = pairs()
    t, eps = torch.rand(5), torch.randn(5, 3)
    x_t, u_t = ICFM(GRID, sigma=0.25).path(x0, x1, t, eps)
    tn = t.numpy()[:, None]
    np.testing.assert_allclose(x_t.numpy(), (1 - tn) * x0.numpy() + tn * x1.numpy() + 0.25 * eps.numpy())
    np.testing.assert_allclose(u_t.numpy(), (x1 - x0).numpy())


def test_vpcfm_trigonometric_path_and_target():
    x0, x1 = pairs()
    t = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0])
    x_t, u_t = VPCFM(GRID).path(x0, x1, t, None)
    a = 0.5 * np.pi * t.numpy()[:, None]
    np.testing.assert_allclose(x_t.numpy(), np.cos(a) * x0.numpy() + np.sin(a) * x1.numpy())
    np.testing.assert_allclose(u_t.numpy(), 0.5 * np.pi * (np.cos(a) * x1.numpy() - np.sin(a) * x0.numpy()))
    torch.testing.assert_close(x_t[0], x0[0])   # endpoints: x_0 at t = 0, x_1 at t = 1
    torch.testing.assert_close(x_t[-1], x1[-1])


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
def test_target_velocity_is_time_derivative_of_the_path(method):
    x0, x1 = pairs()
    eps = torch.randn(5, 3)
    t, h = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]), 1e-6
    _, u_t = method.path(x0, x1, t, eps)
    fd = (method.path(x0, x1, t + h, eps)[0] - method.path(x0, x1, t - h, eps)[0]) / (2 * h)
    torch.testing.assert_close(u_t, fd, rtol=1e-6, atol=1e-6)


# --- the loss replays its draws ------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
def test_loss_is_mse_on_the_documented_draws(method):
    x0, x1 = pairs(b=6)
    bt = Batch(x0, x1, torch.tensor([True, False] * 3))
    model = Recorder()
    torch.manual_seed(7)
    out = method.loss(model, bt)
    torch.manual_seed(7)
    t = torch.rand(6)
    eps = torch.randn(6, 3) if method.sigma > 0 else None
    x1c = x1[ot_permutation(x0, x1)] if isinstance(method, OTCFM) else x1
    x_t, u_t = method.path(x0, x1c, t, eps)
    torch.testing.assert_close(model.t, t)
    torch.testing.assert_close(model.x, x_t)
    # model output is 0, so the loss is mean(u_t^2), computed in numpy
    assert out.total.item() == pytest.approx(float(np.mean(u_t.numpy() ** 2)))
    assert out.components["loss/total"] == pytest.approx(out.total.item())
    out.total.backward()
    assert model.w.grad is not None


def test_icfm_sigma_zero_equals_rf():
    x0, x1 = pairs()
    t = torch.rand(5)
    for a, b in zip(ICFM(GRID, sigma=0.0).path(x0, x1, t, None), RectifiedFlow(GRID).path(x0, x1, t, None)):
        torch.testing.assert_close(a, b)


# --- minibatch OT coupling -----------------------------------------------------------------------
def test_ot_recovers_a_shuffled_pairing_of_well_separated_points():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 2, generator=g) * 10.0
    shuffle = torch.randperm(16, generator=g)
    x1 = x0[shuffle] + 0.01 * torch.randn(16, 2, generator=g)   # x1[j] is the partner of x0[shuffle[j]]
    perm = ot_permutation(x0, x1)
    torch.testing.assert_close(x1[perm], x0, atol=0.1, rtol=0)
    assert torch.equal(shuffle[perm], torch.arange(16))


def test_ot_permutation_is_optimal_by_brute_force():
    x0, x1 = pairs(b=6, shape=(2,), seed=3)
    perm = ot_permutation(x0, x1).tolist()
    cost = ((x0[:, None] - x1[None]) ** 2).sum(-1).numpy()
    best = min(itertools.permutations(range(6)), key=lambda p: sum(cost[i, p[i]] for i in range(6)))
    assert sum(cost[i, perm[i]] for i in range(6)) == pytest.approx(sum(cost[i, best[i]] for i in range(6)))


def test_ot_works_on_images():
    x0, x1 = pairs(b=4, shape=(1, 4, 4))
    assert sorted(ot_permutation(x0, x1).tolist()) == [0, 1, 2, 3]


# --- synthesis -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
@pytest.mark.parametrize("grid", [None, [0.0, 1.0], [0.0, 0.1, 0.6, 1.0]])
def test_sample_with_constant_field_is_closed_form_and_invertible(method, grid):
    c = torch.tensor([1.0, -0.5, 2.0])
    x = torch.randn(4, 3)
    y = method.sample(Constant(c), x, grid=grid, direction="forward")
    torch.testing.assert_close(y, x + c)
    torch.testing.assert_close(method.sample(Constant(c), y, grid=grid, direction="backward"), x)


def test_sample_integrates_rf_oracle_exactly():
    """A straight-line RF field u = x_1 - x_0 transports x_0 onto x_1 in any number of Euler steps."""
    x0, x1 = pairs()
    y = RectifiedFlow(GRID).sample(Constant(x1 - x0), x0, grid=[0.0, 0.3, 1.0])
    torch.testing.assert_close(y, x1)


# --- from config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cls", [("rf", RectifiedFlow), ("icfm", ICFM), ("otcfm", OTCFM), ("vpcfm", VPCFM)])
def test_build_method_picks_the_baseline(name, cls):
    cfg = MethodConfig(name=name, time_grid=[0.0, 0.25, 1.0], cfm_sigma=0.1, paired_distance="l2")
    method = build_method(cfg).to("cpu")
    assert type(method) is cls
    assert method.time_grid == [0.0, 0.25, 1.0]
    assert method.sigma == (0.1 if name in ("icfm", "otcfm") else 0.0)
    assert math.isclose(method.sample(Constant(torch.ones(2)), torch.zeros(1, 2))[0, 0].item(), 1.0)
