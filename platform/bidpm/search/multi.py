"""The search's Optuna searcher (one or several objectives, persisted study, warm start) and, after a
multi-objective search, its reports: the Pareto table and figures, the parameter importances and Optuna's
views - written atomically under the search folder (``pareto/``) and logged on the MLflow parent run
(``pareto/``) - then the registry per step budget (``tracking.budgets``).

A single-objective search without ``tune.optuna_storage`` / ``tune.warm_start_from`` gets exactly the
searcher it always had (TPE, seeded, in-memory study) and no report here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from ray.tune.search.optuna import OptunaSearch

from ..config import Config
from ..io import storage
from ..objective import Objective
from .objectives import is_multi, make_sampler, objective_pairs, scheduler_note
from .optuna_study import close_orphans, open_storage, quiet_optuna, seed_warm_start, storage_url
from .space import define_by_run

REPORT_DIR = "pareto"

__all__ = ["REPORT_DIR", "announce", "make_searcher", "report_multi", "row_values"]


def make_searcher(cfg: Config, folder: str, print_fn: Callable[[str], Any]) -> OptunaSearch:
    """OptunaSearch over the Bi-DPM space: the objectives' metrics/modes (lists under several), the chosen
    multi-objective sampler, the study persisted at ``storage_url`` and seeded by ``tune.warm_start_from``."""
    t = cfg.tune
    url = storage_url(cfg, folder)
    if url is None and not t.warm_start_from and not is_multi(cfg):
        return OptunaSearch(define_by_run(cfg), metric=t.metric, mode=t.mode, seed=t.seed, study_name=t.experiment_name)
    store = open_storage(url)
    seed_warm_start(cfg, store, print_fn)
    if not is_multi(cfg):
        return OptunaSearch(define_by_run(cfg), metric=t.metric, mode=t.mode, seed=t.seed,
                            study_name=t.experiment_name, storage=store)
    pairs = objective_pairs(cfg)
    return OptunaSearch(define_by_run(cfg), metric=[m for m, _ in pairs], mode=[m for _, m in pairs],
                        sampler=make_sampler(cfg), study_name=t.experiment_name, storage=store)


def announce(cfg: Config, folder: str, print_fn: Callable[[str], Any]) -> None:
    """What a search says at its start, fresh or restored: the scheduler under several objectives and
    where its Optuna study is kept (the optuna-dashboard command)."""
    note, url = scheduler_note(cfg), storage_url(cfg, folder)
    if note:
        print_fn(note)
    if url:
        print_fn(f"optuna study {cfg.tune.experiment_name!r} in {url}  (browse: optuna-dashboard {url})")


def row_values(cfg: Config, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every objective's value at the trial's best epoch by the main objective (the registered checkpoint)."""
    best = Objective(cfg.tune.metric, cfg.tune.mode).best(history) or {}
    return {m: best.get(m) for m, _ in objective_pairs(cfg)}


def report_multi(cfg: Config, folder: str, rows: list[dict[str, Any]], client: Any, parent: Optional[str],
                 config_of: Callable[[Mapping[str, Any]], Config], print_fn: Callable[[str], Any]) -> dict[str, Any]:
    """The multi-objective reports (module docstring); returns the record kept in ``study.json``."""
    with quiet_optuna():          # its INFO line per in-memory study (one per N below) is noise in the summary
        return _report_multi(cfg, folder, rows, client, parent, config_of, print_fn)


def _report_multi(cfg: Config, folder: str, rows: list[dict[str, Any]], client: Any, parent: Optional[str],
                  config_of: Callable[[Mapping[str, Any]], Config], print_fn: Callable[[str], Any]) -> dict[str, Any]:
    from .importance import format_importances, importances, importances_by_n, plot_views
    from .pareto import FRONT_CSV, FRONT_PNG, NFE_PNG, format_front, front_csv, front_rows, plot_front, plot_nfe

    orphans = close_orphans(storage_url(cfg, folder), cfg.tune.experiment_name)
    if orphans:
        print_fn(f"optuna study: {orphans} trial(s) asked by a killed driver and never run marked FAIL")
    study, front = front_rows(cfg, rows)
    table = format_front(cfg, front)
    imp, why = importances(cfg, study)
    by_n = importances_by_n(cfg, study)
    imp_text = format_importances(cfg, imp, by_n) if imp or by_n else why or ""
    print_fn(f"Pareto front ({len(front)} of {len(study.trials)} trials with a checkpoint are non-dominated):\n{table}")
    print_fn(imp_text)
    out_dir = storage.join(folder, REPORT_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        files = {FRONT_CSV: front_csv(cfg, front), "pareto_front.txt": table.encode(),
                 "importance.txt": imp_text.encode()}
        for name, data in files.items():
            Path(tmp, name).write_bytes(data)
        plot_front(cfg, study, Path(tmp) / FRONT_PNG)
        plot_nfe(rows, front, Path(tmp) / NFE_PNG)
        if len(study.trials) >= 2 and any(t.params for t in study.trials):
            plot_views(cfg, study, tmp)
        for name in sorted(os.listdir(tmp)):                   # under the search folder, one atomic write each
            storage.write_bytes_atomic(storage.join(out_dir, name), Path(tmp, name).read_bytes())
        if client is not None and parent is not None:
            client.log_artifacts(parent, tmp, REPORT_DIR)
    record: dict[str, Any] = {"front": [r["trial"] for r in front], "importance": imp,
                              "importance_by_n": {str(n): v for n, v in by_n.items()}, "folder": out_dir}
    if client is not None and parent is not None and cfg.tracking.register_best:
        from ..tracking.budgets import per_budget, register_budgets

        objective = Objective("objective", cfg.tune.mode)
        by_nfe = per_budget(front, lambda r: r["objective"], objective.better)
        record["budgets"] = register_budgets(client, cfg, parent, by_nfe, config_of, print_fn)
    print_fn(f"Pareto report: {out_dir}")
    return record
