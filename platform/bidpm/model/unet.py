"""Time-conditioned UNet u_theta(x, t) for single-channel images (paper 3.2: "UNet ... as in flow models").

Layout (DDPM/ADM-style, kept small and readable):

    x (B, C, H, W) -> conv3x3 -> [level 0 .. L-1: num_res_blocks ResBlocks (+ attention) -> downsample]
                   -> middle (ResBlock, attention if the deepest level has it, ResBlock)
                   -> [level L-1 .. 0: num_res_blocks + 1 ResBlocks on concat(h, skip) (+ attention) -> upsample]
                   -> GroupNorm -> SiLU -> conv3x3 (zero-initialised) -> (B, C, H, W)

Every ResBlock receives the time embedding (sinusoidal features of t -> MLP), added after its first
conv. Level i has ``base_channels * channel_mults[i]`` channels; the net downsamples
``len(channel_mults) - 1`` times, so H and W must be divisible by ``2 ** depth`` (checked, with a clear
error). Any such size works, square or not (the paper trains at 192 x 192).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

TimeLike = Union[Tensor, float]

# t lives in [0, 1]; sinusoidal features were designed for integer steps 0..1000 (DDPM), so t is
# scaled by this factor first. Without it the slowest frequencies would see almost no change of t.
TIME_SCALE = 1000.0


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t (Vaswani et al. / DDPM): (B,) -> (B, dim).

    Uses ``TIME_SCALE * t`` so that t in [0, 1] spans the same phase range as DDPM step indices.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (TIME_SCALE * t.float())[:, None] * freqs[None, :]
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


class UNet(nn.Module):
    """u_theta(x, t): (B, C, H, W), t (B,) or scalar in [0, 1] -> velocity (B, C, H, W).

    Parameters mirror ``ModelConfig`` (see ``build_velocity_field``). ``attention_levels`` lists the
    resolution levels (0 = full resolution) whose blocks get self-attention; the middle block gets
    attention iff the deepest level is listed (attention at full 192 px resolution is costly: 36864
    positions). The output conv starts at zero, so u_theta = 0 at initialisation (ADM practice): both
    Bi-DPM chains start as the identity and gradients reach the other layers from the second step on.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        num_heads: int = 4,
        groups: int = 8,
        dropout: float = 0.0,
        image_size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.depth = len(self.channel_mults) - 1
        levels = len(self.channel_mults)
        for lvl in attention_levels:
            if not 0 <= lvl < levels:
                raise ValueError(f"model.attention_levels: level {lvl} does not exist; valid levels are 0..{levels - 1}")
        widths = [base_channels * m for m in self.channel_mults]
        for w in widths:
            if w % groups:
                raise ValueError(f"model.groups: {groups} does not divide {w} channels; choose groups dividing every level's width")
        attn = set(attention_levels)
        temb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Encoder: record the channel count of every skip tensor pushed.
        self.down = nn.ModuleList()
        skip_ch = [base_channels]
        ch = base_channels
        for lvl, w in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(_Stage(ResBlock(ch, w, temb_dim, groups, dropout), SelfAttention(w, num_heads, groups) if lvl in attn else None))
                ch = w
                skip_ch.append(ch)
            if lvl < self.depth:
                self.down.append(Downsample(ch))
                skip_ch.append(ch)

        deep_attn = self.depth in attn
        self.mid1 = ResBlock(ch, ch, temb_dim, groups, dropout)
        self.mid_attn = SelfAttention(ch, num_heads, groups) if deep_attn else None
        self.mid2 = ResBlock(ch, ch, temb_dim, groups, dropout)

        # Decoder: num_res_blocks + 1 blocks per level, each consuming one skip.
        self.up = nn.ModuleList()
        for lvl in reversed(range(levels)):
            w = widths[lvl]
            for _ in range(num_res_blocks + 1):
                s = skip_ch.pop()
                self.up.append(_Stage(ResBlock(ch + s, w, temb_dim, groups, dropout), SelfAttention(w, num_heads, groups) if lvl in attn else None))
                ch = w
            if lvl > 0:
                self.up.append(Upsample(ch))

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        if image_size is not None:
            self.check_size(*image_size)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (2 ** depth)."""
        return 2 ** self.depth

    def check_size(self, h: int, w: int) -> None:
        """Raise a ValueError naming the size and the rule when (h, w) cannot pass through the net."""
        f = self.size_multiple
        if h % f or w % f:
            raise ValueError(
                f"UNet: image size {h}x{w} is not divisible by 2^depth = {f} (model.channel_mults has "
                f"{len(self.channel_mults)} levels -> {self.depth} downsamplings); resize/crop to sides "
                f"divisible by {f} (data.image_size) or use fewer levels"
            )

    checkpoint_evaluations = False  # train.checkpoint_unroll (model.runtime.set_checkpointing)

    def forward(self, x: Tensor, t: TimeLike) -> Tensor:
        """x (B, C, H, W), t (B,) / scalar -> u_theta(x, t) (B, C, H, W).

        With ``checkpoint_evaluations`` set and autograd recording, the activations are recomputed in the
        backward pass instead of kept (``torch.utils.checkpoint``, non-reentrant: works inside DDP and
        torch.compile); the output and the gradients are the same.
        """
        if self.checkpoint_evaluations and torch.is_grad_enabled():
            return checkpoint(self._forward, x, t, use_reentrant=False)
        return self._forward(x, t)

    def _forward(self, x: Tensor, t: TimeLike) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet: expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self.check_size(x.shape[2], x.shape[3])
        t = broadcast_time(t, x.shape[0], x.device)
        temb = self.time_mlp(timestep_embedding(t, self.base_channels).to(x.dtype))

        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, temb) if isinstance(block, _Stage) else block(h)
            skips.append(h)
        h = self.mid1(h, temb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, temb)
        for block in self.up:
            if isinstance(block, _Stage):
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Stage(nn.Module):
    """One ResBlock, optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: Optional[SelfAttention]) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.res(x, temb)
        return self.attn(h) if self.attn is not None else h
