"""MLP velocity field u_theta(x, t) for low-dimensional toy data (paper Fig. 2-3: 8 Gaussians in 2-D)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .unet import TimeLike, broadcast_time

# Fourier features of t: t itself plus sin/cos(pi k t), k = 1..K. The toy grids have up to ~10 steps,
# so frequencies up to 8 pi separate neighbouring grid times clearly without a learned embedding.
TIME_FREQS = 8
TIME_FEATURES = 1 + 2 * TIME_FREQS


def time_features(t: Tensor) -> Tensor:
    """(B,) -> (B, TIME_FEATURES): [t, sin(pi k t), cos(pi k t) for k = 1..TIME_FREQS]."""
    k = torch.arange(1, TIME_FREQS + 1, device=t.device, dtype=t.dtype)
    args = math.pi * t[:, None] * k[None, :]
    return torch.cat([t[:, None], torch.sin(args), torch.cos(args)], dim=1)


class MLPVelocity(nn.Module):
    """u_theta(x, t) = MLP(concat(x, time_features(t))): x (B, D), t (B,) or scalar -> (B, D).

    ``num_layers`` hidden layers of width ``hidden``, each Linear -> SiLU; a linear output layer.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, num_layers: int = 3, step_conditioned: bool = False) -> None:
        super().__init__()
        self.dim, self.step_conditioned = dim, step_conditioned
        layers: list[nn.Module] = []
        width = dim + TIME_FEATURES * (2 if step_conditioned else 1)   # + features of the signed step h
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    checkpoint_evaluations = False  # train.checkpoint_unroll (model.runtime.set_checkpointing)

    def forward(self, x: Tensor, t: TimeLike, h: Optional[TimeLike] = None) -> Tensor:
        """x (B, D), t (B,) / scalar [, h: signed step of a step-conditioned field, None = 0] -> (B, D);
        activations recomputed in backward when checkpointing."""
        if self.checkpoint_evaluations and torch.is_grad_enabled():
            return checkpoint(self._forward, x, t, h, use_reentrant=False)
        return self._forward(x, t, h)

    def _forward(self, x: Tensor, t: TimeLike, h: Optional[TimeLike] = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPVelocity: expected x of shape (B, {self.dim}) (model.mlp_dim), got {tuple(x.shape)}")
        t = broadcast_time(t, x.shape[0], x.device).to(x.dtype)
        feats = [x, time_features(t)]
        if self.step_conditioned:
            feats.append(time_features(broadcast_time(0.0 if h is None else h, x.shape[0], x.device).to(x.dtype)))
        elif h is not None:
            raise ValueError("MLPVelocity: a step h was given to a field without step conditioning (model.step_conditioned)")
        return self.net(torch.cat(feats, dim=1))
