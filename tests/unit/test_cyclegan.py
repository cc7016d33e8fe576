"""CycleGAN baseline: the loss against the equations of Zhu et al. 2017 written out here, the gradient
split (generator terms reach only generators, discriminator terms only discriminators), and one Euler
step on [0, 1] reproducing the generators (so synthesis and evaluation serve it unchanged)."""

from __future__ import annotations

import pytest
import torch

from bidpm.config import ConfigError, load_config
from bidpm.method import Batch, build_method
from bidpm.method.solver import euler_integrate
from bidpm.model import build_velocity_field

OVR = ["model.kind=cyclegan", "method.name=cyclegan", "model.base_channels=8", "model.groups=4",
       "model.channel_mults=[1,2]", "data.image_size=[16,16]", "method.paired_distance=l2"]


@pytest.fixture
def setup():
    torch.manual_seed(0)
    cfg = load_config(None, OVR)
    model = build_velocity_field(cfg.model, (16, 16))
    with torch.no_grad():                       # move the generators off the identity so every term matters
        for p in (*model.g_st.parameters(), *model.g_ts.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    x, z = torch.rand(3, 1, 16, 16) * 2 - 1, torch.rand(3, 1, 16, 16) * 2 - 1
    return cfg, model, build_method(cfg.method), x, z


def test_loss_is_zhu_et_al_lsgan_cycle_identity(setup):
    cfg, model, method, x, z = setup
    out = method.loss(model, Batch.fully_paired(x, z))
    g_st = lambda a: torch.tanh(a + model.g_st(a, torch.zeros(a.shape[0])))  # noqa: E731
    g_ts = lambda a: torch.tanh(a + model.g_ts(a, torch.zeros(a.shape[0])))  # noqa: E731
    ft, fs = g_st(x), g_ts(z)
    adv = ((model.d_t(ft) - 1) ** 2).mean() + ((model.d_s(fs) - 1) ** 2).mean()
    cyc = (g_ts(ft) - x).abs().mean() + (g_st(fs) - z).abs().mean()
    idt = (g_st(z) - z).abs().mean() + (g_ts(x) - x).abs().mean()
    lam = cfg.method.cycle_lambda
    loss_g = adv + lam * cyc + cfg.method.identity_lambda * lam * idt
    loss_d = 0.5 * (((model.d_t(z) - 1) ** 2).mean() + (model.d_t(ft) ** 2).mean()) \
        + 0.5 * (((model.d_s(x) - 1) ** 2).mean() + (model.d_s(fs) ** 2).mean())
    assert out.components["loss/generator"] == pytest.approx(float(loss_g.detach()), rel=1e-5)
    assert out.components["loss/discriminator"] == pytest.approx(float(loss_d.detach()), rel=1e-5)
    assert float(out.total.detach()) == pytest.approx(float((loss_g + loss_d).detach()), rel=1e-5)


def test_gradients_split_between_generators_and_discriminators(setup):
    cfg, model, method, x, z = setup
    out = method.loss(model, Batch.fully_paired(x, z))
    g_params = [*model.g_st.parameters(), *model.g_ts.parameters()]
    d_params = [*model.d_s.parameters(), *model.d_t.parameters()]
    comps = out.components
    # d(total)/d(D) must equal d(loss_D)/d(D) alone: recompute loss_D and compare gradients
    grads_total = torch.autograd.grad(out.total, d_params + g_params, retain_graph=True, allow_unused=True)
    ft = (x + model(x, 0.0)).detach()
    fs = (z - model(z, 1.0)).detach()
    loss_d = 0.5 * (((model(z, 3.0) - 1) ** 2).mean() + (model(ft, 3.0) ** 2).mean()) \
        + 0.5 * (((model(x, 2.0) - 1) ** 2).mean() + (model(fs, 2.0) ** 2).mean())
    grads_d = torch.autograd.grad(loss_d, d_params)
    for a, b in zip(grads_total[: len(d_params)], grads_d):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(g is not None and g.abs().sum() > 0 for g in grads_total[len(d_params):])
    assert comps["loss/adversarial"] > 0 and comps["loss/cycle"] > 0


def test_one_euler_step_is_the_generator_and_other_times_are_refused(setup):
    _, model, _, x, z = setup
    with torch.no_grad():
        g_st = torch.tanh(x + model.g_st(x, torch.zeros(3)))
        g_ts = torch.tanh(z + model.g_ts(z, torch.zeros(3)))
        torch.testing.assert_close(euler_integrate(model, x, [0.0, 1.0], "forward"), g_st)
        torch.testing.assert_close(euler_integrate(model, z, [0.0, 1.0], "backward"), g_ts)
        with pytest.raises(ValueError, match="one-step"):
            euler_integrate(model, x, [0.0, 0.5, 1.0], "forward")


def test_config_keeps_model_and_method_together():
    with pytest.raises(ConfigError, match="go together"):
        load_config(None, ["method.name=cyclegan", "data.image_size=[16,16]"])
    with pytest.raises(ConfigError, match="one-step"):
        load_config(None, OVR + ["method.time_grid=[0,0.5,1]"])


def _scalar_reads(fn) -> int:
    """How often ``fn`` reads a tensor's value back to the host (``.item()``/``float(t)``: a device sync)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def test_time_tensor_selects_on_the_device_with_the_old_outputs(setup):
    """The solver's (B,) time tensor is selected on the device: the same outputs as the old host branch
    (``float(t[0])`` -> G_st(x) - x at t = 0, x - G_ts(x) at t = 1), no value read back, one graph under compile."""
    _, model, _, x, _ = setup
    model.eval()
    with torch.no_grad():
        old = {0.0: model.generate(x, "g_st") - x, 1.0: x - model.generate(x, "g_ts")}   # the old branches
        compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=False)  # a graph break fails
        for t, want in old.items():
            times = torch.full((x.shape[0],), t)
            assert torch.equal(model(x, times), want) and torch.equal(model(x, t), want)
            assert _scalar_reads(lambda: model(x, times)) == 0
            torch.testing.assert_close(compiled(x, times), want, rtol=1e-6, atol=1e-6)
        mixed = model(x, torch.tensor([0.0, 1.0, 0.5]))                                   # row by row
        assert torch.equal(mixed[0], old[0.0][0]) and torch.equal(mixed[1], old[1.0][1]) and mixed[2].isnan().all()
