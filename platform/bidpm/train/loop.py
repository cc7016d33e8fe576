"""``train_loop_per_worker``: what every Ray Train worker runs, top to bottom.

1. config, rank, device; seed so every rank builds the same initial u_theta
2. model, EMA (paper 3.2), Adam (paper: lr 1e-4 constant, no schedule), method objective
3. resume from ``ray.train.get_checkpoint()`` (same run name, or a worker-group restart after a failure):
   weights, EMA, optimizer, GradScaler, step and finished epochs come back; finished epochs are not redone
4. speed switches (``model.runtime``; on CUDA by default): channels_last, activation checkpointing of
   the unroll, torch.compile once per worker (the EMA copy compiled too, for validation), fused Adam;
   then DDP via ``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU: Ray picks from ``use_gpu``)
5. per epoch: stream this worker's shard (batches.py), autocast (any device), gradient accumulation (an
   epoch's leftover micro-batches make one last, smaller step) and clipping, EMA update after each
   optimizer step. Nothing in a step reads a value back from the device: loss components are summed on
   the device and fetched once, when the epoch reports
6. per epoch: report the averaged loss components and throughput; rank 0 also validates the EMA
   weights on the whole val split in both directions on the method's own time grid, writes a
   checkpoint + sample grid and passes it to ``ray.train.report`` (uploaded in the background by default:
   upload.py) with its node's system metrics (system.py); other ranks report metrics only

Validation runs on rank 0 over the *whole* val split (the val dataset is not split across workers):
the numbers do not depend on the worker count, and Tune reads rank 0's metrics anyway.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

import ray.train
import ray.train.torch
from bidpm.config import Config, config_from_dict
from bidpm.config.metrics import SYNTHESIS_KEY
from bidpm.method import Batch, build_method
from bidpm.method.base import to_floats
from bidpm.evaluation import Evaluation, FieldSampler, GridSpec, evaluate
from bidpm.io.checkpoints import EPOCH_END_KEY, EPOCH_FOLDER, write_epoch_metrics
from bidpm.model import EMA, build_velocity_field
from bidpm.model import runtime
from bidpm.train.batches import ALL_PAIRED, PAIRED, UNPAIRED, UNPAIRED_TARGETS, VAL, worker_batches
from bidpm.train.checkpoint import check_resumable, load_checkpoint, restore_state, save_checkpoint
from bidpm.train.samples import save_sample_grid
from bidpm.train.system import system_sampler
from bidpm.train.upload import checkpoint_folder, remove_leftovers, upload_options, worker_owner
from bidpm.train.step import apply_gradients, average_partial_group, flag_last

def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"cfg": Config.to_dict(), "manifest_digest": str}."""
    # 1. config, rank, device, seeds ---------------------------------------------------------------
    cfg = config_from_dict(config["cfg"], origin="train_loop_config")
    manifest_digest = config["manifest_digest"]
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if tc.torch_threads is not None:
        torch.set_num_threads(tc.torch_threads)
    image_size = (cfg.data.image_size[0], cfg.data.image_size[1])
    torch.manual_seed(tc.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)

    # 2. model, EMA, method ------------------------------------------------------------------------
    model = build_velocity_field(cfg.model, image_size)
    ema = EMA(model, decay=tc.ema_decay, warmup=tc.ema_warmup)
    method = build_method(cfg.method).to(device)
    runtime.set_backends(tc.matmul_precision, tc.cudnn_benchmark, device)  # TF32, cuDNN autotuning: CUDA
    autocast = runtime.autocast(tc.precision, device)  # any device: CPU runs bf16/fp16 too
    scaler = runtime.grad_scaler(tc.precision, device)  # fp16 only; its state is in every checkpoint

    # 3. resume ------------------------------------------------------------------------------------
    step, done_epochs, opt_state = 0, 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        check_resumable(state, cfg, manifest_digest)
        opt_state, step, done_epochs = restore_state(state, model, ema, scaler)
    resumed_from_step = step
    owner = worker_owner(ctx)             # names this run's local checkpoint folders
    if rank == 0:
        remove_leftovers(owner)          # a failed upload's or a killed attempt's (train/upload.py)

    # 4. speed switches, DDP, optimizer (built on the prepared model's parameters) ----------------
    channels_last = runtime.resolve(tc.channels_last, device)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    if channels_last:
        runtime.to_channels_last(model)
        runtime.to_channels_last(ema.module)
    runtime.set_checkpointing(model, tc.checkpoint_unroll)
    if runtime.resolve(tc.compile, device):  # compiled once here, not per epoch; state dicts unwrap it
        model = runtime.compile_field(model, tc.compile_mode, tc.compile_backend)
    model = ray.train.torch.prepare_model(model)
    ema.to(device)
    val_net = ema.module
    if runtime.resolve(cfg.evaluation.compile, device):
        val_net = runtime.compile_field(ema.module, cfg.evaluation.compile_mode, cfg.evaluation.compile_backend)  # follows ema.module's weights
    optimizer = runtime.make_adam(model.parameters(), tc.lr, fused=runtime.resolve(tc.fused_adam, device))
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    train_names = [n for n in (ALL_PAIRED, UNPAIRED, PAIRED, UNPAIRED_TARGETS) if _has_dataset(n)]
    sampler = system_sampler(cfg, rank)  # rank 0: MLflow's system monitors on this node (train/system.py)

    # 5. epochs ------------------------------------------------------------------------------------
    for epoch in range(done_epochs + 1, tc.epochs + 1):
        _seed_worker(tc.seed, epoch, rank)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, Any] = defaultdict(float)  # device tensors (or floats), fetched at the report
        steps_this_epoch, n_micro, images, t_start = 0, 0, 0, time.perf_counter()
        waits: list[float] = []  # seconds waited for each batch (data stalls)
        batches = _timed(worker_batches(
            {n: ray.train.get_dataset_shard(n) for n in train_names},
            batch_size=tc.batch_size, image_size=image_size, seed=tc.seed, epoch=epoch, rank=rank,
            shuffle_buffer_rows=tc.shuffle_buffer_rows, prefetch_batches=tc.prefetch_batches,
            pin_memory=runtime.resolve(tc.pin_memory, device),
        ), waits)
        for micro, (batch, epoch_end) in enumerate(flag_last(batches)):
            batch = batch.to(device, non_blocking=True, memory_format=memory_format)  # Ray already moved it
            in_group = micro % tc.grad_accum + 1  # micro-batches in this optimizer step so far
            last_micro = in_group == tc.grad_accum or epoch_end  # an epoch's leftover micro-batches step too
            sync = contextlib.nullcontext() if last_micro or world == 1 else model.no_sync()
            with sync:
                with autocast:
                    out = method.loss(model, batch)
                scaler.scale(out.total / tc.grad_accum).backward()
            for k, v in out.logged.items():
                sums[k] = sums[k] + v  # stays on the device: no host sync inside the step
            sums["loss"] = sums["loss"] + out.logged["loss/total"]
            images += batch.source.shape[0]
            n_micro += 1
            if not last_micro:
                continue
            _maybe_inject_fault(cfg, rank, step + 1, resumed_from_step)
            if in_group < tc.grad_accum:
                average_partial_group(model.parameters(), tc.grad_accum, in_group)
            apply_gradients(model, optimizer, scaler, ema, tc.grad_clip)
            step += 1
            steps_this_epoch += 1
            if tc.max_steps_per_epoch is not None and steps_this_epoch >= tc.max_steps_per_epoch:
                break
        seconds = time.perf_counter() - t_start

        # 6. report (+ validation, checkpoint and sample grid on rank 0) ---------------------------
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "resumed_from_step": resumed_from_step,
            "train/steps": steps_this_epoch,
            "train/epoch_time_s": seconds,
            # data stalls: the first batch carries the per-epoch start of the streaming pipeline (Ray
            # Data re-executes it each epoch), later waits are the steady-state input stall
            "train/first_batch_s": waits[0] if waits else 0.0,
            "train/data_wait_s": sum(waits),
            "train/step_time_s": (seconds - (waits[0] if waits else 0.0)) / max(steps_this_epoch, 1),
            # equal shards: every worker streams as many rows, so world x local rate = global rate
            "train/images_per_s": world * images / max(seconds, 1e-9),
            "train/peak_mem_mb": peak_memory_mb(device),
            "train/params": sum(p.numel() for p in model.parameters()),
            **{f"train/{k}": v / max(n_micro, 1) for k, v in to_floats(sums).items()},  # one transfer
        }
        if rank != 0:
            ray.train.report(metrics)
            continue
        with checkpoint_folder(tc.checkpoint_upload, owner) as tmp:  # async: Ray deletes it once uploaded (train/upload.py)
            val_rows = ray.train.get_dataset_shard(VAL).iter_torch_batches(batch_size=tc.batch_size, dtypes=torch.float32)
            scores = validate(val_net, cfg, val_rows, device)
            metrics.update(scores.summary())
            if scores.synthesis_ms_per_slice is not None:
                metrics[SYNTHESIS_KEY] = scores.synthesis_ms_per_slice   # a search's cost objective, on this device
            shown = scores.examples
            save_checkpoint(tmp, model=model, ema=ema, optimizer=optimizer, step=step, epoch=epoch, cfg=cfg,
                            manifest_digest=manifest_digest, scaler=scaler)
            save_sample_grid(tmp, *shown, modalities=tuple(cfg.data.modalities))
            metrics.update(sampler.take() if sampler else {})
            metrics[EPOCH_END_KEY] = int(time.time() * 1000)
            write_epoch_metrics(tmp, metrics, metrics[EPOCH_END_KEY])     # what a killed driver's MLflow run lacks
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"{EPOCH_FOLDER}{epoch:04d}", **upload_options(tc.checkpoint_upload))
    if sampler:
        sampler.close()


