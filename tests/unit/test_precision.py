"""Mixed precision on CPU (issue 24): ``train``/``evaluation.precision`` autocast on any device, so the bf16
and fp16 branches of training, gradient scaling, checkpoints, evaluation, synthesis, MMD and SSIM run here.

Tolerances were measured on this 2-core VM (torch 2.14.1) with a perturbed tiny UNet on phantom slices,
grid [0, 0.5, 1]: bf16 vs fp32 evaluation moved per-image SSIM by at most 0.0072 (mean 0.0005), PSNR by
0.07 dB, MAE by 0.001; fp16 by at most 0.003 SSIM. The bounds below leave about 3x (per image) and 10x
(mean) of room: bf16 keeps 8 mantissa bits, so ~0.4% relative error per network evaluation is expected.
(After 40 training steps the same comparison gave 0.0038 per image, 0.0004 mean: no worse when trained.)
fp16 runs about 20x slower than bf16 on this CPU (no native fp16 kernels), so its cases stay small.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bidpm.config import load_config
from bidpm.data.phantom import phantom_subject
from bidpm.evaluation import FieldSampler, GridSpec, evaluate
from bidpm.losses import mmd as mmd_module
from bidpm.method import Batch, build_method
from bidpm.metrics import image as image_module
from bidpm.model import EMA, build_velocity_field, runtime
from bidpm.synthesis import synthesize_slices
from bidpm.train.checkpoint import load_checkpoint, restore_state, save_checkpoint
from bidpm.train.step import apply_gradients

TINY = ["model.base_channels=8", "model.channel_mults=[1,2]", "model.groups=4", "model.attention_levels=[]",
        "method.paired_distance=l2", "method.time_grid=[0,0.5,1]"]
SSIM_PER_IMAGE, SSIM_MEAN, PSNR_DB, MAE = 0.02, 0.005, 0.5, 0.005


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on 2 shared cores, two threads against another process's load ran 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def perturbed_net(size: int, seed: int = 0):
    """A tiny UNet off its zero-initialised output (a fresh one outputs exactly 0), in eval mode."""
    cfg = load_config(None, TINY + [f"data.image_size=[{size},{size}]"])
    torch.manual_seed(seed)
    net = build_velocity_field(cfg.model, (size, size))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, net.eval()


def phantom_slices(n_slices: int = 12, size: int = 32):
    """One phantom subject's T1/T2 transverse slices in [-1, 1] and its mask, each (n, 1, size, size)."""
    s = phantom_subject(0, 0, (size, size, n_slices), "brain", ["t1", "t2"])

    def scaled(v: np.ndarray) -> torch.Tensor:
        v = 2 * (v - v.min()) / (v.max() - v.min()) - 1
        return torch.as_tensor(np.moveaxis(v, 2, 0), dtype=torch.float32)[:, None]

    return scaled(s["t1"]), scaled(s["t2"]), torch.as_tensor(np.moveaxis(s["mask"], 2, 0), dtype=torch.float32)[:, None]


def test_autocast_runs_the_asked_dtype_on_cpu():
    conv, x = torch.nn.Conv2d(1, 2, 3), torch.randn(1, 1, 8, 8)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with runtime.autocast(precision, "cpu"):
            assert torch.is_autocast_enabled("cpu") and conv(x).dtype == dtype
    with runtime.autocast("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu") and conv(x).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        runtime.autocast("int8", "cpu")


def test_grad_scaler_is_fp16_only_and_runs_on_cpu():
    assert runtime.grad_scaler("fp16", "cpu").is_enabled()
    for p in ("fp32", "bf16"):
        s = runtime.grad_scaler(p, "cpu")
        assert not s.is_enabled() and s.state_dict() == {}


def _fp16_setup(seed: int = 0):
    cfg = load_config(None, TINY + ["data.image_size=[16,16]", "train.precision=fp16"])
    torch.manual_seed(seed)
    model = build_velocity_field(cfg.model, (16, 16))
    ema = EMA(model, decay=0.5)
    return cfg, model, ema, torch.optim.Adam(model.parameters(), lr=1e-3), runtime.grad_scaler("fp16", "cpu")


def _fp16_step(model, ema, opt, scaler, method, x_0, x_1, poison: bool = False) -> torch.Tensor:
    """One training step as the loop runs it (autocast, scaled backward, apply_gradients); ``poison``
    puts an inf into one gradient, as an fp16 overflow would."""
    with runtime.autocast("fp16", "cpu"):
        out = method.loss(model, Batch.fully_paired(x_0, x_1))
    scaler.scale(out.total).backward()
    if poison:
        next(model.parameters()).grad.view(-1)[0] = float("inf")
    apply_gradients(model, opt, scaler, ema, grad_clip=1.0)
    return out.total.detach()


