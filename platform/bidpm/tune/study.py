"""Run a study: every cell (method x pairing ratio x seed x training fraction) one Ray Tune trial that
runs one Ray Train run (``run_training``) and scores its best checkpoint on the test split (THE
evaluation, ``bidpm.evaluation``), so cells run in parallel across the cluster.

- One set of shards for the whole study: pairing and training fractions are decided at read time.
- Resources: each cell's Train workers ask for ``train.*``; the trial itself ``tune.trial_cpus``; the
  scoring task the resources of one Train worker (a GPU on a GPU cluster). ``study.max_concurrent_trials``
  unset: as many cells as the cluster's CPUs / GPUs fit now (set it on an autoscaling cluster, where
  the nodes a study will get are not there yet).
- Resume: the same command restores the Tune experiment (``Tuner.restore``): finished cells are kept,
  interrupted ones continue from their Train checkpoints. A cell's scores are written to
  ``cells/<id>.json`` (atomically) before it reports; a cell whose file exists is never retrained. A
  study folder made for another spec (``cells.spec_digest``) is refused.
- Tracking: one MLflow parent run (role ``study-grid``), a child run per cell (``StudyCellCallback``);
  every exit ends them (``launch.end_runs``; the report step in ``commands.study``), a stall stops the
  study (``watchdog``), and Ctrl+C is not mistaken for failed cells to retry.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ray import tune
from ray.tune import RunConfig, TuneConfig, Tuner

from .. import tracking
from ..config import Config, ConfigError, config_from_dict
from ..data import storage
from .callback import JOURNAL_FILE, MLflowTrialCallback, replay_journal
from .launch import StudyInterrupted, end_runs, interrupted, watchdog_for
from .progress import CellProgress
from .watchdog import check_fits
from .cells import Cell, cell_config, cell_grids, check_cells, expand_cells, fid_wanted, spec_digest

SPEC_FILE, CELLS_DIR = "study_spec.json", "cells"


def study_dir(cfg: Config) -> str:
    return cfg.storage_path.rstrip("/") + "/" + cfg.study.name


def _cells_by_id(cfg: Config) -> dict[str, Cell]:
    return {c.id: c for c in expand_cells(cfg)}


def score_cell(checkpoint_path: str, cfg_dict: dict[str, Any], cell: dict[str, Any], fid: bool) -> dict[str, Any]:
    """Load the cell's best checkpoint and score it on the test split at the cell's grids (Ray task)."""
    from ..evaluation import evaluate_split
    from ..trained import TrainedModel, pick_device
    from .checkpoints import local_checkpoint

    cfg = config_from_dict(cfg_dict, origin="study cell")
    c = Cell(**cell)
    with local_checkpoint(checkpoint_path) as folder:
        model = TrainedModel.from_checkpoint(folder, pick_device(cfg.evaluation.device)).accelerate(cfg)
    ev = evaluate_split(model, cfg, "test", cell_grids(cfg, c))       # cfg: the cell's own (carries study:)
    out = {"grids": [{"label": g.spec.label, "steps": g.spec.steps, "grid": list(g.spec.grid),
                      "training_grid": g.spec.training_grid, "summary": g.summary("test"),
                      "values": {d: {m: v.tolist() for m, v in per.items()} for d, per in g.values.items()}}
                     for g in ev.grids],
           "ids": [list(i) for i in ev.ids], "scale": ev.scale,
           "params": sum(p.numel() for p in model.net.parameters())}
    core = getattr(model.net, "generator_parameters", None)
    if core is not None:
        out["params_generators"] = core()
    if fid:
        out["fid_fwd"] = _fid(model, cfg, ev.main.spec.grid)
    return out


def _fid(model: Any, cfg: Config, grid: Any) -> float:
    """FID of forward syntheses vs real targets of the test split (Inception weights must be local)."""
    import torch

    from ..data.readers import iter_split
    from ..metrics import fid

    real, fake = [], []
    for b in iter_split(cfg, "test", cfg.evaluation.batch_size):
        x = torch.from_numpy(b.source).to(model.device)
        fake.append(model.sample(x, "forward", list(grid)).float().cpu())
        real.append(torch.from_numpy(b.target))
    return fid(real, fake, device=str(model.device))


def _cell_trial(config: dict[str, Any], base_cfg: dict[str, Any]) -> None:
    """One cell: train (resumable by name), score the best checkpoint, write cells/<id>.json, report."""
    import ray
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train.launch import best_checkpoint, build_datasets, run_training

    cfg = config_from_dict(base_cfg, origin="study config")
    cell = _cells_by_id(cfg)[config["cell"]]
    ccfg = cell_config(cfg, cell)
    loc = _cell_file(cfg, cell.id)
    if storage.is_file(loc):                                   # scored before a restart: never retrained
        tune.report(_final_metrics(json.loads(storage.read_bytes(loc))))
        return
    t0 = time.time()
    result = run_training(ccfg, callbacks=[TuneReportCallback()], resume=True, name=f"train_{cell.id}",
                          storage_path=study_dir(cfg) + "/train_runs", datasets=build_datasets(ccfg))
    wall = time.time() - t0
    ck = best_checkpoint(result, ccfg)
    from .checkpoints import checkpoint_location

    tc = ccfg.train
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # the scoring task asks for one Train worker's resources OUTSIDE the trial's own small reservation
    res = {"num_cpus": tc.cpus_per_worker, **({"num_gpus": tc.gpus_per_worker} if tc.use_gpu else {}),
           **({"resources": tc.custom_resources()} if tc.custom_resources() else {}),
           "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=None)}
    scores = ray.get(ray.remote(score_cell).options(**res).remote(
        checkpoint_location(ck.path, ccfg.storage_path), ccfg.to_dict(), cell.as_dict(), fid_wanted(cfg)))
    m = result.metrics or {}
    scores.update(cell=cell.as_dict(), checkpoint=checkpoint_location(ck.path, ccfg.storage_path),
                  cost={"train_wall_s": wall, "images_per_s": m.get("train/images_per_s"),
                        "peak_mem_mb": m.get("train/peak_mem_mb"), "epochs": m.get("epoch")})
    storage.write_bytes_atomic(loc, json.dumps(scores).encode())
    tune.report(_final_metrics(scores))


def _final_metrics(scores: dict[str, Any]) -> dict[str, Any]:
    """The cell's last Tune result: the main grid's test summary, cost, and ``cell_done``."""
    main = next((g for g in scores["grids"] if g["training_grid"]), scores["grids"][0])
    out = {k: v for k, v in main["summary"].items()}
    out.update({f"cost/{k}": v for k, v in scores["cost"].items() if v is not None})
    out.update({"cell_done": 1, "cost/params": scores["params"]})
    return out


class StudyCellCallback(MLflowTrialCallback):
    """A child MLflow run per cell, holding the cell's own config (method, ratio, seed, fraction)."""

    def trial_cfg(self, trial: Any) -> Config:
        return cell_config(self.cfg, _cells_by_id(self.cfg)[trial.config["cell"]])


