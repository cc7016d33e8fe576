"""Shortcut models and MeanFlow against their equations written out: the self-consistency target on an
analytic field, MeanFlow's identity u = v - (t - r) du/dt where du/dt is known in closed form, the losses
replayed from the seed, and one Euler step of a field trained to zero loss on a linear toy mapping x_0 to
x_1 exactly (both directions); the step-conditioned networks leave the other methods' weights unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bidpm.config import load_config
from bidpm.method import Batch, MeanFlow, Shortcut, euler_integrate
from bidpm.method.fewstep import meanflow_target, shortcut_target
from bidpm.model import build_velocity_field

REPO = Path(__file__).resolve().parents[2]


def _analytic(z, t, h):
    """u(z, t, h) = t z + h^2 + sin(t): du/dt along (v, 1, -1) = t v + z + cos(t) - 2h."""
    tb, hb = t.view(-1, 1), h.view(-1, 1)
    return tb * z + hb ** 2 + torch.sin(tb)


def test_meanflow_target_is_the_identity_with_the_closed_form_derivative():
    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    t, r = torch.rand(5, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)
    h = r - t
    dudt = t.view(-1, 1) * v + z + torch.cos(t).view(-1, 1) - 2 * h.view(-1, 1)
    want = v - (t - r).view(-1, 1) * dudt                       # Geng et al. Eq. 8, r = t + h
    torch.testing.assert_close(meanflow_target(_analytic, z, t, h, v), want)


def test_shortcut_target_is_the_mean_of_two_half_steps():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t, h = torch.rand(4, generator=g, dtype=torch.float64) * 0.5, torch.tensor([0.5, -0.25, 0.125, -0.5], dtype=torch.float64)
    d = (h / 2).view(-1, 1)
    s1 = t.view(-1, 1) * x + d ** 2 + torch.sin(t).view(-1, 1)
    x2, t2 = x + d * s1, t + h / 2
    s2 = t2.view(-1, 1) * x2 + d ** 2 + torch.sin(t2).view(-1, 1)
    torch.testing.assert_close(shortcut_target(_analytic, x, t, h), (s1 + s2) / 2)    # Frans et al. Eq. 5


class Recorder(nn.Module):
    """u(x, t, h) = 0.3 x + t - h, recording every (t, h) it is asked about."""

    step_conditioned = True

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.3))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, h):
        self.calls.append((t.detach().clone(), h.detach().clone()))
        return self.w * x + t.view(-1, 1) - h.view(-1, 1)


def test_shortcut_loss_replayed_from_the_seed():
    x0, x1 = torch.randn(8, 2), torch.randn(8, 2)
    net = Recorder()
    torch.manual_seed(3)
    out = Shortcut([0.0, 1.0], levels=3, consistency_fraction=0.25).loss(net, Batch.fully_paired(x0, x1))
    torch.manual_seed(3)
    u, k, sign = torch.rand(8), torch.randint(1, 4, (8,)), torch.where(torch.rand(8) < 0.5, -1.0, 1.0)
    d = 0.5 ** k.float()
    cons = torch.arange(8) >= 6                                   # 1/4 of 8 rows: the last two
    start = torch.where(cons, u * (1 - 2 * d), u)
    t = torch.where(cons & (sign < 0), start + 2 * d, start)
    h = torch.where(cons, sign * 2 * d, torch.zeros(8))
    assert ((t >= 0) & (t <= 1) & (t + h >= -1e-6) & (t + h <= 1 + 1e-6)).all()
    x_t = (1 - t.view(-1, 1)) * x0 + t.view(-1, 1) * x1
    f = lambda x, tt, hh: 0.3 * x + tt.view(-1, 1) - hh.view(-1, 1)   # noqa: E731
    target = x1 - x0
    target[6:] = shortcut_target(f, x_t[6:], t[6:], h[6:])
    err = (f(x_t, t, h) - target).pow(2).mean(1)
    assert out.total.item() == pytest.approx(err.mean().item(), rel=1e-5)
    assert out.components["loss/consistency"] == pytest.approx(err[6:].mean().item(), rel=1e-5)
    out.total.backward()
    assert net.w.grad is not None and torch.isfinite(net.w.grad)


class Linear(nn.Module):
    """u(z, t, h) = w z / (1 + t w): the exact average velocity of x_1 = (1 + w) x_0 on straight lines, for
    every t and h, so the minimiser of both losses is w = a - 1 and one step x_0 + u(x_0, 0, 1) = a x_0."""

    step_conditioned = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, z, t, h):
        return self.w * z / (1 + t.view(-1, 1) * self.w)


@pytest.mark.parametrize("method", [MeanFlow([0.0, 1.0], distinct_fraction=0.5), Shortcut([0.0, 1.0], levels=4)],
                         ids=["meanflow", "shortcut"])
def test_one_step_of_a_field_trained_to_zero_loss_maps_x0_to_x1_exactly(method):
    torch.manual_seed(0)
    a = torch.tensor([1.5, 0.6])
    net = Linear(2)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)    # Adam's steps shrink: it settles on the minimiser
    for _ in range(500):
        x0 = torch.randn(16, 2)
        out = method.loss(net, Batch.fully_paired(x0, a * x0))
        opt.zero_grad()
        out.total.backward()
        opt.step()
        decay.step()
    mse = out.components.get("loss/mse", out.total.item())             # MeanFlow's total is adaptively weighted
    assert mse < 1e-8
    x0 = torch.randn(5, 2)
    torch.testing.assert_close(euler_integrate(net, x0, [0.0, 1.0], "forward"), a * x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(euler_integrate(net, a * x0, [0.0, 1.0], "backward"), x0, atol=1e-4, rtol=0)


def test_the_sampler_gives_a_step_conditioned_field_the_signed_step():
    net = Recorder()
    euler_integrate(net, torch.zeros(2, 2), [0.0, 0.25, 1.0], "forward")
    euler_integrate(net, torch.zeros(2, 2), [0.0, 0.25, 1.0], "backward")
    got = [(float(t[0]), float(h[0])) for t, h in net.calls]
    assert got == [(0.0, 0.25), (0.25, 0.75), (1.0, -0.75), (0.25, -0.25)]


def test_only_the_step_methods_get_a_step_embedding():
    base = load_config(REPO / "configs" / "quickstart.yaml")
    plain = build_velocity_field(base.model, tuple(base.data.image_size))
    for name in ("shortcut", "meanflow"):
        cfg = load_config(REPO / "configs" / "quickstart.yaml", [f"method.name={name}"])
        assert cfg.model.step_conditioned
        net = build_velocity_field(cfg.model, tuple(cfg.data.image_size))
        extra = set(net.state_dict()) - set(plain.state_dict())
        assert extra and all(k.startswith("step_mlp.") for k in extra)
        x = torch.randn(2, 1, *cfg.data.image_size)
        torch.testing.assert_close(net(x, torch.rand(2), torch.rand(2)), torch.zeros_like(x))   # zero-initialised output
    assert not base.model.step_conditioned and not any(k.startswith("step_mlp") for k in plain.state_dict())
    with pytest.raises(ValueError, match="step conditioning"):
        plain(torch.randn(1, 1, *base.data.image_size), 0.5, 0.5)