def test_fp16_training_scales_skips_an_overflow_and_resumes_its_scale_from_a_checkpoint(tmp_path):
    cfg, model, ema, opt, scaler = _fp16_setup()
    method = build_method(cfg.method)
    g = torch.Generator().manual_seed(1)
    x_0, x_1 = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1, torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
    before = [p.detach().clone() for p in model.parameters()]
    loss = _fp16_step(model, ema, opt, scaler, method, x_0, x_1)
    assert torch.isfinite(loss) and scaler.get_scale() == 2.0 ** 16
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))   # a real step
    stepped = [p.detach().clone() for p in model.parameters()]
    _fp16_step(model, ema, opt, scaler, method, x_0, x_1, poison=True)
    assert all(torch.equal(a, b) for a, b in zip(stepped, model.parameters()))       # skipped ...
    assert scaler.get_scale() == 2.0 ** 15                                           # ... and backed off
    _fp16_step(model, ema, opt, scaler, method, x_0, x_1)

    save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=2, epoch=1, cfg=cfg, manifest_digest="d",
                    scaler=scaler)
    state = load_checkpoint(tmp_path)
    assert state["scaler"] == scaler.state_dict() and state["scaler"]["scale"] == 2.0 ** 15
    assert state["scaler"]["_growth_tracker"] == 1

    # the loop's resume: fresh objects, then restore_state (and the optimizer state, as the loop loads it)
    _, model2, ema2, opt2, scaler2 = _fp16_setup(seed=7)
    opt_state, step, epoch = restore_state(state, model2, ema2, scaler2)
    opt2.load_state_dict(opt_state)
    assert (step, epoch) == (2, 1) and scaler2.state_dict() == scaler.state_dict()
    # the next step is the same step (same scale, same weights, same Adam moments)
    _fp16_step(model, ema, opt, scaler, method, x_0, x_1)
    _fp16_step(model2, ema2, opt2, scaler2, method, x_0, x_1)
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert scaler2.state_dict() == scaler.state_dict()

    # bf16/fp32 checkpoints carry no scaler state; restoring one leaves a scaler as built
    save_checkpoint(tmp_path / "bf16", model=model, ema=ema, optimizer=opt, step=3, epoch=2, cfg=cfg, manifest_digest="d",
                    scaler=runtime.grad_scaler("bf16", "cpu"))
    state = load_checkpoint(tmp_path / "bf16")
    assert state["scaler"] is None
    fresh = runtime.grad_scaler("fp16", "cpu")
    restore_state(state, model2, ema2, fresh)
    assert fresh.get_scale() == 2.0 ** 16


def test_set_backends_leaves_cpu_alone_and_turns_tf32_and_autotuning_on_for_cuda():
    old = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    try:
        torch.set_float32_matmul_precision("highest")
        assert runtime.set_backends(None, None, "cpu") == {"matmul_precision": "highest", "cudnn_benchmark": False}
        assert runtime.set_backends(None, None, "cuda") == {"matmul_precision": "high", "cudnn_benchmark": True}
        assert torch.backends.cuda.matmul.allow_tf32
        assert runtime.set_backends("highest", False, "cuda") == {"matmul_precision": "highest", "cudnn_benchmark": False}
        assert runtime.set_backends("medium", True, "cpu") == {"matmul_precision": "medium", "cudnn_benchmark": True}
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.cudnn.benchmark = old[1]


def test_config_defaults_keep_fp32_and_resolve_backends_per_device():
    cfg = load_config(None, [])
    assert (cfg.train.precision, cfg.train.matmul_precision, cfg.train.cudnn_benchmark) == ("fp32", None, None)
    cfg = load_config(None, ["train.matmul_precision=high", "train.cudnn_benchmark=false", "evaluation.precision=bf16"])
    assert (cfg.train.matmul_precision, cfg.train.cudnn_benchmark, cfg.evaluation.precision) == ("high", False, "bf16")
    with pytest.raises(Exception, match="matmul_precision"):
        load_config(None, ["train.matmul_precision=low"])


