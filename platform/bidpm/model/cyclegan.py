"""CycleGAN (Zhu et al. 2017) as a one-step "velocity field", so the one trainer, EMA, checkpoints,
evaluation, registry and synthesis serve it unchanged.

Two generators G_st (source -> target) and G_ts (target -> source) and two discriminators D_s, D_t
live in one module; ``forward(x, t)`` picks by t (the trainer and DDP see one model):

    t = 0: u(x, 0) = G_st(x) - x      so one Euler step on [0, 1] forward gives X_1 = G_st(x)
    t = 1: u(x, 1) = x - G_ts(x)      so one Euler step backward gives X_0 = G_ts(x)
    t = 2: D_s(x), t = 3: D_t(x)      PatchGAN logits (used by ``method.cyclegan``)

Any other t (a multi-step grid) is an error: CycleGAN is scored as a 1-step method.

Choices: the generators are this platform's UNet (``model:`` section, time input fixed at 0) with a
residual tanh output, G(x) = tanh(x + UNet(x)); the UNet's zero-initialised last layer makes each
generator start near the identity. Zhu et al. use a ResNet generator; the UNet keeps the comparison
with the flow methods at the same network. Discriminators: the 70x70 PatchGAN of Zhu et al. (4x4
convolutions, C64-C128-C256-C512, instance norm, LeakyReLU 0.2), widths scaled by
``model.base_channels / 32``, strides reduced on small images so at least a 2x2 patch map remains.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .unet import UNet

MODES = {0.0: "g_st", 1.0: "g_ts", 2.0: "d_s", 3.0: "d_t"}


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, C, H, W) -> (B, 1, h, w) real/fake logits per overlapping patch."""

    def __init__(self, in_channels: int, width: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans, side = in_channels, min(image_size)
        for i, mult in enumerate((1, 2, 4, 8)):
            stride = 2 if (i < 3 and side >= 8) else 1
            out = width * mult
            layers.append(nn.Conv2d(chans, out, 4, stride=stride, padding=1))
            if i > 0:
                layers.append(nn.InstanceNorm2d(out, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            chans, side = out, side // stride if stride == 2 else side - 1
        layers.append(nn.Conv2d(chans, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CycleGANField(nn.Module):
    """G_st, G_ts, D_s, D_t behind ``forward(x, t)`` (module docstring)."""

    def __init__(self, unet_kwargs: dict, image_size: tuple[int, int]) -> None:
        super().__init__()
        c = int(unet_kwargs.get("in_channels", 1))
        width = max(8, int(unet_kwargs.get("base_channels", 32)) * 2)
        self.g_st = UNet(**unet_kwargs, image_size=image_size)
        self.g_ts = UNet(**unet_kwargs, image_size=image_size)
        self.d_s = PatchDiscriminator(c, width, image_size)
        self.d_t = PatchDiscriminator(c, width, image_size)

    def generate(self, x: Tensor, which: str) -> Tensor:
        g = self.g_st if which == "g_st" else self.g_ts
        return torch.tanh(x + g(x, torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)))

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """A number t (the objective's calls) picks one module on the host. A time tensor (the Euler
        solver's (B,) times: synthesis, scoring) is selected on the device, row by row: reading it back
        (``float(t[0])``) was a host sync per step and a graph break under torch.compile. Both generators
        then run (twice the compute of one, for a one-step baseline); t = 0 rows get G_st, t = 1 rows G_ts,
        exactly as before, any other row NaN (``check_times`` refuses such grids before any step)."""
        if not isinstance(t, Tensor):
            mode = MODES.get(float(t))
            if mode is None:
                self.check_times([float(t)])
            if mode == "g_st":
                return self.generate(x, "g_st") - x
            if mode == "g_ts":
                return x - self.generate(x, "g_ts")
            return (self.d_s if mode == "d_s" else self.d_t)(x)
        tt = t.reshape(-1, *([1] * (x.dim() - 1)))
        fwd, bwd = self.generate(x, "g_st") - x, x - self.generate(x, "g_ts")
        return torch.where(tt == 0, fwd, torch.where(tt == 1, bwd, torch.full_like(fwd, float("nan"))))

    def check_times(self, grid: Sequence[float]) -> None:
        """The field exists at t = 0 and 1 only; called by the solver (``euler_states``) on the host grid."""
        bad = [float(t) for t in grid if float(t) not in (0.0, 1.0)]
        if bad:
            raise ValueError(f"CycleGAN is a one-step map: it has no field at t={bad[0]}; synthesise on the grid [0, 1] "
                             f"(--steps 1)")

    def generator_parameters(self) -> int:
        return sum(p.numel() for p in (*self.g_st.parameters(), *self.g_ts.parameters()))
