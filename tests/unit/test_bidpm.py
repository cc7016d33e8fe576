"""Bi-DPM (paper Eq. 5-9, Algorithms 1-2, Remark 1) against closed forms and a numpy re-implementation.

Velocity fields here are tiny analytic modules (constant, linear, time-only, an oracle), so every
expected value is exact and independent of bidpm.model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bidpm.config import MethodConfig
from bidpm.method import Batch, BiDPM, build_method, euler_states, uniform_grid

GRIDS = [[0.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.1, 0.35, 0.9, 1.0], uniform_grid(10)]


pytestmark = pytest.mark.usefixtures("float64_default")


# --- analytic velocity fields ------------------------------------------------------------------
class Constant(nn.Module):
    """u(X, t) = c."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.c = nn.Parameter(c.clone())

    def forward(self, x, t):
        assert t.shape == (x.shape[0],)
        return self.c.expand_as(x)


class Linear(nn.Module):
    """u(X, t) = a X with a learnable scalar a."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x, t):
        return self.a * x


class TimeOnly(nn.Module):
    """u(X, t) = t: tells which time point each Euler step evaluates."""

    def forward(self, x, t):
        return t.reshape(-1, *([1] * (x.dim() - 1))).expand_as(x)


class Oracle(nn.Module):
    """Remark 1's field for known pairs: u(X, t) = z - x for row i, whatever X and t are."""

    def __init__(self, x, z):
        super().__init__()
        self.v = z - x

    def forward(self, x, t):
        return self.v


def l2(a, b):
    """Per-sample mean squared error (the 'l2' paired distance), (B, ...) -> (B,)."""
    return (a - b).pow(2).flatten(1).mean(1)


def mmd_rbf(x, y, bw: float = 1.0):
    """Biased MMD^2 (Eq. 8) with one Gaussian kernel."""
    def k(a, b):
        return torch.exp(-torch.cdist(a.flatten(1), b.flatten(1)).pow(2) / (2 * bw**2))
    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def mmd_numpy(x: np.ndarray, y: np.ndarray, bw: float = 1.0) -> float:
    """Eq. 8 as a double loop: independent reference for the unpaired term."""
    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * bw**2))
    m, n = len(x), len(y)
    xx = sum(k(x[p], x[q]) for p in range(m) for q in range(m)) / m**2
    yy = sum(k(y[p], y[q]) for p in range(n) for q in range(n)) / n**2
    xy = sum(k(x[p], y[q]) for p in range(m) for q in range(n)) / (m * n)
    return xx + yy - 2 * xy


def make(grid, weights=None, lam=0.0, mmd=mmd_rbf):
    weights = weights if weights is not None else [1.0] + [0.5] * (len(grid) - 2) + [1.0]
    return BiDPM(grid, weights, l2, mmd, lambda_unpaired=lam)


def batch(b=6, d=3, paired=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, z = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) + 2.0
    paired = torch.ones(b, dtype=torch.bool) if paired is None else torch.tensor(paired)
    return Batch(x, z, paired)


# --- Euler unrolls (Eq. 5) ---------------------------------------------------------------------
@pytest.mark.parametrize("grid", GRIDS)
def test_constant_field_unrolls_are_affine_in_t(grid):
    x, z, c = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0.5, -1.0, 2.0])
    u = Constant(c)
    fwd = euler_states(u, x, grid, "forward")
    bwd = euler_states(u, z, grid, "backward")
    assert len(fwd) == len(bwd) == len(grid)
    for n, t in enumerate(grid):
        torch.testing.assert_close(fwd[n], x + t * c)           # X^f_{t_n} = x + t_n c
        torch.testing.assert_close(bwd[n], z - (1 - t) * c)     # X^b_{t_n} = z - (1 - t_n) c


