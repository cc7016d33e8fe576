"""Speed switches (bidpm.model.runtime) change speed and memory, never the maths (issue 12).

References are the plain eager computations: unroll checkpointing must give *identical* gradients in
fp32 and a lower peak memory (measured with the torch profiler's allocation records); torch.compile
(inductor, real generated kernels) must agree with eager within float tolerance; a checkpoint saved
from a compiled, channels_last model loads into an eager one and back; the EMA's multi-tensor update
equals the per-tensor formula theta_ema <- d theta_ema + (1 - d) theta written in numpy.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from bidpm.config import load_config
from bidpm.method import Batch, BiDPM, build_method
from bidpm.model import EMA, UNet, build_velocity_field, unwrap_model
from bidpm.model import runtime
from bidpm.train.checkpoint import load_checkpoint, save_checkpoint


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


def no_mmd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.sum() * 0.0


def tiny_unet(seed: int = 0, mults=(1, 2)) -> UNet:
    torch.manual_seed(seed)
    net = UNet(1, 8, mults, 1, (), 2, 4)
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)  # a non-zero field, so every layer gets gradient
    return net


def images(b: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, size, size, generator=g) * 2 - 1, torch.rand(b, 1, size, size, generator=g) * 2 - 1


def grads_and_peak(net: UNet, method: BiDPM, batch: Batch) -> tuple[float, list[torch.Tensor], float]:
    """(loss, gradients, peak CPU bytes allocated during forward + backward, from the profiler records)."""
    net.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = method.loss(net, batch)
        out.total.backward()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage  # + allocated, - freed inside this op (not its children)
        peak = max(peak, cur)
    return float(out.total.detach()), [p.grad.clone() for p in net.parameters()], float(peak)


def test_unroll_checkpointing_same_gradients_lower_peak_memory():
    net = tiny_unet()
    method = BiDPM([0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 0.5, 0.5, 0.5, 1.0], l2, no_mmd)  # N = 4
    batch = Batch.fully_paired(*images(4, 32, 1))
    loss_plain, g_plain, peak_plain = grads_and_peak(net, method, batch)
    runtime.set_checkpointing(net, True)
    loss_ck, g_ck, peak_ck = grads_and_peak(net, method, batch)
    runtime.set_checkpointing(net, False)
    assert loss_ck == loss_plain
    for a, b in zip(g_plain, g_ck):
        assert torch.equal(a, b)  # recomputation repeats the same fp32 kernels: exact
    # plain keeps every evaluation's activations for 2N = 8 evaluations; checkpointed keeps the states only
    assert peak_ck < 0.5 * peak_plain, (peak_plain, peak_ck)


def test_checkpointing_is_a_noop_without_autograd_and_rejects_fields_without_it():
    net = runtime.set_checkpointing(tiny_unet(), True)
    x, _ = images(2, 16, 2)
    with torch.no_grad():
        ref = copy.deepcopy(net).requires_grad_(False)
        ref.checkpoint_evaluations = False
        assert torch.equal(net(x, 0.3), ref(x, 0.3))
    with pytest.raises(ValueError, match="train.checkpoint_unroll"):
        runtime.set_checkpointing(torch.nn.Linear(2, 2), True)


def test_resolve_means_on_for_cuda_only():
    assert runtime.resolve(None, "cpu") is False and runtime.resolve(None, "cuda") is True
    assert runtime.resolve(True, "cpu") is True and runtime.resolve(False, "cuda") is False


def test_fused_adam_same_update_as_default():
    a, b = tiny_unet(), tiny_unet()
    method = BiDPM([0.0, 1.0], [1.0, 1.0], l2, no_mmd)
    batch = Batch.fully_paired(*images(2, 16, 3))
    opts = [runtime.make_adam(a.parameters(), 1e-3, fused=False), runtime.make_adam(b.parameters(), 1e-3, fused=True)]
    for _ in range(2):
        for net, opt in zip((a, b), opts):
            opt.zero_grad()
            method.loss(net, batch).total.backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_ema_multi_tensor_update_matches_numpy():
    net = tiny_unet()
    ema = EMA(net, decay=0.9)
    theta_ema = {k: v.detach().numpy().astype(np.float64) for k, v in ema.module.named_parameters()}
    for step in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ema.update(net)
        for k, v in net.named_parameters():
            theta_ema[k] = 0.9 * theta_ema[k] + 0.1 * v.detach().numpy().astype(np.float64)
    for k, v in ema.module.named_parameters():
        np.testing.assert_allclose(v.numpy(), theta_ema[k], rtol=1e-5, atol=1e-6)


def test_loss_components_stay_on_the_device_until_asked():
    method = BiDPM([0.0, 0.5, 1.0], [1.0, 0.5, 1.0], l2, no_mmd)
    x, z = images(4, 16, 4)
    out = method.loss(tiny_unet(), Batch.paired_first(x, z, 2))
    assert isinstance(out.logged["loss/total"], torch.Tensor)  # no .item() inside the step
    assert out.components["loss/total"] == pytest.approx(float(out.total.detach()))
    assert out.components["batch/paired_frac"] == 0.5


def test_batch_row_indices_agree_with_the_mask():
    x, z = images(5, 8, 5)
    flags = torch.tensor([True, False, True, False, False])
    b = Batch(x, z, flags)
    assert b.n_paired == 2 and b.paired_index.tolist() == [0, 2] and b.unpaired_index.tolist() == [1, 3, 4]
    first = Batch.paired_first(x, z, 3)
    assert first.paired.tolist() == [True, True, True, False, False] and first.unpaired_index.tolist() == [3, 4]
    moved = first.to("cpu", memory_format=torch.channels_last)
    assert moved.source.is_contiguous(memory_format=torch.channels_last) and moved.n_paired == 3


@pytest.mark.slow
def test_compiled_field_matches_eager_and_its_checkpoints_load_both_ways(tmp_path):
    """inductor on CPU (the first compile of a process takes ~30-100 s on 2 cores: kernels are built with gcc)."""
    cfg = load_config(None, ["data.image_size=[16,16]", "model.base_channels=8", "model.channel_mults=[1]",
                             "model.groups=4", "method.paired_distance=l2", "method.time_grid=[0,1]"])
    torch.manual_seed(0)
    eager = build_velocity_field(cfg.model, (16, 16))
    torch.nn.init.normal_(eager.conv_out.weight, std=0.05)
    fast = copy.deepcopy(eager)
    runtime.to_channels_last(fast)
    compiled = runtime.compile_field(fast)
    method = build_method(cfg.method)
    batch = Batch.fully_paired(*images(2, 16, 6))
    losses, grads = [], []
    for net, b in ((eager, batch), (compiled, batch.to("cpu", memory_format=torch.channels_last))):
        net.zero_grad(set_to_none=True)
        out = method.loss(net, b)
        out.total.backward()
        losses.append(float(out.total.detach()))
        grads.append([p.grad.clone() for p in unwrap_model(net).parameters()])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(b.contiguous(), a, rtol=1e-4, atol=1e-6)

    # a checkpoint of the compiled model: plain keys, loads into an eager model and back
    ema = EMA(compiled, decay=0.5)
    opt = runtime.make_adam(compiled.parameters(), 1e-3, fused=False)
    save_checkpoint(tmp_path, model=compiled, ema=ema, optimizer=opt, step=1, epoch=1, cfg=cfg, manifest_digest="d")
    state = load_checkpoint(tmp_path)
    assert not any("_orig_mod" in k for k in (*state["model"], *state["ema"]["module"]))
    fresh = build_velocity_field(cfg.model, (16, 16))
    fresh.load_state_dict(state["model"])
    x = batch.source
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, 0.0), eager(x, 0.0), rtol=1e-4, atol=1e-6)
        for p in fresh.parameters():                     # ... and an eager checkpoint of other weights into it
            p.add_(0.02 * torch.randn_like(p))
    unwrap_model(compiled).load_state_dict(fresh.state_dict())
    # the same call as above (shapes, grad mode), so the compiled graph is reused (a second compile costs ~30 s)
    want = method.loss(fresh, batch).total
    got = method.loss(compiled, batch.to("cpu", memory_format=torch.channels_last)).total
    assert float(got) == pytest.approx(float(want), rel=1e-5) and abs(float(want) - losses[0]) > 1e-4
