"""A registry that serves each step budget: after a multi-objective search, the best model at every NFE on
its Pareto front is registered (one version per trial, tagged ``bidpm.nfe``) and promoted by alias per
budget - ``champion-nfe1``, ``champion-nfe2``, ... (and ``challenger-nfeK``) - by the same rule as
``champion``: scored on the test split now, promoted only if strictly better than the budget's current
champion (``promotion.promote`` on the budget's aliases; its decision tags under
``bidpm.promotion.nfeK.*``). ``champion`` itself stays the overall best by the main objective
(``search.best.register_best``).

Idempotent under a driver kill, as ``register_best`` is: the logged model is found again by its weights
(``log_model``), the version by its registration key (``registry.register``), and promotion is a
re-comparison that leaves the same aliases.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ..config import Config
from .promotion import promote, score_model
from .pyfunc import log_model
from .runs import find_run

__all__ = ["budget_alias", "per_budget", "register_budgets"]


def budget_alias(nfe: int, role: str = "champion") -> str:
    """``champion-nfe<K>`` (or ``challenger-nfe<K>``): the alias that serves step budget K."""
    return f"{role}-nfe{int(nfe)}"


def per_budget(front: Sequence[Mapping[str, Any]], metric_of: Callable[[Mapping[str, Any]], float],
               better: Callable[[float, float], bool]) -> dict[int, Mapping[str, Any]]:
    """The best front row at each NFE (``n_steps``) by the main objective; ties keep the earlier row."""
    out: dict[int, Mapping[str, Any]] = {}
    for r in front:
        k = int(r["n_steps"])
        if k not in out or better(metric_of(r), metric_of(out[k])):
            out[k] = r
    return dict(sorted(out.items()))


def register_budgets(client: Any, cfg: Config, parent: str, rows_by_nfe: Mapping[int, Mapping[str, Any]],
                     config_of: Callable[[Mapping[str, Any]], Config], print_fn: Callable[[str], Any]) -> dict[str, Any]:
    """Register and promote the model of each budget's row. Returns {K: {"trial", "version", "promoted"}}."""
    from .. import tracking
    from ..io.checkpoints import checkpoint_location, local_checkpoint
    from .registry import register

    exp_id = client.get_run(parent).info.experiment_id
    out: dict[str, Any] = {}
    for k, row in rows_by_nfe.items():
        row_cfg = config_of(row)
        run_id = find_run(client, exp_id, {tracking.TAG_STUDY: cfg.tune.experiment_name, tracking.TAG_TRIAL: row["trial"]}) or parent
        with local_checkpoint(checkpoint_location(row["checkpoint_path"], cfg.storage_path)) as folder:
            model_uri = log_model(row_cfg, run_id, str(folder))
        tags = {"bidpm.study": cfg.tune.experiment_name, "bidpm.trial_id": row["trial"],
                "bidpm.checkpoint": row["checkpoint_path"], "bidpm.git_commit": tracking.git_commit(cfg), "bidpm.nfe": str(k)}
        version = register(client, row_cfg, model_uri, run_id, tags, challenger_alias=budget_alias(k, "challenger"))
        scores = score_model(model_uri, row_cfg, "test")                     # test split: never used to select
        decision = promote(client, row_cfg, version, challenger_scores=scores, champion_alias=budget_alias(k),
                           challenger_alias=budget_alias(k, "challenger"), tag_prefix=f"bidpm.promotion.nfe{k}")
        print_fn(f"step budget {k} ({budget_alias(k)}): {decision.describe()}")
        out[str(k)] = {"trial": row["trial"], "version": version, "promoted": decision.promoted,
                       "alias": budget_alias(k)}
    return out