@pytest.mark.parametrize("grid", GRIDS)
def test_linear_field_unrolls_are_products_of_euler_factors(grid):
    a = 0.7
    x, z = torch.randn(5, 2), torch.randn(5, 2)
    fwd = euler_states(Linear(a), x, grid, "forward")
    bwd = euler_states(Linear(a), z, grid, "backward")
    dts = np.diff(grid)
    for n in range(len(grid)):
        f = np.prod([1 + a * dt for dt in dts[:n]])      # X^f_{t_n} = x prod_{k<=n} (1 + a dt_k)
        b = np.prod([1 - a * dt for dt in dts[n:]])      # X^b_{t_n} = z prod_{k>n} (1 - a dt_k)
        torch.testing.assert_close(fwd[n], x * f)
        torch.testing.assert_close(bwd[n], z * b)


def test_forward_uses_left_times_backward_uses_right_times():
    """Eq. 5: forward evaluates u at t_{n-1}, backward at t_n (left / right Riemann sums of u = t)."""
    grid = [0.0, 0.2, 0.7, 1.0]
    x, z = torch.zeros(2, 1), torch.zeros(2, 1)
    left = sum(grid[n - 1] * (grid[n] - grid[n - 1]) for n in range(1, 4))
    right = sum(grid[n] * (grid[n] - grid[n - 1]) for n in range(1, 4))
    torch.testing.assert_close(euler_states(TimeOnly(), x, grid, "forward")[-1], torch.full((2, 1), left))
    torch.testing.assert_close(euler_states(TimeOnly(), z, grid, "backward")[0], torch.full((2, 1), -right))


# --- gradients through both unrolls ------------------------------------------------------------
def test_gradient_matches_analytic_derivative_one_step():
    """N = 1: X^f_1 = x (1 + a), X^b_0 = z (1 - a); L = w0 mean (x - z(1-a))^2 + w1 mean (x(1+a) - z)^2."""
    a, w0, w1 = 0.3, 1.0, 0.5
    bt = batch()
    x, z = bt.source, bt.target
    u = Linear(a)
    make([0.0, 1.0], [w0, w1]).loss(u, bt).total.backward()
    expected = w0 * (2 * (x - z * (1 - a)) * z).mean() + w1 * (2 * (x * (1 + a) - z) * x).mean()
    torch.testing.assert_close(u.a.grad, expected)


@pytest.mark.parametrize("weights", [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.5, 0.5, 1.0]])
def test_gradient_matches_finite_differences(weights):
    """w = [1,0,0,0] isolates the backward unroll (n = 0 term), [0,0,0,1] the forward one."""
    grid, bt = [0.0, 0.3, 0.6, 1.0], batch()
    method = make(grid, weights)
    u = Linear(0.4)
    method.loss(u, bt).total.backward()
    h = 1e-6

    def at(a):
        return method.loss(Linear(a), bt).total.item()

    fd = (at(0.4 + h) - at(0.4 - h)) / (2 * h)
    assert u.a.grad.item() != 0.0
    assert u.a.grad.item() == pytest.approx(fd, rel=1e-6)


# --- loss composition (Eq. 6-9) ----------------------------------------------------------------
def numpy_reference(a, grid, weights, lam, x, z, paired):
    """Independent Eq. 5-9 in numpy for u = a X: states, per-n d and MMD, weighted sums."""
    dts = np.diff(grid)
    f = [x * np.prod([1 + a * dt for dt in dts[:n]]) for n in range(len(grid))]
    b = [z * np.prod([1 - a * dt for dt in dts[n:]]) for n in range(len(grid))]
    d = [np.mean((f[n][paired] - b[n][paired]) ** 2) for n in range(len(grid))]
    m = [mmd_numpy(f[n][~paired], b[n]) for n in range(len(grid))]
    lp = sum(w * dn for w, dn in zip(weights, d))
    lu = sum(w * mn for w, mn in zip(weights, m))
    return d, m, lp, lu, lp + lam * lu