def concurrency(cfg: Config) -> int:
    """``study.max_concurrent_trials``, else how many cells the cluster's CPUs and GPUs fit now."""
    if cfg.study.max_concurrent_trials:
        return cfg.study.max_concurrent_trials
    import ray

    have = ray.cluster_resources()
    tc = cfg.train
    fits = [have.get("CPU", 1.0) / (tc.num_workers * tc.cpus_per_worker + cfg.tune.trial_cpus)]
    if tc.use_gpu:
        fits.append(have.get("GPU", 0.0) / (tc.num_workers * tc.gpus_per_worker))
    fits += [have.get(k, 0.0) / (tc.num_workers * v) for k, v in tc.custom_resources().items() if v > 0]
    return max(1, int(math.floor(min(fits) + 1e-9)))


def check_spec(cfg: Config) -> None:
    """Refuse a study folder made for another design; record the spec for a new one."""
    digest, spec = spec_digest(cfg)
    loc = storage.join(study_dir(cfg), SPEC_FILE)
    if storage.is_file(loc):
        old = json.loads(storage.read_bytes(loc))
        if old["digest"] != digest:
            changed = sorted(k for k in set(old["spec"]) | set(spec) if old["spec"].get(k) != spec.get(k))
            raise ConfigError(f"study.name={cfg.study.name!r}: {study_dir(cfg)} holds a study of another design "
                              f"(sections changed: {changed}); its cells would mix with these. Choose a new "
                              f"study.name=..., or delete that folder to start over")
        return
    storage.write_bytes_atomic(loc, json.dumps({"digest": digest, "spec": spec}, default=str).encode())


