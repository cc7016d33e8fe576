"""A training step's peak memory per worker for a config, estimated without a GPU (``trace`` does the work).

What is counted, per worker, for the step exactly as ``train/loop.py`` runs it:

* the traced step (``trace.LiveBytes``): the weights, the forward pass with everything autograd saves
  (N Euler steps in both directions, the paired distance, MMD), activation checkpointing's
  recomputation and the backward pass, at ``train.batch_size`` rows (a mixed batch is half paired when
  ``data.pairing_ratio`` < 1) and ``train.precision`` (CUDA's autocast policy replayed, ``trace``);
* Adam's two moment buffers (float32, one each per weight), which exist from the first step on;
* the EMA copy of the weights; DDP's gradient buckets (one more copy) when ``train.num_workers`` > 1;
  with ``train.grad_accum`` > 1 the gradients, which live across the micro-batches of a group;
* on CUDA, ``CUDA_WORKSPACE_GIB`` for cuDNN/cuBLAS workspaces (calibrated, see ``trace``).

Not counted: the CUDA context (~0.5 GiB, outside the allocator; ``fits`` leaves ``HEADROOM`` for it and
fragmentation), rank 0's validation pass (inference, smaller than a training step), and
``torch.compile``: a compiled step is estimated as eager. Inductor's partitioner saves at most what eager
autograd saves and usually less (it recomputes fused pointwise ops), so the figure is an upper bound in
practice - unmeasured on GPU so far, and said in every plan.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..config import Config
from .trace import LiveBytes, cuda_autocast_policy

__all__ = ["CUDA_WORKSPACE_GIB", "GIB", "HEADROOM", "StepMemory", "estimate_step_memory"]

GIB = 2 ** 30
CUDA_WORKSPACE_GIB = 1.0   # measured - traced on the H200: 0.99, 1.03, 1.02, 0.99 GiB (trace docstring)
HEADROOM = 0.90            # share of a card's memory a step may plan to use (context, fragmentation)
_LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepMemory:
    """Bytes per worker: ``traced`` is the traced step's high-water mark (weights included)."""

    traced: int
    weights: int
    optimizer: int
    ema: int
    ddp_buckets: int
    accumulated_grads: int
    workspace: int

    @property
    def peak(self) -> int:
        return self.traced + self.optimizer + self.ema + self.ddp_buckets + self.accumulated_grads + self.workspace

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    def as_dict(self) -> dict[str, Any]:
        return {**{f"{k}_gib": v / GIB for k, v in asdict(self).items()}, "peak_gib": self.peak_gib}


def _trace_config(cfg: Config) -> Config:
    """The config the trace builds, with the same tensors: LPIPS with a random backbone (same shapes, and no
    weights needed on the planning machine); OT-CFM as I-CFM (its coupling only permutes rows, solved on the
    host with scipy, which fake tensors cannot feed); MeanFlow as a shortcut model with (almost) every row
    on the consistency target: both build their target without autograd (MeanFlow's JVP, which the tracer
    cannot run, carries a tangent per activation; shortcut's two half steps run one after the other), so
    the peak is set by the one recorded pass that follows, the same in both."""
    method = cfg.method
    if method.paired_distance == "lpips" and not method.lpips_random_backbone:
        method = method.model_copy(update={"lpips_random_backbone": True})
    if method.name == "otcfm":
        method = method.model_copy(update={"name": "icfm"})
    if method.name == "meanflow":
        method = method.model_copy(update={"name": "shortcut", "shortcut_consistency_fraction": 0.99})
    return cfg if method is cfg.method else cfg.model_copy(update={"method": method})


def estimate_step_memory(cfg: Config, device_type: str = "cuda") -> StepMemory:
    """Peak bytes per worker of one training step of ``cfg`` on a ``device_type`` device (module doc).

    ``device_type`` "cuda" replays CUDA's autocast policy and adds the workspace; "cpu" traces CPU's own.
    Takes seconds (the paper-size Bi-DPM N=4 step about 15 s on one laptop core), never a GPU.
    """
    from ..method import Batch, build_method
    from ..model import build_velocity_field, runtime
    from torch._subclasses.fake_tensor import FakeTensorMode

    cfg = _trace_config(cfg)
    tc = cfg.train
    h, w = cfg.data.image_size
    b = tc.batch_size
    n_paired = b if cfg.data.pairing_ratio >= 1.0 else b // 2
    low = _LOW.get(tc.precision)
    policy = cuda_autocast_policy() if device_type == "cuda" and low is not None else contextlib.nullcontext()
    with FakeTensorMode(), policy:
        net = build_velocity_field(cfg.model, (h, w))
        runtime.set_checkpointing(net, tc.checkpoint_unroll)
        method = build_method(cfg.method)
        weights = sum(p.numel() * p.element_size() for p in net.parameters())
        live = LiveBytes()
        for p in net.parameters():
            live.track(p)
        for buf in net.buffers():
            live.track(buf)
        shape = (b, cfg.model.in_channels, h, w) if cfg.model.kind != "mlp" else (b, cfg.model.mlp_dim)
        with live:
            x, z = torch.zeros(shape), torch.zeros(shape)
            batch = Batch.paired_first(x, z, n_paired)
            amp = torch.autocast("cpu", dtype=low) if low is not None else torch.autocast("cpu", enabled=False)
            with amp:
                loss = method.loss(net, batch).total
            loss.backward()
            del loss, batch, x, z
    fp32 = sum(p.numel() for p in net.parameters()) * 4
    return StepMemory(
        traced=live.peak, weights=weights, optimizer=2 * fp32, ema=weights,
        ddp_buckets=fp32 if tc.num_workers > 1 else 0,
        accumulated_grads=fp32 if tc.grad_accum > 1 else 0,
        workspace=int(CUDA_WORKSPACE_GIB * GIB) if device_type == "cuda" else 0,
    )