def test_total_is_weighted_sum_of_components_against_numpy():
    grid, weights, lam = [0.0, 0.25, 0.5, 1.0], [1.0, 0.3, 0.7, 2.0], 0.4
    paired = [True, False, True, False, False, True, False, False]
    bt = batch(b=8, paired=paired)
    out = make(grid, weights, lam).loss(Linear(0.6), bt)
    d, m, lp, lu, total = numpy_reference(0.6, grid, weights, lam, bt.source.numpy(), bt.target.numpy(), np.array(paired))
    c = out.components
    for n in range(len(grid)):
        assert c[f"paired/d_t{n}"] == pytest.approx(d[n], rel=1e-9)
        assert c[f"unpaired/mmd_t{n}"] == pytest.approx(m[n], rel=1e-9, abs=1e-12)
    assert c["loss/paired"] == pytest.approx(lp, rel=1e-9)
    assert c["loss/unpaired"] == pytest.approx(lu, rel=1e-9)
    assert c["loss/total"] == pytest.approx(total, rel=1e-9)
    assert out.total.item() == pytest.approx(total, rel=1e-9)
    assert c["batch/paired_frac"] == pytest.approx(3 / 8)
    assert all(isinstance(v, float) for v in c.values())


def test_scaling_one_weight_scales_only_that_term():
    grid, bt = [0.0, 0.5, 1.0], batch()
    base = make(grid, [1.0, 0.5, 1.0]).loss(Linear(0.2), bt).components
    scaled = make(grid, [1.0, 1.5, 1.0]).loss(Linear(0.2), bt).components
    for n in range(3):
        assert scaled[f"paired/d_t{n}"] == pytest.approx(base[f"paired/d_t{n}"])
    assert scaled["loss/paired"] - base["loss/paired"] == pytest.approx(1.0 * base["paired/d_t1"])


def test_endpoints_compare_source_with_backward_and_forward_with_target():
    """n = 0: d(x, X^b_0); n = N: d(X^f_1, z) - for u = c these are ||x - (z - c)||^2 and ||x + c - z||^2."""
    bt, c = batch(), torch.tensor([1.0, 0.0, -1.0])
    comps = make([0.0, 0.5, 1.0]).loss(Constant(c), bt).components
    x, z = bt.source, bt.target
    assert comps["paired/d_t0"] == pytest.approx(l2(x, z - c).mean().item())
    assert comps["paired/d_t2"] == pytest.approx(l2(x + c, z).mean().item())


def test_mmd_only_sees_unpaired_sources_and_all_targets():
    paired = [True, True, True, False, False, False]
    bt = batch(paired=paired)
    method, u = make([0.0, 0.5, 1.0], lam=0.3), Linear(0.5)
    ref = method.loss(u, bt).components
    unp, pai = ~bt.paired, bt.paired

    new_t = bt.target.clone()
    new_t[unp] += 3.0  # unpaired rows' targets moved: paired term unchanged, MMD changed
    c = method.loss(u, Batch(bt.source, new_t, bt.paired)).components
    assert c["loss/paired"] == pytest.approx(ref["loss/paired"])
    assert all(c[f"paired/d_t{n}"] == pytest.approx(ref[f"paired/d_t{n}"]) for n in range(3))
    assert c["loss/unpaired"] != pytest.approx(ref["loss/unpaired"])

    new_s = bt.source.clone()
    new_s[pai] += 3.0  # paired sources are not on the MMD's source side
    c = method.loss(u, Batch(new_s, bt.target, bt.paired)).components
    assert c["loss/unpaired"] == pytest.approx(ref["loss/unpaired"])

    new_t = bt.target.clone()
    new_t[pai] += 3.0  # paired targets are on its target side ("all data in the batch")
    c = method.loss(u, Batch(bt.source, new_t, bt.paired)).components
    assert c["loss/unpaired"] != pytest.approx(ref["loss/unpaired"])


def _no_mmd(x, y):
    raise AssertionError("MMD must not be computed here")


