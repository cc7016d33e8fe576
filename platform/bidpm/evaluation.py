"""THE scorer: a model on batches of (source, target, mask), both directions, any list of time grids.

Every caller uses it - training validation (``train/loop``), registry promotion (``tracking.registry``),
``jobs/evaluate.py`` and the ablation/study jobs - so one checkpoint on one split gets one set of
numbers, under one key schema:

    <split>/fwd_<m>_mean, <split>/fwd_<m>_std, <split>/bwd_<m>_mean, <split>/bwd_<m>_std   m in ssim, psnr, mae
    <split>/<m>_mean   the mean of the two directions' means (what Tune and promotion optimise)
    <split>/images     how many images were scored

Forward (``fwd``) = source -> target synthesis X^f_1, compared with the real target; backward (``bwd``)
= target -> source X^b_0, compared with the real source (paper Algorithm 2). Metrics are taken inside
the slice mask. Per-image values are kept (``GridScores.values``), with the rows' (subject, slice) ids,
so studies can compute spreads, paired tests and bootstrap intervals.

Value scale (``evaluation.scale``, see ``bidpm.config.evaluation``): images are mapped from the training
scale [-1, 1] before scoring - ``unit``: x -> (x + 1) / 2, data range 1; ``native``: unchanged, data
range 2. ``scale_note`` names the convention for every table and run.

Imports torch and numpy only (no Ray, no MLflow).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from .metrics.image import image_metrics
from .method.solver import DIRECTIONS, Direction, check_grid, uniform_grid

METRICS = ("ssim", "psnr", "mae")
SHORT = {"forward": "fwd", "backward": "bwd"}
SCALES = {"unit": (0.5, 0.5, 1.0), "native": (1.0, 0.0, 2.0)}  # x' = a x + b, data range of x'

__all__ = ["Evaluation", "GridScores", "GridSpec", "METRICS", "Sampler", "evaluate", "grids_for", "scale_note",
           "summary_keys", "to_scale"]


class Sampler(Protocol):
    """What can be scored: synthesis of a batch in a direction on a time grid (``TrainedModel``,
    ``FieldSampler``; a one-step generator such as CycleGAN's ignores the grid)."""

    def sample(self, x: Tensor, direction: Direction, grid: Sequence[float]) -> Tensor: ...


class FieldSampler:
    """A bare velocity field as a ``Sampler``: explicit Euler steps (``method.solver``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net

    def sample(self, x: Tensor, direction: Direction, grid: Sequence[float]) -> Tensor:
        from .method.solver import euler_integrate

        return euler_integrate(self.net, x, grid, direction)


def to_scale(x: Tensor, scale: str) -> tuple[Tensor, float]:
    """[-1, 1] images -> the reporting scale; returns (images, data range)."""
    if scale not in SCALES:
        raise ValueError(f"evaluation.scale: {scale!r}; use 'unit' ([0, 1], data range 1) or 'native' ([-1, 1], range 2)")
    a, b, rng = SCALES[scale]
    return (x * a + b if (a, b) != (1.0, 0.0) else x), rng


def scale_note(scale: str) -> str:
    """One line naming the value convention, for tables, reports and MLflow run tags."""
    if scale == "unit":
        return "SSIM/PSNR/MAE inside the mask on images mapped to [0, 1], data range 1 (evaluation.scale=unit)"
    return "SSIM/PSNR/MAE inside the mask on the training scale [-1, 1], data range 2 (evaluation.scale=native)"


@dataclass(frozen=True)
class GridSpec:
    """A time grid to score on; ``training_grid`` marks the model's own."""

    label: str
    grid: tuple[float, ...]
    training_grid: bool = False

    @property
    def steps(self) -> int:
        return len(self.grid) - 1


def grids_for(steps: Sequence[int], training_grid: Sequence[float]) -> list[GridSpec]:
    """Uniform grids for each N in ``steps`` plus the training grid (merged into its uniform twin when equal)."""
    train = tuple(check_grid(training_grid, "training grid"))
    specs, found = [], False
    for n in steps:
        g = tuple(uniform_grid(n))
        same = len(g) == len(train) and all(abs(a - b) < 1e-9 for a, b in zip(g, train))
        found = found or same
        specs.append(GridSpec(f"uniform N={n}" + (" (training grid)" if same else ""), g, same))
    if not found:
        specs.append(GridSpec(f"training grid {list(train)}", train, True))
    return specs


@dataclass
class GridScores:
    """Per-image values on one grid: ``values["fwd"]["ssim"]`` is an (N,) float64 array (NaN: empty mask)."""

    spec: GridSpec
    values: dict[str, dict[str, np.ndarray]]

    def summary(self, prefix: str) -> dict[str, float]:
        """The key schema of the module docstring, NaN images skipped, population std."""
        out: dict[str, float] = {}
        for d in SHORT.values():
            for m in METRICS:
                v = self.values[d][m]
                v = v[~np.isnan(v)]
                out[f"{prefix}/{d}_{m}_mean"] = float(v.mean()) if v.size else float("nan")
                out[f"{prefix}/{d}_{m}_std"] = float(v.std()) if v.size else float("nan")
        for m in METRICS:
            out[f"{prefix}/{m}_mean"] = 0.5 * (out[f"{prefix}/fwd_{m}_mean"] + out[f"{prefix}/bwd_{m}_mean"])
        out[f"{prefix}/images"] = float(len(self.values["fwd"]["ssim"]))
        return out


@dataclass
class Evaluation:
    """Scores of one model on one split, per grid, with the row ids and a few examples for a sample grid."""

    split: str
    scale: str
    grids: list[GridScores]
    ids: list[tuple[str, int]] = field(default_factory=list)
    examples: Optional[tuple[Tensor, Tensor, Tensor, Tensor]] = None  # source, fwd, target, bwd (first grid)

    @property
    def main(self) -> GridScores:
        """The training grid's scores (or the only / first grid's)."""
        return next((g for g in self.grids if g.spec.training_grid), self.grids[0])

    def summary(self, grid: Optional[GridScores] = None) -> dict[str, float]:
        return (grid or self.main).summary(self.split)


def summary_keys(split: str) -> list[str]:
    """Every key ``GridScores.summary`` produces (for checks of tune.metric / promote_metric names)."""
    return ([f"{split}/{d}_{m}_{s}" for d in SHORT.values() for m in METRICS for s in ("mean", "std")]
            + [f"{split}/{m}_mean" for m in METRICS] + [f"{split}/images"])


def _field(batch: Any, name: str) -> Any:
    return batch[name] if isinstance(batch, Mapping) else getattr(batch, name)


def _images(a: Any, device: torch.device) -> Tensor:
    """numpy or torch, (B,H,W) or (B,1,H,W) -> float32 (B,1,H,W) on ``device``."""
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a)
    t = t.unsqueeze(1) if t.dim() == 3 else t
    return t.to(device=device, dtype=torch.float32)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


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
) -> Evaluation:
    """Score ``model`` on ``batches`` (each with ``source``, ``target``, ``mask``; optionally
    ``subject``/``slice``; attributes or mapping keys) in both directions on every grid.

    ``model`` must already sit on ``device``; batches are moved there one at a time. The network runs
    under ``torch.inference_mode`` and, on CUDA, autocast at ``precision``; metrics run in float32.
    Raises ValueError when no batch arrives (an empty split).
    """
    if not grids:
        raise ValueError("evaluate: give at least one grid (e.g. grids_for([1], training_grid))")
    device = torch.device(device)
    acc = {spec: {d: {m: [] for m in METRICS} for d in SHORT.values()} for spec in grids}
    ids: list[tuple[str, int]] = []
    shown: list[list[Tensor]] = [[], [], [], []]
    autocast = _autocast(precision, device)
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        src, tgt = _images(_field(batch, "source"), device), _images(_field(batch, "target"), device)
        mask = _images(_field(batch, "mask"), device)
        subjects = _optional(batch, "subject")
        slices = _optional(batch, "slice")
        if subjects is not None and slices is not None:
            ids += [(str(s), int(k)) for s, k in zip(subjects, np.asarray(slices).tolist())]
        for n, spec in enumerate(acc):
            with torch.inference_mode(), autocast:
                fakes = {d: model.sample(src if d == "forward" else tgt, d, list(spec.grid)).float() for d in DIRECTIONS}
            for d, fake in fakes.items():
                real = tgt if d == "forward" else src
                pred, rng = to_scale(fake, scale)
                ref, _ = to_scale(real, scale)
                for m, v in image_metrics(pred, ref, data_range=rng, mask=mask).items():
                    acc[spec][SHORT[d]][m].append(v.double().cpu().numpy())
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
    return Evaluation(split, scale, scores, ids, examples)  # type: ignore[arg-type]


