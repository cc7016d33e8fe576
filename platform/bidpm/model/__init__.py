"""Velocity fields u_theta(x, t) (UNet for images, MLP for toy vectors) and their weight EMA."""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..config import ModelConfig
from .ema import EMA, unwrap_model
from .mlp import MLPVelocity
from .unet import UNet, broadcast_time, timestep_embedding

__all__ = ["EMA", "MLPVelocity", "UNet", "broadcast_time", "build_velocity_field", "timestep_embedding", "unwrap_model"]


def build_velocity_field(cfg: ModelConfig, image_size: Optional[tuple[int, int]] = None) -> nn.Module:
    """``model:`` section -> UNet (kind="unet"), MLPVelocity (kind="mlp") or CycleGANField (kind="cyclegan",
    two UNet generators + two PatchGANs, see ``model.cyclegan``); forward(x, t) -> shape of x.

    ``image_size`` (H, W), when given, is checked against the UNet's 2^depth rule now rather than at
    the first forward pass; the MLP ignores it.
    """
    if cfg.kind == "mlp":
        return MLPVelocity(dim=cfg.mlp_dim, hidden=cfg.mlp_hidden, num_layers=cfg.mlp_layers,
                           step_conditioned=cfg.step_conditioned)
    unet = dict(in_channels=cfg.in_channels, base_channels=cfg.base_channels, channel_mults=cfg.channel_mults,
                num_res_blocks=cfg.num_res_blocks, attention_levels=cfg.attention_levels, num_heads=cfg.num_heads,
                groups=cfg.groups, dropout=cfg.dropout)
    size = tuple(image_size) if image_size is not None else None
    if cfg.kind == "unet":
        return UNet(**unet, image_size=size, step_conditioned=cfg.step_conditioned)
    if cfg.kind == "cyclegan":
        from .cyclegan import CycleGANField

        if size is None:
            raise ValueError("model.kind=cyclegan: the discriminators need data.image_size")
        return CycleGANField(unet, size)
    raise ValueError(f"model.kind: unknown {cfg.kind!r}; use 'unet', 'mlp' or 'cyclegan'")
