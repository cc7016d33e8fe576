"""The driver side of training: Ray Train configs from ``cfg.train``, datasets from the shards, ``fit()``.

Ray 2.60 runs Train V2 by default; everything here is its recommended API (``ray.train.ScalingConfig``,
``RunConfig``, ``FailureConfig``, ``CheckpointConfig``, ``ray.train.torch.TorchTrainer``,
``DataConfig(datasets_to_split=...)``) with no deprecated argument.

Choices:
- CPU per worker is ``train.cpus_per_worker`` (default 0.5): whole CPUs for 2 workers on a 2-core
  machine leave Ray Data none to read the shards, and the run hangs.
- Datasets are materialised in the object store once per ``fit()`` (``train.materialize_datasets``),
  because Ray Data otherwise re-runs the Parquet read every epoch. ``run_training(datasets=...)``
  accepts a dict from ``build_datasets`` so Tune trials can share one read.
- Only the epoch-defining train stream is split across workers (equal shards -> equal step counts,
  which DDP needs). The cycled paired / unpaired-target streams and ``val`` go whole to each worker
  (see batches.py); ``val`` is evaluated on rank 0 only (loop.py).
- Resume: the same run name and storage path continue the run: Train V2 finds the run's checkpoint
  snapshot there and ``ray.train.get_checkpoint()`` returns the latest checkpoint in every worker.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import ray.data
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from bidpm.config import Config
from bidpm.io import storage
from bidpm.data.manifest import load_manifest, manifest_digest
from bidpm.data.readers import read_split
from bidpm.data.shards import prepare_shards
from bidpm.objective import Objective
from bidpm.train.batches import ALL_PAIRED, PAIRED, UNPAIRED, UNPAIRED_TARGETS, VAL, split_sizes
from bidpm.train.loop import train_loop_per_worker

STEP_COLUMNS = ["source", "target"]  # what a training step reads (data.TRAIN_COLUMNS is the wider convertible set)
VAL_COLUMNS = ["source", "target", "mask"]


def build_scaling_config(cfg: Config) -> ScalingConfig:
    """Workers and what each reserves: ``cpus_per_worker`` CPU (+ ``gpus_per_worker`` GPU when ``use_gpu``)
    plus any custom resource of ``train.resources_per_worker``. The worker group's placement group asks
    for exactly this, so on an autoscaling cluster it is also what makes the autoscaler add a node type
    that offers it (``{GPU: 1}`` on GPU nodes, a custom slot on the fake nodes of the tests)."""
    tc = cfg.train
    return ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=tc.worker_resources())


def build_run_config(
    cfg: Config, *, name: Optional[str] = None, storage_path: Optional[str] = None, callbacks: Iterable[Any] = ()
) -> RunConfig:
    """Run name + storage (local folder or object-store URI), failure recovery, checkpoint retention."""
    tc = cfg.train
    keep = Objective.of_checkpoints(cfg)          # which checkpoints retention keeps: the same "best" as everywhere
    return RunConfig(
        name=name or tc.run_name,
        storage_path=storage_path or cfg.storage_path,
        failure_config=FailureConfig(max_failures=tc.max_failures, controller_failure_limit=tc.controller_failure_limit),
        checkpoint_config=CheckpointConfig(
            num_to_keep=tc.checkpoint_keep,
            checkpoint_score_attribute=keep.metric,
            checkpoint_score_order=keep.mode,
        ),
        callbacks=list(callbacks) or None,
    )


def build_datasets(cfg: Config) -> dict[str, ray.data.Dataset]:
    """The datasets one ``fit()`` streams, by name (see batches.py), materialised when configured.

    ``data.pairing_ratio == 1`` (or no unpaired rows): ``{"train", "val"}``; below 1:
    ``{"train_unpaired", "train_paired", "train_unpaired_targets", "val"}``, the targets stream with its
    own block order (and, in the workers, its own shuffle seeds): under ``data.pairing_unit=subject`` the
    rows of the unpaired subjects that give targets, under ``slice`` the unpaired rows again.
    """
    tc = cfg.train

    def prepared(split: str, columns: list[str], paired: Optional[bool] = None, side: Optional[str] = None) -> ray.data.Dataset:
        ds = read_split(cfg, split, paired, side=side, columns=columns)  # no string column: iter_torch_batches needs tensors
        return ds.materialize() if tc.materialize_datasets else ds

    out: dict[str, ray.data.Dataset] = {VAL: prepared("val", VAL_COLUMNS)}
    by_subject = cfg.data.pairing_unit == "subject"
    roles = train_roles(cfg) if by_subject else {}
    if cfg.data.pairing_ratio >= 1.0 or (by_subject and roles["source"] + roles["target"] == 0):
        out[ALL_PAIRED] = prepared("train", STEP_COLUMNS)
        return out
    split_sizes(tc.batch_size)  # mixed batches need >= 2 rows: fail before any reading
    if by_subject and min(roles.values()) == 0:
        raise ValueError(
            f"data.pairing_ratio={cfg.data.pairing_ratio} (data.pairing_unit=subject): the training subjects split into "
            f"{roles['paired']} paired, {roles['source']} giving sources and {roles['target']} giving targets; unpaired "
            f"training needs at least one of each: use more training subjects, another ratio, or data.pairing_unit=slice")
    paired = prepared("train", STEP_COLUMNS, paired=True)
    unpaired = prepared("train", STEP_COLUMNS, paired=False, side="source" if by_subject else None)
    if tc.materialize_datasets and not by_subject:
        n_p, n_u = paired.count(), unpaired.count()
        if n_p == 0:
            raise ValueError(
                f"data.pairing_ratio={cfg.data.pairing_ratio}: no train row is paired at this ratio "
                f"({n_u} unpaired rows); raise data.pairing_ratio or change data.pairing_seed"
            )
        if n_u == 0:  # every row happened to be drawn paired: train as fully paired
            out[ALL_PAIRED] = paired
            return out
    out[UNPAIRED] = unpaired
    out[PAIRED] = paired
    targets = prepared("train", STEP_COLUMNS, paired=False, side="target") if by_subject else unpaired
    out[UNPAIRED_TARGETS] = targets.randomize_block_order(seed=tc.seed + 1)
    return out


def train_roles(cfg: Config) -> dict[str, int]:
    """Training subjects per role under the subject unit (``bidpm.data.pairing.subject_roles``), from the manifest."""
    from collections import Counter

    from bidpm.data.pairing import subject_roles
    from bidpm.data.readers import split_entries

    roles = subject_roles([e["subject"] for e in split_entries(cfg, "train")], cfg.data.pairing_seed, cfg.data.pairing_ratio)
    counts = Counter(roles.values())
    return {r: counts.get(r, 0) for r in ("paired", "source", "target")}


def run_training(
    cfg: Config,
    *,
    callbacks: Iterable[Any] = (),
    resume: bool = True,
    name: Optional[str] = None,
    storage_path: Optional[str] = None,
    datasets: Optional[Mapping[str, ray.data.Dataset]] = None,
) -> Result:
    """Train ``cfg`` with Ray Train and return the ``Result`` (metrics, latest + best checkpoints, path).

    callbacks: extra ``RunConfig`` callbacks (Tune passes ``TuneReportCallback``).
    resume: True continues ``<storage_path>/<name>`` from its latest checkpoint when it exists;
        False starts over, deleting that run folder first (local storage only).
    name, storage_path: override ``train.run_name`` / ``train.storage_path`` (one run per Tune trial).
    datasets: a ``build_datasets(cfg)`` dict to reuse (same data section); when None the shards are
        ensured first (``prepare_shards``: idempotent, builds them on first use) and read here.
    Needs a connected Ray (``ray.init``).
    """
    cfg = cfg.model_copy(deep=True)
    cfg.train.run_name = name or cfg.train.run_name
    if storage_path is not None:
        cfg.train.storage_path = storage_path
    run_dir = _local_run_dir(cfg.storage_path, cfg.train.run_name)
    if not resume and run_dir is not None and run_dir.exists():
        shutil.rmtree(run_dir)

    if datasets is None:
        prepare_shards(cfg)
    digest = manifest_digest(load_manifest(cfg))
    datasets = dict(datasets) if datasets is not None else build_datasets(cfg)
    check_steps(cfg, datasets)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "manifest_digest": digest},
        scaling_config=build_scaling_config(cfg),
        run_config=build_run_config(cfg, callbacks=callbacks),
        datasets=datasets,
        dataset_config=build_data_config(datasets, cfg.train.num_workers),
    )
    return trainer.fit()


def build_data_config(datasets: Mapping[str, ray.data.Dataset], num_workers: int) -> DataConfig:
    """Split only the epoch-defining train stream, and only across several workers; explicit
    ``ExecutionOptions`` for every stream.

    One worker reads the whole stream as it is: a split would start a ``SplitCoordinator`` actor (a process
    of its own, seconds on every run's critical path) to hand out the same rows. Explicit options because
    ``DataConfig.default_ingest_options()`` copies the deprecated ``exclude_resources`` field (a
    RayDeprecationWarning in Ray 2.60); Ray Data's defaults otherwise.
    """
    split = [n for n in (ALL_PAIRED, UNPAIRED) if n in datasets] if num_workers > 1 else []
    return DataConfig(datasets_to_split=split, execution_options=ExecutionOptions())


def checked_datasets(cfg: Config) -> dict[str, ray.data.Dataset]:
    """``build_datasets`` + the step-count check, once in the driver before any MLflow run or trial: every
    run would fail on them. Their ValueErrors (no paired row at this ratio, too few rows per worker for
    one step) are the user's to fix, so they come out as ``ConfigError`` (one line, exit 2)."""
    from bidpm.config import ConfigError

    try:
        datasets = build_datasets(cfg)
        check_steps(cfg, datasets)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
    return datasets


def check_steps(cfg: Config, datasets: Mapping[str, ray.data.Dataset]) -> None:
    """Fail on the driver when a worker's share of the epoch stream would not fill one batch (0 steps)."""
    tc = cfg.train
    name = ALL_PAIRED if ALL_PAIRED in datasets else UNPAIRED
    rows_per_batch = tc.batch_size if name == ALL_PAIRED else split_sizes(tc.batch_size)[1]
    if not tc.materialize_datasets:
        return  # counting would read the shards once more
    per_worker = datasets[name].count() // tc.num_workers
    if per_worker < rows_per_batch * tc.grad_accum:
        raise ValueError(
            f"train split: {datasets[name].count()} rows in {name!r} over train.num_workers={tc.num_workers} "
            f"give {per_worker} per worker, fewer than one optimizer step needs ({rows_per_batch} x "
            f"train.grad_accum={tc.grad_accum}); lower train.batch_size / num_workers or add data"
        )


def _local_run_dir(storage_path: str, name: str) -> Optional[Path]:
    return None if storage.is_uri(storage_path) else Path(storage_path) / name


def best_checkpoint(result: Result, cfg: Config) -> Optional[Any]:
    """The kept checkpoint that is best by ``train.checkpoint_score`` (``Objective``), else the latest."""
    objective = Objective.of_checkpoints(cfg)
    best = objective.best(result.best_checkpoints or [], key=lambda cm: cm[1].get(objective.metric))
    return best[0] if best is not None else result.checkpoint