def run_grid(cfg: Config) -> dict[str, Any]:
    """The whole study; returns {"cells": [cells/<id>.json contents], "dir", "parent_run_id"}."""
    from ..data.manifest import load_manifest, manifest_digest
    from ..data.shards import prepare_shards

    cells = expand_cells(cfg)
    client = exp_id = parent = None
    if cfg.tracking.enabled:
        client, exp_id = tracking.connect(cfg)
    check_fits(cfg)                      # a cell larger than a fixed cluster would wait forever
    prepare_shards(cfg)
    manifest = load_manifest(cfg)
    check_cells(cfg, cells, manifest)
    check_spec(cfg)
    callbacks: list[Any] = [CellProgress(len(cells))]
    where = study_dir(cfg)
    try:
        if client is not None:
            scfg = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"experiment_name": cfg.study.name})})
            tags = {"bidpm.git_commit": tracking.git_commit(cfg), "bidpm.ray_job_id": tracking.ray_job_id(),
                    "bidpm.manifest_digest": manifest_digest(manifest), "bidpm.kind": "study-grid"}
            parent, resumed = tracking.study_run(client, exp_id, scfg, tags)
            if not resumed:
                tracking.log_dataset(client, parent, cfg, manifest)
            journal = storage.join(where, JOURNAL_FILE)
            replay_journal(client, journal, cfg)                   # what an outage left unwritten, first
            callbacks.insert(0, StudyCellCallback(scfg.to_dict(), exp_id, parent, tags, manifest, journal=journal))
        callbacks.append(watchdog_for(cfg, cfg.study.name, run_name="cell"))
        trainable = tune.with_resources(tune.with_parameters(_cell_trial, base_cfg=cfg.to_dict()), {"cpu": cfg.tune.trial_cpus})
        print(f"study {cfg.study.name!r}: {len(cells)} cells ({len(cfg.study.methods)} methods x "
              f"{len(cfg.study.pairing_ratios)} ratios x {len(cfg.study.seeds)} seeds x {len(cfg.study.train_fractions)} "
              f"fractions), up to {concurrency(cfg)} at once; folder {where}", flush=True)
        if Tuner.can_restore(where):
            # Errored cells are not resumed here: Tune re-queues them all at once, past max_concurrent_trials,
            # and their Train runs then starve each other; they are retried below under the limit.
            print(f"restoring {where}: finished cells kept, interrupted ones resumed", flush=True)
            results = Tuner.restore(where, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False).fit()
            _check_interrupted(results, 0, where)
        else:
            _check_interrupted(_tuner(cfg, trainable, [c.id for c in cells], cfg.study.name, callbacks).fit(), len(cells), where)
        missing = [c.id for c in cells if not storage.is_file(_cell_file(cfg, c.id))]
        if missing and Tuner.can_restore(where) and cfg.study.retry_failed:
            name = f"{cfg.study.name}-retry-{time.strftime('%Y%m%d-%H%M%S')}"
            print(f"retrying {len(missing)} cell(s) without scores as {name}: {', '.join(missing)}", flush=True)
            _check_interrupted(_tuner(cfg, trainable, missing, name, callbacks).fit(), len(missing), where)
        done = [json.loads(storage.read_bytes(_cell_file(cfg, c.id))) for c in cells if storage.is_file(_cell_file(cfg, c.id))]
        if parent is not None:      # cells whose end no callback recorded (a killed driver): as their scores say
            ids = {d["cell"]["id"] for d in done}
            tracking.end_open_children(client, exp_id, parent, "FAILED", {f"cell_{i}": "FINISHED" for i in ids})
    except BaseException as exc:
        outage = tracking.outage_in(exc)        # Tune may wrap the callback's outage in a TuneError
        end_runs(client, parent, outage or exc)
        if outage is not None and outage is not exc:
            raise outage from None
        if not isinstance(exc, tracking.TrackingUnavailable) and tracking.is_outage(exc):
            raise tracking.unavailable(cfg, exc, "running the study") from exc
        raise
    return {"cells": done, "dir": where, "parent_run_id": parent, "client": client,
            "missing": [c.id for c in cells if c.id not in {d["cell"]["id"] for d in done}]}


def _check_interrupted(results: Any, expected: int, where: str) -> None:
    """Tune's graceful stop on Ctrl+C returns from fit: a stop, not failed cells to retry."""
    if interrupted(results, expected):
        raise StudyInterrupted(f"study stopped with cells unfinished (state saved in {where})")


def _cell_file(cfg: Config, cell_id: str) -> str:
    return storage.join(study_dir(cfg), CELLS_DIR, f"{cell_id}.json")


def _tuner(cfg: Config, trainable: Any, ids: list[str], name: str, callbacks: list[Any]) -> Tuner:
    """A Tune experiment over the cells ``ids`` (one trial each), at most ``concurrency(cfg)`` at once."""
    return Tuner(trainable, param_space={"cell": tune.grid_search(ids)},
                 tune_config=TuneConfig(num_samples=1, max_concurrent_trials=concurrency(cfg),
                                        trial_name_creator=_name, trial_dirname_creator=_name),
                 run_config=RunConfig(name=name, storage_path=cfg.storage_path, callbacks=callbacks,
                                      verbose=1 if cfg.tune.verbose else 0))


def _name(trial: Any) -> str:
    return f"cell_{trial.config['cell']}" if isinstance(trial.config.get("cell"), str) else f"trial_{trial.trial_id}"
