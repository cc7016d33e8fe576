"""A Bi-DPM / RF training step and a volume synthesis against what the hardware can do (issue 12).

Side by side, in one run: eager fp32, eager bf16, compiled bf16 and compiled bf16 with unroll
checkpointing, for RF and Bi-DPM N=1, 2, 4 (each a fresh model from the same seed): ms/step, images/s,
FLOPs per step (``torch.utils.flop_counter``: the network and the loss's LPIPS, forward + backward,
without the recomputation checkpointing adds), achieved TFLOP/s and its share of the matrix rate this
script measures itself (bf16 on CUDA, fp32 on CPU), peak memory; then volume synthesis (155 slices,
Bi-DPM N=1 grid, inference mode) in slices/s against its FLOP floor, and the host side of the data path
per batch (collate, pinned copy) against the step.

"eager" rows run the field as it was before issue 12 (no compile, NCHW, foreach Adam); "compiled" rows
use what ``train:`` switches on for the device by default (``torch.compile``; on CUDA also channels_last
and fused Adam; ``bidpm.model.runtime``). Both use the multi-tensor EMA and the host-sync-free step.
bf16 rows autocast on CPU too (``runtime.autocast``, as the platform does on any device).

Needs only the package's core (torch, pydantic, PyYAML, nibabel; lpips for the paper's distance): no Ray,
no MLflow, so it runs on a bare GPU machine.

    # paper size on one GPU (configs/brats_t1t2.yaml model, 192 px, batch 16):
    python benchmarks/gpu_step.py --device cuda
    # without the VGG weights in TORCH_HOME: same FLOPs with a random LPIPS backbone, or L2
    python benchmarks/gpu_step.py --device cuda --set method.lpips_random_backbone=true
    # small CPU check (what tests/unit/test_gpu_step_benchmark.py runs, with fewer cases):
    python benchmarks/gpu_step.py --device cpu --small
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.config import load_config  # noqa: E402
from bidpm.method import Batch, build_method, uniform_grid  # noqa: E402
from bidpm.method.solver import euler_integrate  # noqa: E402
from bidpm.model import EMA, build_velocity_field  # noqa: E402
from bidpm.model import runtime  # noqa: E402
from bidpm.train.step import apply_gradients  # noqa: E402

CASES = {"rf": ("rf", 1), "bidpm1": ("bidpm", 1), "bidpm2": ("bidpm", 2), "bidpm4": ("bidpm", 4)}
VARIANTS = {  # name -> (compiled, precision, checkpoint_unroll)
    "eager-fp32": (False, "fp32", False),
    "eager-bf16": (False, "bf16", False),
    "compiled-bf16": (True, "bf16", False),
    "compiled-bf16-ckpt": (True, "bf16", True),
}
SMALL = ["data.image_size=[32,32]", "model.base_channels=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
         "model.attention_levels=[1]", "model.groups=4", "method.paired_distance=l2"]


@dataclass
class Row:
    case: str
    variant: str
    ms_per_step: float = float("nan")
    images_per_s: float = float("nan")
    gflop_per_step: float = float("nan")
    tflops: float = float("nan")
    share: float = float("nan")
    peak_mb: float = float("nan")
    estimated_mb: float = float("nan")  # bidpm.plan.memory's estimate for the same step, without running it
    note: str = ""


@dataclass
class Report:
    device: str
    matrix_tflops: float
    matrix_dtype: str
    rows: list[Row] = field(default_factory=list)
    synthesis: dict[str, Any] = field(default_factory=dict)
    data_path: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    image: str = ""  # H x W of the timed steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matrix_rate(device: torch.device) -> tuple[float, str]:
    """Measured dense matmul rate (TFLOP/s): bf16 8192^3 on CUDA, fp32 1024^3 on CPU (best of 5)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n ** 3 / best / 1e12, str(dtype).replace("torch.", "")


