"""CycleGAN's objective (Zhu et al. 2017), a baseline of the paper's comparisons, for ``model.cyclegan``.

Per batch (x = sources, z = targets; every row used unpaired - CycleGAN has no use for the pairing):

    G:  LSGAN  (D_t(G_st(x)) - 1)^2 + (D_s(G_ts(z)) - 1)^2
        + cycle_lambda * (|G_ts(G_st(x)) - x|_1 + |G_st(G_ts(z)) - z|_1)
        + identity_lambda * cycle_lambda * (|G_st(z) - z|_1 + |G_ts(x) - x|_1)
    D:  0.5 * [(D_t(z) - 1)^2 + D_t(G_st(x))^2] + 0.5 * [(D_s(x) - 1)^2 + D_s(G_ts(z))^2]   (fakes detached)

One backward and one optimizer step update both: the generators' adversarial terms go through the
discriminators with their parameters detached (``torch.func.functional_call``), so they reach only the
generators, and the discriminator terms see detached fakes, so they reach only the discriminators. That
is Zhu et al.'s update order (G steps against the current D; D steps on the fakes of the same forward
pass); Adam is per-parameter, so one Adam over all parameters equals two with the same settings.
Differences, stated: the trainer's Adam settings (``train.lr``, default betas) instead of lr 2e-4,
betas (0.5, 0.999); no 50-image history buffer of fakes; ``train.grad_clip`` applies to all.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .base import Batch, LossOutput, Method


def _core(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)        # DDP wraps the CycleGANField


def _frozen_d(model: nn.Module, name: str, x: Tensor) -> Tensor:
    """D(x) with D's parameters detached: gradients reach x (the generators) only."""
    d = getattr(_core(model), name)
    params = {k: v.detach() for k, v in d.named_parameters()}
    return functional_call(d, {**params, **dict(d.named_buffers())}, (x,))


class CycleGAN(Method):
    name = "cyclegan"

    def __init__(self, time_grid: Sequence[float], cycle_lambda: float = 10.0, identity_lambda: float = 0.5) -> None:
        super().__init__(time_grid)
        self.cycle_lambda = float(cycle_lambda)
        self.identity_lambda = float(identity_lambda)

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        x, z = batch.source, batch.target
        fake_t = x + model(x, 0.0)                 # G_st(x): every call goes through the (DDP) model
        fake_s = z - model(z, 1.0)                 # G_ts(z)
        rec_s = fake_t - model(fake_t, 1.0)        # G_ts(G_st(x))
        rec_t = fake_s + model(fake_s, 0.0)        # G_st(G_ts(z))
        adv = ((_frozen_d(model, "d_t", fake_t) - 1) ** 2).mean() + ((_frozen_d(model, "d_s", fake_s) - 1) ** 2).mean()
        cyc = (rec_s - x).abs().mean() + (rec_t - z).abs().mean()
        loss_g = adv + self.cycle_lambda * cyc
        if self.identity_lambda > 0:
            idt = model(z, 0.0).abs().mean() + model(x, 1.0).abs().mean()   # |G_st(z) - z|, |G_ts(x) - x|
            loss_g = loss_g + self.identity_lambda * self.cycle_lambda * idt
        d_t_real, d_t_fake = model(z, 3.0), model(fake_t.detach(), 3.0)
        d_s_real, d_s_fake = model(x, 2.0), model(fake_s.detach(), 2.0)
        loss_d = 0.5 * (((d_t_real - 1) ** 2).mean() + (d_t_fake ** 2).mean()) \
            + 0.5 * (((d_s_real - 1) ** 2).mean() + (d_s_fake ** 2).mean())
        total = loss_g + loss_d
        vals = (total, loss_g, loss_d, adv, cyc)
        logged: dict[str, Tensor | float] = {k: v.detach() for k, v in zip(
            ("loss/total", "loss/generator", "loss/discriminator", "loss/adversarial", "loss/cycle"), vals)}
        logged["batch/paired_frac"] = batch.n_paired / batch.paired.shape[0]
        return LossOutput(total=total, logged=logged)
