"""The Optuna side of a search: where its study is persisted (``tune.optuna_storage``, for
``optuna-dashboard``), the warm start from a previous search (``tune.warm_start_from``), and the
in-memory study of this search's trials that the Pareto and importance reports read.

Why the reports read a study rebuilt from the trial rows rather than the searcher's: Optuna is told a
trial's LAST reported result, while the row (and the checkpoint that is registered) is the trial's best
epoch by the main objective; the front must be the front of what is registered. Distributions come from
replaying the define-by-run space with the trial's own suggestions (``replay``), so the rebuilt trials
carry exactly the parameters and ranges Optuna sampled from.

Resume: the persisted study is opened again by the restored searcher (Ray pickles the study with its
storage). A driver killed after Optuna's ``ask`` but before Tune checkpointed its searcher leaves a
RUNNING trial no one will finish; ``close_orphans`` marks those FAIL after the search, so the study
counts every finished Tune trial exactly once.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from ..config import Config
from ..io import storage
from .objectives import NFE, directions, is_multi, objective_pairs
from .space import sample_overrides

DB_FILE = "optuna.db"
STUDY_FILE = "study.json"               # = search.run.STUDY_FILE (run imports this module, not back)
RUNS_PREFIX = "runs:/"                   # tune.warm_start_from naming an MLflow parent run
TRIALS_ARTIFACT = "summary/trials.json"  # the parent run's trial rows (search.best.register_best)
SEEDED_FROM = "bidpm.seeded_from"       # user attr of a warm-start trial: the search folder it came from

__all__ = ["DB_FILE", "close_orphans", "open_storage", "replay", "rows_study", "seed_warm_start", "storage_url",
           "quiet_optuna", "trial_values", "warm_rows"]


class _Replay:
    """A define-by-run trial that answers with given values and records the distributions asked for;
    a parameter it has no (in-range) value for ends the replay (``KeyError``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values, self.params, self.distributions = dict(values), {}, {}

    def _take(self, name: str, dist: Any) -> Any:
        if name not in self.values or not dist._contains(dist.to_internal_repr(self.values[name])):
            raise KeyError(name)
        self.params[name], self.distributions[name] = self.values[name], dist
        return self.values[name]

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False, step: Any = None) -> float:
        from optuna.distributions import FloatDistribution

        return float(self._take(name, FloatDistribution(low, high, log=log, step=step)))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        from optuna.distributions import CategoricalDistribution

        return self._take(name, CategoricalDistribution(list(choices)))


def replay(cfg: Config, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, distributions) of ``params`` in this search's space; params the space does not ask for are
    dropped, and the replay stops at the first one it asks for but ``params`` lacks (a widened space)."""
    rec = _Replay(params)
    try:
        sample_overrides(rec, cfg.tune.space, cfg.data.pairing_ratio)
    except KeyError:
        pass
    return rec.params, rec.distributions


def trial_values(cfg: Config, row: Mapping[str, Any]) -> Optional[list[float]]:
    """A row's objective values (best epoch by the main objective), None when one is missing."""
    got = dict(row.get("values") or {})
    out = []
    for i, (metric, _) in enumerate(objective_pairs(cfg)):
        v = got.get(metric, row.get("objective") if i == 0 else (row.get("n_steps") if metric == NFE else row.get(metric)))
        if not isinstance(v, (int, float)) or v != v:
            return None
        out.append(float(v))
    return out


def rows_study(cfg: Config, rows: Sequence[Mapping[str, Any]], keep: Callable[[Mapping[str, Any]], bool] = lambda r: True) -> Any:
    """An in-memory study of the rows with every objective value (user attr ``bidpm.trial``: the row's trial)."""
    import optuna

    study = optuna.create_study(directions=directions(cfg), storage=optuna.storages.InMemoryStorage())
    for row in rows:
        values = trial_values(cfg, row)
        if values is None or not keep(row):
            continue
        params, dists = replay(cfg, row.get("params") or {})
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values,
                                                  user_attrs={"bidpm.trial": row["trial"]}))
    return study