def cpu_peak_bytes(fn: Callable[[], None]) -> float:
    """Peak bytes allocated while ``fn`` runs, from the torch profiler's allocation records (CPU has no
    allocator statistics): each op's own allocations and frees, in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return float(peak)


def case_config(args: argparse.Namespace, case: str) -> Any:
    name, n = CASES[case]
    grid = uniform_grid(n)
    over = [f"method.name={name}", f"method.time_grid={grid}", "method.step_weights=null"]
    if args.small:
        over = SMALL + over
    if args.size:
        over.append(f"data.image_size=[{args.size},{args.size}]")
    return load_config(args.config, over + list(args.set))


def batch_for(cfg: Any, b: int, device: torch.device, channels_last: bool) -> Batch:
    h, w = cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    x, z = (torch.rand(b, 1, h, w, generator=g) * 2 - 1 for _ in range(2))
    fmt = torch.channels_last if channels_last else torch.preserve_format
    return Batch.fully_paired(x, z).to(device, memory_format=fmt)


def step_flops(cfg: Any, b: int, device: torch.device) -> float:
    """FLOPs of one training step's forward + backward (eager, fp32, no checkpointing)."""
    torch.manual_seed(0)
    net = build_velocity_field(cfg.model, tuple(cfg.data.image_size)).to(device)
    method = build_method(cfg.method).to(device)
    batch = batch_for(cfg, b, device, False)
    with FlopCounterMode(display=False) as fc:
        method.loss(net, batch).total.backward()
    return float(fc.get_total_flops())


def time_step(args: argparse.Namespace, cfg: Any, variant: str, device: torch.device) -> tuple[float, float, str]:
    """(seconds per step, peak MB, note) for one training step as the Ray Train worker runs it."""
    compiled, precision, ckpt = VARIANTS[variant]
    torch.manual_seed(0)
    net = build_velocity_field(cfg.model, tuple(cfg.data.image_size))
    ema = EMA(net, cfg.train.ema_decay)
    channels_last = compiled and runtime.resolve(None, device)
    if channels_last:
        runtime.to_channels_last(net)
        runtime.to_channels_last(ema.module)
    runtime.set_checkpointing(net, ckpt)
    net.to(device)
    ema.to(device)
    model = runtime.compile_field(net, backend=args.compile_backend) if compiled else net
    opt = runtime.make_adam(net.parameters(), cfg.train.lr, fused=compiled and runtime.resolve(None, device))
    scaler = runtime.grad_scaler(precision, device)
    method = build_method(cfg.method).to(device)
    batch = batch_for(cfg, args.batch, device, channels_last)
    amp = runtime.autocast(precision, device)

    def one() -> None:
        with amp:
            out = method.loss(model, batch)
        scaler.scale(out.total).backward()
        apply_gradients(model, opt, scaler, ema, cfg.train.grad_clip)

    for _ in range(args.warmup):  # compilation happens here
        one()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        one()
        sync(device)
        times.append(time.perf_counter() - t)
    notes: list[str] = []
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    elif compiled:  # the profiler's per-op records do not cover compiled regions: no CPU figure
        peak = float("nan")
        notes.append("peak memory: CUDA only when compiled")
    else:
        peak = cpu_peak_bytes(one) / 2**20
    note = "; ".join(notes)
    return float(np.median(times)), peak, note


