"""Peak device memory of one training step, traced on fake tensors: no GPU, no real allocation.

How (and why this way): the step runs under ``torch._subclasses.fake_tensor.FakeTensorMode``, where every
tensor has its real shape, dtype and autograd graph but no data, so the paper-size UNet at 192 px and
batch 16 costs seconds on a laptop CPU. A ``TorchDispatchMode`` below autograd sees every tensor each
op creates: it adds a storage's bytes when the storage first appears and subtracts them when Python
frees it (a weak reference), so ``peak`` is the high-water mark of live bytes over the forward pass,
the saved activations and the backward pass - what ``torch.cuda.max_memory_allocated`` counts, minus
the allocator's own workspaces. Activation checkpointing is seen for what it does (its recomputation
runs in the backward pass), and so is whatever the method's loss does (N Euler steps in two
directions, LPIPS, MMD, CycleGAN's four networks). ``MemTracker`` (torch.distributed._tools) gives the
same figures (checked: 17.41 GiB for the RF case below both ways) but is ~3x slower, because it
recounts every live tensor at each op.

Mixed precision: CUDA's autocast cannot run without CUDA, so the trace autocasts on CPU and replays
CUDA's float32 policy for the ops where the two differ and activation-sized tensors are involved
(``CUDA_FP32_OPS``: CUDA runs ``group_norm`` and ``pow`` in float32, CPU keeps them in bf16). The casts
are registered at the ``AutocastCPU`` dispatch key, above autograd, so autograd saves the float32 copies
exactly as it does on CUDA. Without this, the RF case below comes out 13.1 instead of 17.4 GiB.

Calibrated (``tests/unit/test_plan_memory.py``) against ``torch.cuda.max_memory_allocated`` on one H200
(``configs/brats_t1t2.yaml`` UNet, 192 px, batch 16, fully paired, L2, Adam, eager, bf16): the traced step
plus Adam's state (``memory``) is RF 17.42 / Bi-DPM N=1 34.37 / N=2 68.29 / N=4 136.12 GiB against
18.4 / 35.4 / 69.3 / 137.1 measured (-5.3%, -2.9%, -1.5%, -0.7%); the residual is 0.98-1.03 GiB in all four,
a constant, which ``memory.CUDA_WORKSPACE_GIB`` adds (cuDNN/cuBLAS workspaces go through the same caching
allocator): with it, +0.5%, +0.1%, +0.1%, +0.1%.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["CUDA_FP32_OPS", "LiveBytes", "cuda_autocast_policy"]

# aten overloads CUDA's autocast runs in float32 that CPU's runs in the low precision (or leaves alone),
# among those a UNet / LPIPS / loss applies to activation-sized tensors.
CUDA_FP32_OPS = ("group_norm", "layer_norm", "pow.Tensor_Scalar", "softmax.int", "log_softmax.int", "mse_loss")
_LOCK = threading.Lock()  # the overrides are process-wide while a trace runs


class LiveBytes(TorchDispatchMode):
    """Live bytes of every storage created under this mode (and those ``track``ed), with their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self._refs:
            return
        nbytes = st.nbytes()
        self._refs[key] = weakref.ref(st, lambda _r, k=key, n=nbytes: self._free(k, n))
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def _free(self, key: int, nbytes: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def _fp32_kernel(op: Any) -> Callable[..., Any]:
    """An AutocastCPU kernel that runs ``op`` on float32 copies of its floating inputs (CUDA's policy)."""
    excluded = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def up(v: Any) -> Any:
        return v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})

    return kernel


@contextlib.contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """While active, CPU autocast casts ``CUDA_FP32_OPS`` to float32 as CUDA autocast does (see module doc).

    Process-wide (dispatcher registrations), so guarded by a lock and removed on exit, error or not.
    """
    with _LOCK:
        lib = torch.library.Library("aten", "IMPL")
        try:
            for name in CUDA_FP32_OPS:
                base, _, overload = name.partition(".")
                packet = getattr(torch.ops.aten, base)
                lib.impl(name, _fp32_kernel(getattr(packet, overload or "default")), "AutocastCPU")
            yield
        finally:
            lib._destroy()