def validate(ema_model: nn.Module, cfg: Config, rows: Iterable[Any], device: torch.device) -> Evaluation:
    """EMA weights on the val split, both directions, on ``method.time_grid`` (its own step count):
    THE evaluation (``bidpm.evaluation``) on the batches ``rows`` yields, at most ``train.val_batches``
    of them, keeping ``train.sample_grid_rows`` examples for the sample grid.

    ``evaluation.summary()`` gives ``val/fwd_ssim_mean`` ... ``val/ssim_mean`` (the mean of the two
    directions, what Tune optimises) and ``val/images``, on the ``evaluation.scale`` value scale.
    """
    tc = cfg.train
    grid = GridSpec("training grid", tuple(cfg.method.time_grid), True)
    return evaluate(FieldSampler(ema_model), rows, [grid], split="val", scale=cfg.evaluation.scale, device=device,
                    precision=tc.precision, max_batches=tc.val_batches, keep_examples=tc.sample_grid_rows)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this worker so far: CUDA's max allocated on GPU, else the process's peak RSS
    (``ru_maxrss``, which includes torch's own libraries: compare runs, not absolute sizes)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(batches: Iterable[Batch], waits: list[float]) -> Iterator[Batch]:
    """Yield ``batches``, appending to ``waits`` the seconds spent waiting for each one."""
    it = iter(batches)
    while True:
        t = time.perf_counter()
        batch = next(it, None)
        waits.append(time.perf_counter() - t)
        if batch is None:
            return
        yield batch


def _seed_worker(seed: int, epoch: int, rank: int) -> None:
    """Per (seed, epoch, rank) RNG state: ranks differ, reruns and resumed runs repeat each epoch."""
    s = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)


def _has_dataset(name: str) -> bool:
    try:
        return ray.train.get_dataset_shard(name) is not None
    except KeyError:
        return False


def _maybe_inject_fault(cfg: Config, rank: int, next_step: int, resumed_from_step: int) -> None:
    """TESTS ONLY (``train.fail_at_step``): hard-kill this worker, as a lost node would.

    It first waits until the controller has committed every checkpoint reported so far (the controller
    polls workers every ~2 s; a worker dying right after ``report`` could otherwise take its last
    checkpoint with it), so a test knows exactly which checkpoint the recovery starts from.
    """
    fault = cfg.train.fail_at_step
    if fault is not None and resumed_from_step == 0 and fault.rank == rank and fault.step == next_step:
        ray.train.get_all_reported_checkpoints(timeout_s=120)
        print(f"[bidpm test hook] train.fail_at_step: rank {rank} exits before step {next_step}", flush=True)
        os._exit(1)