def storage_url(cfg: Config, folder: str) -> Optional[str]:
    """``tune.optuna_storage``, else an SQLite file in a local search folder under a multi-objective search
    (a single-objective search keeps today's in-memory study unless the storage is set)."""
    if cfg.tune.optuna_storage:
        return cfg.tune.optuna_storage
    if is_multi(cfg) and not storage.is_uri(folder):
        import os

        return "sqlite:///" + os.path.abspath(os.path.join(folder, DB_FILE))
    return None


def open_storage(url: Optional[str]) -> Any:
    """The Optuna storage for ``url`` (RDB: its tables created on first use), in memory for None."""
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite:///"):
        import os

        os.makedirs(os.path.dirname(url.removeprefix("sqlite:///")) or ".", exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def seed_warm_start(cfg: Config, store: Any, print_fn: Callable[[str], Any]) -> int:
    """Add the finished trials of ``tune.warm_start_from`` (``warm_rows``) to this search's study as
    COMPLETE trials: the sampler learns from them, Tune never runs them. Returns how many were added
    (0 when this study already holds seeded trials: a restarted search seeds once)."""
    import optuna

    src = cfg.tune.warm_start_from
    if not src:
        return 0
    rows = warm_rows(cfg, src)
    study = optuna.create_study(storage=store, study_name=cfg.tune.experiment_name, load_if_exists=True,
                                directions=directions(cfg))
    if any(SEEDED_FROM in t.user_attrs for t in study.get_trials(deepcopy=False)):
        return 0
    added = 0
    for row in rows:
        values = trial_values(cfg, row)
        params, dists = replay(cfg, row.get("params") or {})
        if values is None or row.get("status") == "error" or not params:
            continue
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values,
                                                  user_attrs={SEEDED_FROM: src, "bidpm.trial": row["trial"]}))
        added += 1
    print_fn(f"warm start: {added} finished trial(s) of {src} seed the sampler (not rerun)")
    return added


def warm_rows(cfg: Config, src: str) -> list[dict[str, Any]]:
    """The trial rows of a previous search: a search folder's ``study.json``, or ``runs:/<parent run id>``:
    the ``summary/trials.json`` its MLflow parent run holds (in ``cfg.mlflow_uri``)."""
    if src.startswith(RUNS_PREFIX):
        import tempfile

        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        run_id = src.removeprefix(RUNS_PREFIX).strip("/").split("/")[0]
        client = MlflowClient(cfg.mlflow_uri, cfg.mlflow_uri)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(run_id, TRIALS_ARTIFACT, tmp)
            except (MlflowException, OSError) as exc:
                raise FileNotFoundError(
                    f"tune.warm_start_from: {src}: no {TRIALS_ARTIFACT} on that run in {cfg.mlflow_uri} "
                    f"({str(exc).splitlines()[0]}); fix: name the parent run of a finished search "
                    f"(tag bidpm.role=study) or its search folder") from None
            with open(path, "rb") as f:
                return list(json.loads(f.read()))
    loc = storage.join(src, STUDY_FILE)
    if not storage.is_file(loc):
        raise FileNotFoundError(f"tune.warm_start_from: no finished search in {src} (no {STUDY_FILE}); fix: "
                                f"name a search folder whose search finished, or runs:/<its MLflow parent run id>")
    return list(json.loads(storage.read_bytes(loc)).get("rows", []))


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's logging at WARNING for the block (then as it was): it announces every study it creates."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def close_orphans(url: Optional[str], study_name: str) -> int:
    """Mark FAIL the RUNNING trials of the persisted study (module docstring: a killed driver's asks);
    call after the search, when no trial runs. Returns how many."""
    import optuna
    from optuna.trial import TrialState

    if url is None:
        return 0
    store = open_storage(url)
    study = optuna.load_study(study_name=study_name, storage=store)
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in orphans:
        store.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(orphans)
