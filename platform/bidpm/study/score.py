"""One cell as a Tune trial: train it (one Ray Train run, resumable by name), score its best checkpoint
on the test split at the cell's grids (THE evaluation, in a Ray task with one Train worker's resources),
write ``cells/<id>.json`` and report. A cell whose file exists reports it and trains nothing. Its cost holds
the device-hours of its training summed over every attempt (``bidpm.tune.cost``); scoring is not counted.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from ..config import Config, config_from_dict
from ..io import storage
from .cells import Cell, cell_config, cell_file, cell_grids, cells_by_id, fid_wanted, read_cell, study_dir

__all__ = ["CheckpointMismatch", "final_metrics", "score_cell"]


def _cell_trial(config: dict[str, Any], base_cfg: dict[str, Any], digests: Optional[dict[str, str]] = None) -> None:
    """One cell: train, score, write ``cells/<id>.json``, report. Its name is Tune's trainable name, which
    a restored study checks: it stays ``_cell_trial``. ``digests``: cell id -> the sha256 of the weights
    the cell was scored with before, as the tracking database recorded it (``tracking.TAG_WEIGHTS`` on
    the cell's run): scoring a cell again (its score file lost or damaged) checks its checkpoint against it."""
    import ray
    from ray import tune
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from ..io.checkpoints import checkpoint_location
    from ..raycluster.resources import task_options
    from ..train.launch import best_checkpoint, build_datasets, run_training
    from ..tune.cost import ATTEMPTS, AttemptClock, held_devices, read_attempts, summed
    from ..tune.names import TRAIN_RUNS, train_run_name

    cfg = config_from_dict(base_cfg, origin="study config")
    cell = cells_by_id(cfg)[config["cell"]]
    ccfg = cell_config(cfg, cell)
    loc = cell_file(cfg, cell.id)
    if (scored := read_cell(cfg, cell.id)) is not None:        # scored before a restart: never retrained
        tune.report(final_metrics(scored))
        return
    t0 = time.time()
    name, runs = train_run_name(tune.get_context().get_trial_name()), study_dir(cfg) + "/" + TRAIN_RUNS
    attempts, datasets = f"{runs}/{name}/{ATTEMPTS}", build_datasets(ccfg)
    with AttemptClock(attempts, *held_devices(ccfg.train)) as clock:     # device-hours over every attempt (tune.cost)
        result = run_training(ccfg, callbacks=[clock.callback()], resume=True, name=name, storage_path=runs,
                              datasets=datasets)
    wall = time.time() - t0
    ck = checkpoint_location(best_checkpoint(result, ccfg).path, ccfg.storage_path)
    # the scoring task asks for one Train worker's resources OUTSIDE the trial's own small reservation
    score = ray.remote(score_cell).options(**task_options(ccfg),
                                           scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    scores = ray.get(score.remote(ck, ccfg.to_dict(), cell.as_dict(), fid_wanted(cfg), (digests or {}).get(cell.id)))
    m = result.metrics or {}
    scores.update(cell=cell.as_dict(), checkpoint=ck,
                  cost={"train_wall_s": wall, "images_per_s": m.get("train/images_per_s"),
                        "peak_mem_mb": m.get("train/peak_mem_mb"), "epochs": m.get("epoch"),
                        **summed(read_attempts(attempts))})
    storage.write_bytes_atomic(loc, json.dumps(scores).encode())
    tune.report(final_metrics(scores))


def score_cell(checkpoint_path: str, cfg_dict: dict[str, Any], cell: dict[str, Any], fid: bool,
               expected_sha256: Optional[str] = None) -> dict[str, Any]:
    """Load the cell's best checkpoint and score it on the test split at the cell's grids (a Ray task).
    The scores name the weights' sha256; with ``expected_sha256`` (what the tracking database recorded
    when the cell was first scored) other weights are refused before they are loaded."""
    from ..evaluation import evaluate_split
    from ..io.checkpoints import local_checkpoint, state_sha256
    from ..trained import TrainedModel, pick_device

    cfg = config_from_dict(cfg_dict, origin="study cell")
    c = Cell(**cell)
    with local_checkpoint(checkpoint_path) as folder:
        sha = state_sha256(str(folder))
        if expected_sha256 and sha != expected_sha256:
            raise CheckpointMismatch(
                f"cell {c.id}: checkpoint {checkpoint_path} holds weights with sha256 {sha[:16]}..., not the "
                f"{expected_sha256[:16]}... its first scoring recorded in the tracking database: it changed since; "
                f"not scored. Restore the original, or delete the cell's Train run folder to retrain it")
        model = TrainedModel.from_checkpoint(folder, pick_device(cfg.evaluation.device)).accelerate(cfg)
    ev = evaluate_split(model, cfg, "test", cell_grids(cfg, c),       # cfg: the cell's own (carries study:)
                        volumes=cfg.study.volume_metrics)
    out = {"grids": [{"label": g.spec.label, "steps": g.spec.steps, "grid": list(g.spec.grid),
                      "training_grid": g.spec.training_grid, "summary": g.summary("test"),
                      "values": {d: {m: v.tolist() for m, v in per.items()} for d, per in g.values.items()}}
                     for g in ev.grids],
           "ids": [list(i) for i in ev.ids], "scale": ev.scale, "checkpoint_sha256": sha,
           "params": sum(p.numel() for p in model.net.parameters())}
    if ev.volumes:                      # per subject, at the training grid (study.volume_metrics)
        out["volumes"] = {"subjects": list(ev.volume_subjects),
                          "values": {d: {m: v.tolist() for m, v in per.items()} for d, per in ev.volumes.items()},
                          "summary": {k: v for k, v in ev.summary().items() if k not in ev.main.summary("test")}}
    if cfg.study.volume_metrics:        # and each test subject's original files (evaluation.original)
        out["original"] = _original(model, cfg)
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


def _original(model: Any, cfg: Config) -> dict[str, Any]:
    """The original volumes' scores of a cell, or why there are none (the inputs or the salt not reachable
    from this worker: said in the report, the cell still scored)."""
    from ..evaluation.original import score_original_volumes

    try:
        o = score_original_volumes(model.net, cfg, "test", batch_size=cfg.evaluation.batch_size,
                                   precision=cfg.evaluation.precision or cfg.train.precision)
    except (ValueError, OSError) as exc:
        return {"error": str(exc)[:500]}
    return {"subjects": o.subjects, "summary": o.summary(), "skipped": o.skipped,
            "values": {d: {m: v.tolist() for m, v in per.items()} for d, per in o.values.items()}}


def final_metrics(scores: dict[str, Any]) -> dict[str, Any]:
    """The cell's last Tune result: the main grid's test summary, cost, and ``cell_done``."""
    main = next((g for g in scores["grids"] if g["training_grid"]), scores["grids"][0])
    out = dict(main["summary"])
    out.update({f"cost/{k}": v for k, v in scores["cost"].items() if v is not None})
    out.update({"cell_done": 1, "cost/params": scores["params"]})
    if scores.get("checkpoint_sha256"):          # a string: the trial callback tags the cell's run with it
        out["checkpoint_sha256"] = scores["checkpoint_sha256"]
    return out


class CheckpointMismatch(RuntimeError):
    """A cell's checkpoint is not the one it was scored with (the shared storage was written since)."""
