"""Velocity-field network settings (``model:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section


class ModelConfig(Section):
    """u_theta(x, t): a time-conditioned UNet for images, or an MLP for 2-D toy data.

    ``channel_mults`` has one entry per resolution level; the UNet downsamples
    ``len(channel_mults) - 1`` times, so image sides must be divisible by ``2 ** depth``.
    """

    kind: Literal["unet", "mlp", "cyclegan"] = Field("unet", description="cyclegan: two UNet generators + two PatchGAN discriminators (method.name=cyclegan)")
    in_channels: int = Field(1, ge=1)
    base_channels: int = Field(32, ge=4)
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = Field(1, ge=1)
    attention_levels: list[int] = Field(default_factory=list, description="level indices (0 = full resolution) with self-attention")
    num_heads: int = Field(4, ge=1)
    groups: int = Field(8, ge=1, description="GroupNorm groups; must divide every level's channel count")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mlp_dim: int = Field(2, ge=1, description="data dimension for kind=mlp")
    mlp_hidden: int = Field(128, ge=1)
    mlp_layers: int = Field(3, ge=1)
    step_conditioned: bool = Field(
        False, description="set from method.name (do not set by hand): the field takes a second scalar, the signed step "
        "h, u(x, t, h) - method.name shortcut / meanflow; the other methods' networks are unchanged")

    @property
    def depth(self) -> int:
        """Number of 2x downsamplings in the UNet."""
        return len(self.channel_mults) - 1

    @field_validator("channel_mults")
    @classmethod
    def _mults(cls, v: list[int]) -> list[int]:
        if not v or any(m < 1 for m in v):
            raise ValueError("must be a non-empty list of positive integers, e.g. [1, 2, 2]")
        return v

    def check_levels(self) -> None:
        """Cross-field rules that need the whole section."""
        for lvl in self.attention_levels:
            if not 0 <= lvl < len(self.channel_mults):
                raise ValueError(
                    f"model.attention_levels: level {lvl} does not exist; valid levels are 0..{len(self.channel_mults) - 1}"
                )
        for m in self.channel_mults:
            if (self.base_channels * m) % self.groups:
                raise ValueError(
                    f"model.groups: {self.groups} does not divide {self.base_channels * m} channels "
                    f"(base_channels {self.base_channels} x mult {m}); choose groups dividing every level's width"
                )
