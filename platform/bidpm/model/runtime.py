"""How a velocity field runs on its device: torch.compile, channels_last, activation checkpointing, fused Adam.

These switches change speed and memory, never the maths: a compiled, channels_last, checkpointed field
computes the same u_theta(x, t) (exactly in fp32 for checkpointing; within float tolerance for compile,
whose kernels reorder sums). Each ``Optional[bool]`` switch of the config means "on where it pays":
``None`` turns it on for CUDA devices and off on CPU, so CPU runs and their results stay as they were.

Why each one (measured on one H200 at 192 px, batch 16, with ``benchmarks/gpu_step.py``):
eager bf16 was only 8% faster than fp32, so a step is bound by memory traffic and kernel launches
(GroupNorm, SiLU, casts, residual adds), which ``torch.compile`` fuses; convolutions in channels_last run
on tensor cores without layout transposes; fused Adam is one kernel instead of a loop over parameters.
Bi-DPM keeps every Euler state for the gradient (Eq. 6): memory grows linearly with N, and
``checkpoint_evaluations`` recomputes each evaluation's activations in the backward pass so only the
N + 1 states and one evaluation's activations are held.

Precision (``autocast``, ``grad_scaler``) is device-agnostic: the same autocast branch runs on CPU and
CUDA, so CI exercises what a GPU run does. ``set_backends`` holds the process-wide CUDA switches (TF32,
cuDNN autotuning) a worker sets at its start.

Imports torch only (no Ray, no MLflow): the GPU benchmark runs this module on a bare machine.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch
from torch import nn

from .ema import unwrap_model

__all__ = ["PRECISIONS", "autocast", "compile_field", "grad_scaler", "inference_field", "make_adam", "resolve",
           "set_backends", "set_checkpointing", "to_channels_last"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train/evaluation.precision -> dtype


def resolve(flag: Optional[bool], device: torch.device | str) -> bool:
    """A config switch -> on/off for ``device``: ``None`` means on for CUDA only."""
    if flag is None:
        return torch.device(device).type == "cuda"
    return bool(flag)


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at ``precision`` on ``device``'s type, CPU included; fp32 -> no autocast.

    The one switch of training, validation, scoring and synthesis (``train``/``evaluation.precision``).
    CPU autocast does bf16 and fp16 (checked on torch 2.14.1: convolutions, linear and matmul run in the
    asked dtype), so CPU runs now take the same branch as CUDA runs instead of silently staying fp32.
    Numerically fragile parts switch it off themselves (``losses.mmd``, ``metrics.image``). Callers may
    enter the returned object repeatedly, but not nested.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: unknown {precision!r}; use one of {list(PRECISIONS)}")
    dtype, kind = PRECISIONS[precision], torch.device(device).type
    if dtype is None:
        return contextlib.nullcontext()
    if not torch.amp.is_autocast_available(kind):
        raise ValueError(f"precision={precision}: torch has no autocast on {kind}; use precision fp32 there")
    return torch.autocast(kind, dtype=dtype)


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its 5-bit exponent flushes small gradients to zero) on ``device``'s type;
    disabled (a pass-through with an empty state dict) for fp32 and bf16, whose range is fp32's.

    ``torch.amp.GradScaler("cpu")`` works on torch 2.14.1 (found by experiment, held by
    tests/unit/test_precision.py): scale, ``unscale_`` (CPU kernel of the inf check), skipped steps
    on inf/NaN gradients with back-off, growth, and ``state_dict``/``load_state_dict`` (plain floats, so
    a CUDA run's checkpoint resumes on CPU and back). So fp16 scales on CPU exactly as on CUDA.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: unknown {precision!r}; use one of {list(PRECISIONS)}")
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def set_backends(matmul_precision: Optional[str], cudnn_benchmark: Optional[bool],
                 device: torch.device | str) -> dict[str, object]:
    """Process-wide switches at a worker's (or scorer's) start; returns what is now in force.

    ``matmul_precision`` (``train.matmul_precision``): ``torch.set_float32_matmul_precision``; None = "high"
    on CUDA (fp32 matmuls on TF32 tensor cores, Ampere and newer: ~8x the fp32 rate, 10-bit mantissa
    inputs, fp32 sums) and untouched on CPU, where "high"/"medium" may let oneDNN compute fp32 matmuls in
    bf16. ``cudnn_benchmark`` (``train.cudnn_benchmark``, None = on CUDA): cuDNN times its algorithms once
    per input shape and keeps the fastest; pays for the fixed shapes of training and scoring.
    """
    on_cuda = torch.device(device).type == "cuda"
    if matmul_precision is not None or on_cuda:
        torch.set_float32_matmul_precision(matmul_precision or "high")
    torch.backends.cudnn.benchmark = resolve(cudnn_benchmark, device)
    return {"matmul_precision": torch.get_float32_matmul_precision(), "cudnn_benchmark": torch.backends.cudnn.benchmark}


def set_checkpointing(net: nn.Module, on: bool) -> nn.Module:
    """Activation checkpointing of every network evaluation (``train.checkpoint_unroll``).

    Sets ``checkpoint_evaluations`` on each module that supports it (``UNet``, ``MLPVelocity``, also the
    UNets inside a CycleGAN field); their ``forward`` then runs its body under
    ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` while autograd records. The flag is a plain
    attribute, not a parameter or buffer: state dicts are unchanged and checkpoints load either way.
    Raises ValueError when no submodule supports it (a field the switch would silently not affect).
    """
    found = False
    for m in unwrap_model(net).modules():
        if hasattr(m, "checkpoint_evaluations"):
            m.checkpoint_evaluations = bool(on)
            found = True
    if on and not found:
        raise ValueError(f"train.checkpoint_unroll: {type(unwrap_model(net)).__name__} has no checkpointable evaluation; "
                         "set train.checkpoint_unroll=false")
    return net


def to_channels_last(net: nn.Module) -> nn.Module:
    """Parameters of 4-D convolutions in NHWC order (cuDNN's tensor-core layout); a no-op for the MLP."""
    return net.to(memory_format=torch.channels_last)


def compile_field(net: nn.Module, mode: Optional[str] = None, backend: str = "inductor",
                  dynamic: Optional[bool] = None) -> nn.Module:
    """``torch.compile`` of a velocity field, compiled lazily at its first call (once per process).

    The result is an ``OptimizedModule`` sharing ``net``'s parameters; ``unwrap_model`` strips it, so
    checkpoints and EMA copies carry no ``_orig_mod.`` prefix (``train.checkpoint``). ``mode``: None
    (inductor default), ``reduce-overhead`` (CUDA graphs: pays for small batches, where launches dominate)
    or ``max-autotune``; ``backend`` ``aot_eager`` traces the same graphs without generating kernels.
    """
    if mode == "default":
        mode = None
    return torch.compile(net, mode=mode, backend=backend, dynamic=dynamic)


def make_adam(params: Iterable[nn.Parameter], lr: float, fused: bool) -> torch.optim.Adam:
    """The paper's Adam (lr constant). ``fused``: one fused kernel for all parameters (CUDA); otherwise
    torch's default (the multi-tensor ``foreach`` implementation), which gives the same update."""
    params = list(params)
    if fused:
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


def inference_field(net: nn.Module, device: torch.device | str, compile: Optional[bool] = None,
                    channels_last: Optional[bool] = None, mode: Optional[str] = None,
                    backend: str = "inductor") -> nn.Module:
    """A field prepared for synthesis and scoring (``evaluation.compile``/``channels_last``/``compile_mode``;
    None = on CUDA): channels_last weights, then ``torch.compile``. Callers run it under
    ``torch.inference_mode`` and autocast; weights are shared with ``net`` (nothing is copied)."""
    if resolve(channels_last, device):
        to_channels_last(net)
    if resolve(compile, device):
        return compile_field(net, mode, backend)
    return net