def test_fully_paired_batch_has_no_unpaired_term():
    out = make([0.0, 1.0], lam=0.5, mmd=_no_mmd).loss(Linear(0.1), batch())
    assert out.components["loss/unpaired"] == 0.0
    assert not any(k.startswith("unpaired/") for k in out.components)
    assert out.components["loss/total"] == pytest.approx(out.components["loss/paired"])


def test_lambda_zero_skips_mmd_and_unpaired_only_batch_still_backpropagates():
    bt = batch(paired=[False] * 6)
    u = Linear(0.1)
    out = make([0.0, 1.0], lam=0.0, mmd=_no_mmd).loss(u, bt)
    assert out.total.item() == 0.0
    out.total.backward()
    assert u.a.grad is not None and u.a.grad.item() == 0.0


# --- Remark 1 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", GRIDS + [sorted([0.0, 1.0] + list(np.random.default_rng(3).uniform(0, 1, 6)))])
def test_remark1_straight_field_has_zero_loss_on_any_grid(grid):
    bt = batch(b=8, d=4, seed=1)
    oracle = Oracle(bt.source, bt.target)
    assert make(grid).loss(oracle, bt).total.item() < 1e-20
    # a wrong field does not: the test can fail
    assert make(grid).loss(Constant(torch.zeros(4)), bt).total.item() > 1.0


# --- synthesis (Algorithm 2) -------------------------------------------------------------------
def test_sample_closed_form_both_directions_and_other_grids():
    c = torch.tensor([0.5, -2.0])
    u, x = Constant(c), torch.randn(3, 2)
    method = make([0.0, 0.5, 1.0])
    for grid in (None, [0.0, 1.0], [0.0, 0.1, 0.2, 1.0]):
        y = method.sample(u, x, grid=grid, direction="forward")
        torch.testing.assert_close(y, x + c)
        assert not y.requires_grad
        torch.testing.assert_close(method.sample(u, y, grid=grid, direction="backward"), x)


def test_sample_uses_training_grid_by_default():
    x = torch.ones(2, 1)
    method = make([0.0, 0.5, 1.0])
    # u = a X on grid [0, .5, 1]: forward factor (1 + a/2)^2, not (1 + a)
    torch.testing.assert_close(method.sample(Linear(1.0), x), x * 2.25)


@pytest.mark.parametrize("grid", [[0.0, 0.5], [0.1, 1.0], [0.0, 0.6, 0.4, 1.0], [0.0]])
def test_bad_grid_is_rejected_with_the_rule(grid):
    with pytest.raises(ValueError, match="t_0|increasing"):
        make([0.0, 1.0]).sample(Linear(0.0), torch.ones(1, 1), grid=grid)


def test_bad_direction_is_rejected():
    with pytest.raises(ValueError, match="forward"):
        make([0.0, 1.0]).sample(Linear(0.0), torch.ones(1, 1), direction="sideways")


def test_weights_length_must_match_grid():
    with pytest.raises(ValueError, match="step_weights"):
        BiDPM([0.0, 0.5, 1.0], [1.0, 1.0], l2, mmd_rbf)


# --- built from config with bidpm.losses ---------------------------------------------------------
def test_build_method_from_config_uses_configured_l2_and_mmd():
    cfg = MethodConfig(name="bidpm", time_grid=[0.0, 0.5, 1.0], paired_distance="l2", lambda_unpaired=0.2)
    method = build_method(cfg).to("cpu")
    assert isinstance(method, BiDPM)
    assert method.step_weights == [1.0, 0.5, 1.0] and method.lambda_unpaired == 0.2
    bt = batch(b=8, paired=[True] * 4 + [False] * 4)
    out = method.loss(Linear(0.3), bt)
    # the configured "l2" distance is the per-sample mean squared error
    ref = make([0.0, 0.5, 1.0], lam=0.2).loss(Linear(0.3), bt).components
    for n in range(3):
        assert out.components[f"paired/d_t{n}"] == pytest.approx(ref[f"paired/d_t{n}"], rel=1e-6)
    assert out.components["loss/unpaired"] > 0.0
    out.total.backward()
