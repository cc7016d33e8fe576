"""THE scorer: a model on batches of (source, target, mask), both directions, any list of grids."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from ..method.solver import DIRECTIONS, Direction
from ..metrics.image import image_metrics
from ..metrics.ms_ssim import MS_SSIM_MIN_SIZE, ms_ssim
from ..model import runtime
from .scale import SCALES, to_scale
from .scores import METRICS, SHORT, Evaluation, GridScores, GridSpec
from .volumes import VolumeScorer


class Sampler(Protocol):
    """What can be scored: synthesis of a batch in a direction on a time grid (``TrainedModel``,
    ``FieldSampler``; a one-step generator such as CycleGAN's ignores the grid)."""

    def sample(self, x: Tensor, direction: Direction, grid: Sequence[float]) -> Tensor: ...


class FieldSampler:
    """A bare velocity field as a ``Sampler``: explicit Euler steps (``method.solver``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net

    def sample(self, x: Tensor, direction: Direction, grid: Sequence[float]) -> Tensor:
        from ..method.solver import euler_integrate

        return euler_integrate(self.net, x, grid, direction)


def _field(batch: Any, name: str) -> Any:
    return batch[name] if isinstance(batch, Mapping) else getattr(batch, name)


def _images(a: Any, device: torch.device) -> Tensor:
    """numpy or torch, (B,H,W) or (B,1,H,W) -> float32 (B,1,H,W) on ``device``."""
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a)
    t = t.unsqueeze(1) if t.dim() == 3 else t
    return t.to(device=device, dtype=torch.float32)


def evaluate(
    model: Sampler,
    batches: Iterable[Any],
    grids: Sequence[GridSpec],
    *,
    split: str,
    scale: str = "unit",
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    max_batches: Optional[int] = None,
    keep_examples: int = 0,
    volumes: Optional[VolumeScorer] = None,
) -> Evaluation:
    """Score ``model`` on ``batches`` (each with ``source``, ``target``, ``mask``; optionally
    ``subject``/``slice``; attributes or mapping keys) in both directions on every grid.

    ``model`` must already sit on ``device``; batches are moved there one at a time. The network runs
    under ``torch.inference_mode`` and autocast at ``precision`` (any device); metrics run in float32.
    ``volumes``: also put each subject's slices back into volumes and score them in 3-D on the main
    (training) grid (``evaluation.volumes``; batches must then carry ``subject``/``slice``).
    Raises ValueError when no batch arrives (an empty split).
    """
    if not grids:
        raise ValueError("evaluate: give at least one grid (e.g. grids_for([1], training_grid))")
    device = torch.device(device)
    acc = {spec: {d: {m: [] for m in METRICS} for d in SHORT.values()} for spec in grids}
    ids: list[tuple[str, int]] = []
    timed: list[tuple[float, int]] = []      # (ms, slices) of the main grid's synthesis, per batch
    shown: list[list[Tensor]] = [[], [], [], []]
    autocast = runtime.autocast(precision, device)
    main = next((g for g in grids if g.training_grid), grids[0])
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        src, tgt = _images(_field(batch, "source"), device), _images(_field(batch, "target"), device)
        mask = _images(_field(batch, "mask"), device)
        subjects = _optional(batch, "subject")
        slices = _optional(batch, "slice")
        batch_ids = ([(str(s), int(k)) for s, k in zip(subjects, np.asarray(slices).tolist())]
                     if subjects is not None and slices is not None else [])
        ids += batch_ids
        if volumes is not None and not batch_ids:
            raise ValueError("evaluate(volumes=...): batches need subject and slice ids (data.readers.iter_split)")
        for n, spec in enumerate(acc):
            t0 = _now(device) if spec == main else 0.0
            with torch.inference_mode(), autocast:
                fakes = {d: model.sample(src if d == "forward" else tgt, d, list(spec.grid)).float() for d in DIRECTIONS}
            if spec == main:
                timed.append(((_now(device) - t0) * 1e3, 2 * src.shape[0]))
            scaled = {}
            for d, fake in fakes.items():
                pred, rng = to_scale(fake, scale)
                ref, _ = to_scale(tgt if d == "forward" else src, scale)
                values = image_metrics(pred, ref, data_range=rng, mask=mask)
                if min(pred.shape[-2:]) >= MS_SSIM_MIN_SIZE:              # config.metrics.SIZED_METRICS
                    values["ms_ssim"] = ms_ssim(pred, ref, data_range=rng, mask=mask)
                for m, v in values.items():
                    acc[spec][SHORT[d]].setdefault(m, []).append(v.double().cpu().numpy())
                scaled[SHORT[d]] = (pred[:, 0].cpu().numpy(), ref[:, 0].cpu().numpy())
            if volumes is not None and spec == main:
                volumes.add(batch_ids, scaled, mask[:, 0].cpu().numpy())
            if n == 0 and keep_examples > 0:
                room = max(keep_examples - sum(t.shape[0] for t in shown[0]), 0)
                for keep, t in zip(shown, (src, fakes["forward"], tgt, fakes["backward"])):
                    keep.append(t[:room].cpu())
    scores = [GridScores(spec, {d: {m: np.concatenate(v) if v else np.zeros(0) for m, v in per.items()}
                                for d, per in dirs.items()}) for spec, dirs in acc.items()]
    if scores[0].values["fwd"]["ssim"].size == 0:
        raise ValueError(f"the {split} split gave no images to score; raise data.split.{split}_fraction (or list "
                         f"data.split.{split}_subjects) and rerun jobs/prepare_data.py")
    examples = tuple(torch.cat(k) for k in shown) if keep_examples > 0 else None
    out = Evaluation(split, scale, scores, ids, examples)  # type: ignore[arg-type]
    out.synthesis_ms_per_slice = synthesis_ms(timed)
    if volumes is not None:
        volumes.finish()
        out.volumes, out.volume_subjects, out.volumes_skipped = volumes.result(), volumes.subjects, volumes.skipped
    return out


def _now(device: torch.device) -> float:
    """A clock reading after the device's queued work is done (CUDA runs asynchronously)."""
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def synthesis_ms(timed: Sequence[tuple[float, int]]) -> Optional[float]:
    """Milliseconds of synthesis per slice (one direction, the main grid: all its Euler steps) over the
    batches; the first batch is left out when there are more (warm-up: cuDNN autotuning, allocator
    growth, lazy kernels). Network time only: metrics and data transfer are not in it."""
    use = list(timed[1:] if len(timed) > 1 else timed)
    slices = sum(k for _, k in use)
    return sum(ms for ms, _ in use) / slices if slices else None


def _optional(batch: Any, name: str) -> Any:
    if isinstance(batch, Mapping):
        return batch.get(name)
    return getattr(batch, name, None)


def evaluate_split(model: Sampler, cfg: Any, split: str, grids: Optional[Sequence[GridSpec]] = None, *,
                   device: Optional[str | torch.device] = None, batch_size: Optional[int] = None,
                   max_rows: Optional[int] = None, volumes: bool = False, keep_examples: int = 0) -> Evaluation:
    """``evaluate`` on a split of ``cfg``'s shards, read without Ray (``data.readers.iter_split``), with
    the scale, batch size, cap and precision of ``cfg.evaluation`` (precision None = ``train.precision``).
    ``grids`` None: the model's own training grid only (``model.grid``, else ``cfg.method.time_grid``).
    ``model`` must sit on ``device`` (default: the model's own). ``volumes``: also 3-D per-volume metrics
    (and SynthRAD's in HU where a direction produces CT: a modality in ``data.ct_modalities``)."""
    from ..data.readers import iter_split

    ev = cfg.evaluation
    own = getattr(model, "grid", None) or cfg.method.time_grid
    grids = list(grids) if grids is not None else [GridSpec("training grid", tuple(own), True)]
    bs = batch_size or ev.batch_size
    if max_rows is None and ev.max_batches is not None:
        max_rows = ev.max_batches * bs
    dev = device if device is not None else getattr(model, "device", "cpu")
    vol = None
    if volumes:
        src, tgt = cfg.data.modalities
        ct = cfg.data.ct_modalities
        a, b, rng = SCALES[ev.scale]
        vol = VolumeScorer(rng, "fwd" if tgt in ct else ("bwd" if src in ct else None), cfg.data.ct_window, (a, b))
    return evaluate(model, iter_split(cfg, split, bs, max_rows), grids, split=split, scale=ev.scale, device=dev,
                    precision=ev.precision or cfg.train.precision, keep_examples=keep_examples, volumes=vol)
