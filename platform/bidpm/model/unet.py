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

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .blocks import (  # noqa: F401 - TimeLike, broadcast_time and timestep_embedding are re-exported
    STEP_TIME_SCALE, TIME_SCALE, Downsample, ResBlock, SelfAttention, TimeLike, Upsample, broadcast_time, timestep_embedding,
)


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
        step_conditioned: bool = False,
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
        # shortcut / MeanFlow: the signed step h gets an embedding of its own, added to t's; it starts at zero,
        # so at initialisation u(x, t, h) = u(x, t). Absent otherwise: the other methods' weights are unchanged.
        self.step_conditioned = step_conditioned
        self.time_scale = STEP_TIME_SCALE if step_conditioned else TIME_SCALE   # blocks.STEP_TIME_SCALE: why
        self.step_mlp = (nn.Sequential(nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
                         if step_conditioned else None)
        if self.step_mlp is not None:
            nn.init.zeros_(self.step_mlp[-1].weight)
            nn.init.zeros_(self.step_mlp[-1].bias)
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

    def forward(self, x: Tensor, t: TimeLike, h: Optional[TimeLike] = None) -> Tensor:
        """x (B, C, H, W), t (B,) / scalar -> u_theta(x, t) (B, C, H, W); ``h``: the signed step of a
        step-conditioned field (None = 0, the instantaneous velocity).

        With ``checkpoint_evaluations`` set and autograd recording, the activations are recomputed in the
        backward pass instead of kept (``torch.utils.checkpoint``, non-reentrant: works inside DDP and
        torch.compile); the output and the gradients are the same.
        """
        if self.checkpoint_evaluations and torch.is_grad_enabled():
            return checkpoint(self._forward, x, t, h, use_reentrant=False)
        return self._forward(x, t, h)

    def _forward(self, x: Tensor, t: TimeLike, h: Optional[TimeLike] = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet: expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self.check_size(x.shape[2], x.shape[3])
        t = broadcast_time(t, x.shape[0], x.device)
        temb = self.time_mlp(timestep_embedding(t, self.base_channels, scale=self.time_scale).to(x.dtype))
        if self.step_mlp is not None:
            s = broadcast_time(0.0 if h is None else h, x.shape[0], x.device)
            temb = temb + self.step_mlp(timestep_embedding(s, self.base_channels, scale=self.time_scale).to(x.dtype))
        elif h is not None:
            raise ValueError("UNet: a step h was given to a field without step conditioning (model.step_conditioned)")

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