def test_mmd_stays_float64_with_autocast_off_inside_a_bf16_region(monkeypatch):
    seen = []
    real = mmd_module.kernel_matrix

    def spy(r2, kernel, bandwidths):
        out = real(r2, kernel, bandwidths)
        seen.append((r2.dtype, out.dtype, torch.is_autocast_enabled("cpu")))
        return out

    monkeypatch.setattr(mmd_module, "kernel_matrix", spy)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    x, y = torch.randn(6, 1, 8, 8), torch.randn(5, 1, 8, 8) + 0.5
    with runtime.autocast("bf16", "cpu"):
        fx, fy = conv(x), conv(y)                      # what a network hands the loss under autocast: bf16
        assert fx.dtype == torch.bfloat16
        a = fx.flatten(1).float()
        assert (a @ a.T).dtype == torch.bfloat16       # the region is live: a bare fp32 Gram matrix would drop to bf16
        for kernel in ("rbf", "imq", "laplacian"):
            inside = mmd_module.mmd2(fx, fy, kernel=kernel)
            assert inside.dtype == torch.float32       # at least float32, whatever the inputs
            torch.testing.assert_close(inside, mmd_module.mmd2(fx.float(), fy.float(), kernel=kernel), rtol=0, atol=0)
    assert len(seen) == 6 and all(s == (torch.float64, torch.float64, False) for s in seen)


def test_ssim_and_metrics_stay_float32_with_autocast_off_inside_a_bf16_region(monkeypatch):
    seen = []
    real = image_module._filter_valid

    def spy(x, g):
        out = real(x, g)
        seen.append((out.dtype, torch.is_autocast_enabled("cpu")))
        return out

    monkeypatch.setattr(image_module, "_filter_valid", spy)
    src, tgt, mask = phantom_slices(4, 24)
    pred = (0.9 * tgt + 0.1 * src).clamp(-1, 1)
    plain = image_module.image_metrics(pred, tgt, mask=mask)
    n_plain = len(seen)
    with runtime.autocast("bf16", "cpu"):
        auto = image_module.image_metrics(pred, tgt, mask=mask)
        auto_bf16 = image_module.image_metrics(pred.bfloat16(), tgt.bfloat16(), mask=mask)
    assert all(s == (torch.float32, False) for s in seen) and len(seen) == 3 * n_plain
    for k in plain:
        assert auto[k].dtype == auto_bf16[k].dtype == torch.float32
        torch.testing.assert_close(auto[k], plain[k], rtol=0, atol=0)   # autocast changed nothing inside


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_evaluation_agrees_with_fp32(precision):
    _, net = perturbed_net(32)
    src, tgt, mask = phantom_slices(12, 32)
    batches = [{"source": src[i:i + 6], "target": tgt[i:i + 6], "mask": mask[i:i + 6]} for i in (0, 6)]
    grid = GridSpec("training grid", (0.0, 0.5, 1.0), True)
    ref = evaluate(FieldSampler(net), batches, [grid], split="val", precision="fp32")
    low = evaluate(FieldSampler(net), batches, [grid], split="val", precision=precision)
    for d in ("fwd", "bwd"):
        a, b = ref.main.values[d], low.main.values[d]
        ok = ~np.isnan(a["ssim"])
        assert ok.sum() >= 8
        assert not np.array_equal(a["ssim"][ok], b["ssim"][ok])           # autocast really ran on CPU
        assert np.abs(a["ssim"] - b["ssim"])[ok].max() < SSIM_PER_IMAGE
        assert abs(np.nanmean(a["ssim"]) - np.nanmean(b["ssim"])) < SSIM_MEAN
        assert np.abs(a["psnr"] - b["psnr"])[ok].max() < PSNR_DB
        assert np.abs(a["mae"] - b["mae"])[ok].max() < MAE
        assert b["ssim"].dtype == np.float64


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_synthesis_of_a_stack_is_float32_and_close_to_fp32(precision):
    _, net = perturbed_net(32)
    src, _, _ = phantom_slices(12, 32)
    ref = synthesize_slices(net, src, "forward", [0.0, 0.5, 1.0], batch_size=5)
    low = synthesize_slices(net, src, "forward", [0.0, 0.5, 1.0], batch_size=5, precision=precision)
    assert low.dtype == ref.dtype == torch.float32 and low.shape == src.shape
    assert not torch.equal(low, ref)                                         # not silently fp32
    err = (low - ref).abs()  # measured: bf16 max 0.034, mean 0.0031; fp16 max 0.0064, mean 0.0005
    assert err.max() < 0.1 and err.mean() < 0.01
