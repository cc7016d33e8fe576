"""The UNet's parts: sinusoidal time features, the residual block that receives them, self-attention
over a feature map, and the strided / nearest-neighbour resolution changes (DDPM/ADM-style)."""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Downsample", "ResBlock", "SelfAttention", "TIME_SCALE", "TimeLike", "Upsample", "broadcast_time",
           "timestep_embedding"]

TimeLike = Union[Tensor, float]

# t lives in [0, 1]; sinusoidal features were designed for integer steps 0..1000 (DDPM), so t is
# scaled by this factor first. Without it the slowest frequencies would see almost no change of t.
TIME_SCALE = 1000.0
# Step-conditioned fields (shortcut, MeanFlow) embed t and h at this scale instead: MeanFlow's target holds
# the JVP d/dt of the field, which runs through the embedding's derivative (up to TIME_SCALE per unit of t).
# At 1000 the targets of the first steps reached 30x the velocity and the loss ran away (0.38 -> 12 in three
# Adam steps on a 16 px toy); at 10 or 100 it falls steadily (0.38 -> 0.15 in 24).
STEP_TIME_SCALE = 10.0


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, scale: float = TIME_SCALE) -> Tensor:
    """Sinusoidal features of t (Vaswani et al. / DDPM): (B,) -> (B, dim).

    Uses ``TIME_SCALE * t`` so that t in [0, 1] spans the same phase range as DDPM step indices.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (scale * t.float())[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


def broadcast_time(t: TimeLike, batch: int, device: torch.device) -> Tensor:
    """A python float, a 0-dim / 1-element tensor, or one value per sample -> float tensor (B,).

    Shapes like (B, 1) or (B, 1, 1, 1) are accepted too (flattened), so callers need not squeeze.
    """
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t))
    t = t.to(device=device, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"t: expected a scalar or one time per sample ({batch}), got {t.numel()} values")
    return t


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + time embedding, GroupNorm -> SiLU -> dropout -> conv; residual."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """x (B, in_ch, H, W), temb (B, temb_dim) -> (B, out_ch, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, residual."""

    def __init__(self, ch: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"model.num_heads: {num_heads} does not divide {ch} channels at an attention level")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, ch, H, W) -> (B, ch, H, W)."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Strided 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W) (no checkerboard of transposed convs)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