def _optional(batch: Any, name: str) -> Any:
    if isinstance(batch, Mapping):
        return batch.get(name)
    return getattr(batch, name, None)


def evaluate_split(model: Sampler, cfg: Any, split: str, grids: Optional[Sequence[GridSpec]] = None, *,
                   device: Optional[str | torch.device] = None, batch_size: Optional[int] = None,
                   keep_examples: int = 0) -> Evaluation:
    """``evaluate`` on a split of ``cfg``'s shards, read without Ray (``data.readers.iter_split``), with
    the scale, batch size, cap and precision of ``cfg.evaluation`` (precision None = ``train.precision``).
    ``grids`` None: the model's own training grid only (``model.grid``, else ``cfg.method.time_grid``).
    ``model`` must sit on ``device`` (default: the model's own)."""
    from .data.readers import iter_split

    ev = cfg.evaluation
    own = getattr(model, "grid", None) or cfg.method.time_grid
    grids = list(grids) if grids is not None else [GridSpec("training grid", tuple(own), True)]
    bs = batch_size or ev.batch_size
    max_rows = None if ev.max_batches is None else ev.max_batches * bs
    dev = device if device is not None else getattr(model, "device", "cpu")
    return evaluate(model, iter_split(cfg, split, bs, max_rows), grids, split=split, scale=ev.scale, device=dev,
                    precision=ev.precision or cfg.train.precision, keep_examples=keep_examples)
