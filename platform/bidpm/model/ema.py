"""Exponential moving average of model weights (paper 3.2: EMA is used to update the flow models).

After each optimizer step:  theta_ema <- d * theta_ema + (1 - d) * theta, with d = ``decay``, or with
``warmup=True`` d_k = min(decay, (1 + k) / (10 + k)) at the k-th update (k = 0, 1, ...; the
"num_updates" rule of TensorFlow's ExponentialMovingAverage). Warm-up is off by default: the paper
names EMA without details, and a constant decay is the plain reading; switch it on for short runs
where a 0.999 average would still be dominated by the random initialisation.

Buffers (e.g. BatchNorm statistics, none in our UNet) are copied, not averaged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel (``.module``) or torch.compile (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class EMA:
    """Averaged copy of a model: ``.module`` (eval mode, requires_grad False) follows ``.update(model)``.

    Works with DDP-wrapped models (Ray Train's ``prepare_model``): the wrapper is unwrapped both at
    construction and at every update, so ``.module`` and its state_dict carry no ``module.`` prefix.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay: must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The d used by the next update."""
        if self.warmup:
            k = self.num_updates
            return min(self.decay, (1.0 + k) / (10.0 + k))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta for every parameter; buffers copied."""
        src = unwrap_model(model)
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        src_params = dict(src.named_parameters())
        if ema_params.keys() != src_params.keys():
            raise ValueError("EMA.update: the model's parameters differ from the ones the EMA was built from")
        # One multi-tensor lerp over all parameters (torch._foreach_lerp_: a few fused kernels instead of
        # one launch per tensor; the same arithmetic as p_ema.lerp_(p, 1 - d) per tensor).
        floats = [n for n, p in ema_params.items() if p.dtype.is_floating_point and src_params[n].dtype == p.dtype
                  and src_params[n].device == p.device]
        if floats:
            torch._foreach_lerp_([ema_params[n] for n in floats], [src_params[n].detach() for n in floats], 1.0 - d)
        done = set(floats)
        for name, p_ema in ema_params.items():
            if name in done:
                continue
            p = src_params[name].detach()
            if p_ema.dtype.is_floating_point:
                p_ema.lerp_(p.to(p_ema.device, p_ema.dtype), 1.0 - d)  # = d * p_ema + (1 - d) * p
            else:
                p_ema.copy_(p)
        src_buffers = dict(src.named_buffers())
        for name, b_ema in self.module.named_buffers():
            b_ema.copy_(src_buffers[name])
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged parameters and buffers into ``model`` (e.g. before final evaluation)."""
        unwrap_model(model).load_state_dict(self.module.state_dict())

    def to(self, *args: Any, **kwargs: Any) -> "EMA":
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "module": self.module.state_dict(),
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