def time_synthesis(args: argparse.Namespace, cfg: Any, device: torch.device, rate: float) -> dict[str, Any]:
    """155-slice volume, Bi-DPM N=1 grid, inference: compiled (evaluation defaults) vs eager."""
    torch.manual_seed(0)
    h, w = cfg.data.image_size
    vol = torch.rand(args.slices, 1, h, w) * 2 - 1
    grid = [0.0, 1.0]
    out: dict[str, Any] = {"slices": args.slices, "batch": args.synth_batch}
    net0 = build_velocity_field(cfg.model, (h, w)).to(device).eval().requires_grad_(False)
    probe = vol[: args.synth_batch].to(device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        euler_integrate(net0, probe, grid, "forward")
    flops = fc.get_total_flops() / probe.shape[0] * args.slices
    out["gflop"] = flops / 1e9
    out["floor_s"] = flops / (rate * 1e12)
    for label, compiled in (("eager bf16", False), ("compiled bf16", True)):
        net = runtime.inference_field(build_velocity_field(cfg.model, (h, w)).to(device).eval().requires_grad_(False),
                                      device, compile=compiled, channels_last=None, backend=args.compile_backend)
        amp = runtime.autocast("bf16", device)

        def run() -> None:
            with torch.inference_mode(), amp:
                for s in range(0, args.slices, args.synth_batch):
                    euler_integrate(net, vol[s:s + args.synth_batch].to(device, non_blocking=True), grid, "forward").float().cpu()

        run()  # warm-up (compiles, also for the last, smaller batch)
        sync(device)
        best = float("inf")
        for _ in range(max(args.steps // 2, 1)):
            t = time.perf_counter()
            run()
            sync(device)
            best = min(best, time.perf_counter() - t)
        out[label] = {"s": best, "slices_per_s": args.slices / best, "x_floor": best / out["floor_s"]}
    return out


def time_data_path(args: argparse.Namespace, cfg: Any, device: torch.device) -> dict[str, Any]:
    """The host side of a batch without Ray: rows as Parquet gives them (float16 numpy), stacked into a
    float32 tensor, pinned and copied to the device asynchronously (what Ray Data's fetch thread does)."""
    h, w = cfg.data.image_size
    rows = [np.random.default_rng(i).random((h * w,), dtype=np.float32).astype(np.float16) for i in range(args.batch * 2)]
    pin = device.type == "cuda"

    def one() -> None:
        x = torch.from_numpy(np.stack(rows[: args.batch])).float().reshape(args.batch, 1, h, w)
        z = torch.from_numpy(np.stack(rows[args.batch:])).float().reshape(args.batch, 1, h, w)
        if pin:
            x, z = x.pin_memory(), z.pin_memory()
        Batch.fully_paired(x, z).to(device, non_blocking=True)
        sync(device)

    for _ in range(3):
        one()
    t = time.perf_counter()
    n = 20
    for _ in range(n):
        one()
    return {"ms_per_batch": 1e3 * (time.perf_counter() - t) / n, "pinned": pin}


def main(argv: Optional[list[str]] = None) -> Report:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/brats_t1t2.yaml", help="model/method/train settings (default: the paper's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    p.add_argument("--small", action="store_true", help="tiny model at 32 px with L2 (the CPU check)")
    p.add_argument("--size", type=int, default=None, help="image side in px (default: the config's data.image_size)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 16 on CUDA, 4 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (median; default 10 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles here)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"],
                   help="torch.compile backend of the compiled rows (aot_eager: no code generation, quick checks)")
    p.add_argument("--slices", type=int, default=155, help="slices of the synthesised volume")
    p.add_argument("--synth-batch", type=int, default=None, help="slices per synthesis batch (default 64 CUDA, 16 CPU)")
    p.add_argument("--no-synthesis", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here (temporary name, then renamed)")
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    args.batch = args.batch or (16 if cuda else 4)
    args.steps = args.steps or (10 if cuda else 3)
    args.synth_batch = args.synth_batch or (64 if cuda else 16)
    cases = [c for c in args.cases.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    for c in cases:
        if c not in CASES:
            p.error(f"--cases: unknown {c!r}; choose from {list(CASES)}")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown {v!r}; choose from {list(VARIANTS)}")
    if cuda:  # what a training worker sets by default (train.matmul_precision/cudnn_benchmark: TF32, autotuning)
        runtime.set_backends(None, None, device)
        torch.backends.cudnn.allow_tf32 = True  # torch's default, kept explicit

    rate, dtype = matrix_rate(device)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    rep = Report(where, rate, dtype, command="python benchmarks/gpu_step.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    print(f"{where}: measured {dtype} matrix rate {rate:.2f} TFLOP/s", flush=True)
    cfg = None
    for case in cases:
        cfg = case_config(args, case)
        flops = step_flops(cfg, args.batch, device)
        rep.image = "x".join(str(v) for v in cfg.data.image_size)
        for variant in variants:
            row = Row(case, variant, gflop_per_step=flops / 1e9, estimated_mb=estimated_mb(cfg, variant, args.batch, device))
            try:
                s, peak, row.note = time_step(args, cfg, variant, device)
            except torch.OutOfMemoryError:
                row.note = "out of memory"
                torch.cuda.empty_cache()
            else:
                row.ms_per_step, row.images_per_s, row.peak_mb = 1e3 * s, args.batch / s, peak
                row.tflops = flops / s / 1e12
                row.share = row.tflops / rate
            rep.rows.append(row)
            print(f"  {case:7s} {variant:19s} {row.ms_per_step:9.1f} ms/step {row.images_per_s:8.1f} img/s "
                  f"{row.peak_mb:9.0f} MB {row.note}", flush=True)
    if cfg is not None:
        cfg1 = case_config(args, "bidpm1")
        if not args.no_synthesis:
            rep.synthesis = time_synthesis(args, cfg1, device, rate)
        rep.data_path = time_data_path(args, cfg1, device)
    print_report(rep, args)
    if args.json:
        tmp = Path(args.json).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(rep), indent=2))
        os.replace(tmp, args.json)
    return rep


def estimated_mb(cfg: Any, variant: str, batch: int, device: torch.device) -> float:
    """The memory planner's figure for this row (``bidpm.plan``; compile is estimated as eager)."""
    from bidpm.config import with_overrides
    from bidpm.plan.memory import estimate_step_memory

    _, precision, ckpt = VARIANTS[variant]
    over = {"train.precision": precision, "train.checkpoint_unroll": ckpt, "train.batch_size": batch, "train.num_workers": 1}
    return estimate_step_memory(with_overrides(cfg, over), device.type).peak / 2 ** 20


def print_report(rep: Report, args: argparse.Namespace) -> None:
    print()
    print(f"Training step, batch {args.batch}, image {rep.image} px, median of {args.steps} steps after {args.warmup} warm-up; "
          f"{rep.device}; share = achieved / measured {rep.matrix_dtype} matrix rate ({rep.matrix_tflops:.2f} TFLOP/s)")
    print(f"| case | variant | ms/step | images/s | GFLOP/step | achieved TFLOP/s | share | peak memory MB | estimated MB | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rep.rows:
        print(f"| {r.case} | {r.variant} | {r.ms_per_step:.1f} | {r.images_per_s:.1f} | {r.gflop_per_step:.1f} | "
              f"{r.tflops:.3f} | {100 * r.share:.1f}% | {r.peak_mb:.0f} | {r.estimated_mb:.0f} | {r.note} |")
    base = {r.case: r for r in rep.rows if r.variant == "eager-bf16"}
    best = {}
    for r in rep.rows:
        if r.variant.startswith("compiled") and np.isfinite(r.ms_per_step):
            if r.case not in best or r.ms_per_step < best[r.case].ms_per_step:
                best[r.case] = r
    for case, r in best.items():
        if case in base and np.isfinite(base[case].ms_per_step):
            print(f"{case}: {r.variant} is {base[case].ms_per_step / r.ms_per_step:.2f}x eager-bf16")
    s = rep.synthesis
    if s:
        print()
        print(f"Volume synthesis, {s['slices']} slices, Bi-DPM N=1, batch {s['batch']}: FLOP floor {1e3 * s['floor_s']:.1f} ms "
              f"({s['gflop']:.1f} GFLOP at the measured rate)")
        for label in ("eager bf16", "compiled bf16"):
            if label in s:
                v = s[label]
                print(f"  {label:14s} {1e3 * v['s']:9.1f} ms  {v['slices_per_s']:8.1f} slices/s  {v['x_floor']:6.1f}x the floor")
    d = rep.data_path
    if d:
        step = next((r.ms_per_step for r in rep.rows if r.case == "bidpm1" and r.variant.startswith("compiled")
                     and np.isfinite(r.ms_per_step)), float("nan"))
        share = f", {100 * d['ms_per_batch'] / step:.1f}% of a compiled Bi-DPM N=1 step" if np.isfinite(step) else ""
        print(f"Data path per batch without Ray (collate{' + pinned async copy' if d['pinned'] else ''}): "
              f"{d['ms_per_batch']:.2f} ms{share} (runs in Ray Data's fetch thread, overlapped with the step)")
    print()
    print(f"rerun: {rep.command}")


if __name__ == "__main__":
    main()
