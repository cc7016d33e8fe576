"""Challenger vs champion: a registered version takes alias ``champion`` only when it beats the current
champion on the TEST split by ``tracking.promote_metric`` (ties keep the champion), both scored now by
THE evaluation on the Ray-free split reader, each model loaded from its weights (``pyfunc.load_model``).
Safe against concurrent promotions: the decision and the alias move run under a lease.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Mapping, Optional

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..config import Config
from ..evaluation import scale_note
from ..objective import Objective
from .registry import CHALLENGER, CHAMPION, alias_version
from .store import TrackingError

LOCK_SUFFIX = ".promotion-lock"
_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")

__all__ = ["LOCK_SUFFIX", "Promotion", "decision_tags", "promote", "promotion_lock", "score_model"]


@dataclass
class Promotion:
    """The outcome of a challenger vs champion comparison (recorded as tags and printed)."""

    name: str
    version: str
    metric: str
    mode: str
    challenger_score: float
    champion_version: Optional[str]
    champion_score: Optional[float]
    promoted: bool
    reason: str

    def describe(self) -> str:
        champ = "none" if self.champion_version is None else f"v{self.champion_version} {self.metric}={self.champion_score:.4f}"
        verdict = "PROMOTED to champion" if self.promoted else "champion kept"
        return (f"registry {self.name!r}: challenger v{self.version} {self.metric}={self.challenger_score:.4f} vs "
                f"champion {champ} -> {verdict} ({self.reason})")


@contextmanager
def promotion_lock(client: MlflowClient, name: str, ttl_s: float = 120.0, wait_s: float = 300.0,
                   poll_s: float = 0.1) -> Iterator[str]:
    """Hold the promotion lease of registered model ``name`` (yields the holder id).

    Why a lease and not compare-and-set: MLflow aliases have no conditional update, so two promoters
    that both read "champion = v1" could each move it, and the last writer wins even when it is the
    worse model. What every store does atomically is refuse a second registered model of the same
    name, so the lease IS a registered model ``<name>.promotion-lock`` (created with its holder and
    expiry tags in one call, deleted on release). A lease left by a killed promoter expires after
    ``ttl_s`` and is then broken by the next one; waiting longer than ``wait_s`` is an error naming
    the holder. Only the final check-and-move runs under the lease (seconds), never an evaluation.
    """
    lock = name + LOCK_SUFFIX
    holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(
                lock, tags={"bidpm.lock.holder": holder, "bidpm.lock.expires": f"{time.time() + ttl_s:.3f}"},
                description=f"transient lease: a promotion of {name!r} is moving its aliases (bidpm.tracking.registry)")
            break
        except MlflowException as exc:
            if exc.error_code not in _EXISTS + ("RESOURCE_DOES_NOT_EXIST",):
                raise
            # RESOURCE_DOES_NOT_EXIST: MLflow's SQL store reads the taken name back after the failed insert,
            # and the lease was released in between; the same for the read below. Either way: try again,
            # the next poll at once, but never past the deadline (a lease taken and freed without end).
            held = None if exc.error_code == "RESOURCE_DOES_NOT_EXIST" else _lease_tags(client, lock)
        if held is not None and time.time() > float(held.get("bidpm.lock.expires") or 0):
            _release(client, lock, held.get("bidpm.lock.holder"))  # a killed promoter's lease
            continue
        if time.monotonic() > deadline:
            raise TrackingError(
                f"registered model {name!r}: another promotion ({(held or {}).get('bidpm.lock.holder')}) "
                f"holds the lease {lock!r} for more than {wait_s:.0f} s; retry later, or delete registered model "
                f"{lock!r} if no promotion is running")
        if held is not None:
            time.sleep(poll_s)
    try:
        yield holder
    finally:
        _release(client, lock, holder)


def _lease_tags(client: MlflowClient, lock: str) -> Optional[dict[str, str]]:
    """The lease's holder and expiry tags; None when it was released since the failed create."""
    try:
        return dict(client.get_registered_model(lock).tags)
    except MlflowException:
        return None


def _release(client: MlflowClient, lock: str, holder: Optional[str]) -> None:
    """Delete the lease if ``holder`` still holds it (never someone else's newer lease)."""
    try:
        if client.get_registered_model(lock).tags.get("bidpm.lock.holder") == holder:
            client.delete_registered_model(lock)
    except MlflowException:
        pass                                                    # already gone


def promote(client: MlflowClient, cfg: Config, version: str,
            evaluate: Optional[Callable[[str], Mapping[str, float]]] = None,
            challenger_scores: Optional[Mapping[str, float]] = None, champion_alias: str = CHAMPION,
            challenger_alias: str = CHALLENGER, tag_prefix: str = "bidpm.promotion") -> Promotion:
    """Compare registered ``version`` with the current ``champion`` on the test split; move aliases.

    Both models are scored on the same split now (a stored score may come from other data). The
    challenger takes ``champion`` only if strictly better by ``tracking.promote_metric`` (ties keep the
    champion). ``evaluate(model_uri) -> metrics`` defaults to ``score_model(uri, cfg, "test")``.

    Concurrent promotions (two drivers, two versions): scoring runs outside any lock; the decision
    and the alias move run under ``promotion_lock``, after re-reading the champion. When the champion
    moved meanwhile (another promotion won), the lease is released, the new champion is scored and
    the comparison repeats, so the champion always ends on the better model and the reason tag says
    which champion was compared and that it changed during the promotion.

    A step budget (``tracking.budgets``) runs the same rule on its own aliases (``champion-nfeK``,
    ``challenger-nfeK``) and records its decision under its own ``tag_prefix``.
    """
    objective = Objective.of_promotion(cfg)
    name, metric = cfg.tracking.registered_model_name, objective.metric
    evaluate = evaluate or (lambda uri: score_model(uri, cfg, "test"))
    version = str(version)
    client.get_model_version(name, version)                     # clear MLflow error if it does not exist
    scores = dict(challenger_scores) if challenger_scores is not None else dict(evaluate(f"models:/{name}/{version}"))
    if metric not in scores:
        raise TrackingError(f"tracking.promote_metric: {metric!r} is not among the evaluation metrics {sorted(scores)}")
    ours = float(scores[metric])
    champion_scores: dict[str, float] = {}                      # a version's model never changes: score once
    moved: list[str] = []                                       # champions that appeared while we scored
    while True:
        champ_v = alias_version(client, name, champion_alias)
        if champ_v is not None and champ_v != version and champ_v not in champion_scores:
            champion_scores[champ_v] = float(evaluate(f"models:/{name}/{champ_v}")[metric])
        with promotion_lock(client, name):
            now = alias_version(client, name, champion_alias)
            if now != champ_v:                                  # another promotion moved it: score that one
                moved.append(f"v{now}" if now else "none")
                continue
            decision = _decide(objective, name, version, ours, champ_v, champion_scores.get(champ_v), moved)
            client.set_registered_model_alias(name, challenger_alias, version)
            if decision.promoted:
                client.set_registered_model_alias(name, champion_alias, version)
            _record(client, cfg, decision, scores, tag_prefix)
            return decision


def _decide(objective: Objective, name: str, version: str, ours: float, champ_v: Optional[str],
            champ_score: Optional[float], moved: list[str]) -> Promotion:
    metric, mode = objective.metric, objective.mode
    if champ_v is None:
        promoted, reason = True, "no champion yet"
    elif champ_v == version:
        promoted, reason, champ_score = True, "already the champion", ours
    else:
        assert champ_score is not None
        promoted = objective.better(ours, champ_score)
        reason = f"{'beats' if promoted else 'does not beat'} the champion ({mode} {metric}; ties keep the champion)"
    if moved:
        reason += (f"; the champion changed to {', then '.join(moved)} during this promotion (a concurrent "
                   "promotion), so it was compared again with the new champion")
    return Promotion(name, version, metric, mode, ours, champ_v, champ_score, promoted, reason)


def _record(client: MlflowClient, cfg: Config, decision: Promotion, scores: Mapping[str, float],
            prefix: str = "bidpm.promotion") -> None:
    """The decision as tags of the challenger version (under the lease: tags and aliases agree)."""
    name, version = decision.name, decision.version
    tags = {
        f"{prefix}.decision": "promoted" if decision.promoted else "kept_champion",
        f"{prefix}.reason": decision.reason,
        f"{prefix}.metric": decision.metric,
        f"{prefix}.challenger_score": f"{decision.challenger_score:.6f}",
        f"{prefix}.champion_version": decision.champion_version or "none",
        f"{prefix}.champion_score": "none" if decision.champion_score is None else f"{decision.champion_score:.6f}",
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    for k, v in scores.items():
        client.set_model_version_tag(name, version, f"bidpm.{k}", f"{float(v):.6f}")
    client.set_model_version_tag(name, version, "bidpm.metric_scale", scale_note(cfg.evaluation.scale))


def score_model(model_uri: str, cfg: Config, split: str = "test") -> dict[str, float]:
    """A logged/registered model scored by THE evaluation on ``split`` (Ray-free reader), on its own
    training grid, with ``cfg.evaluation``'s scale, batches and device. Never used to select when 'test'."""
    from ..evaluation import evaluate_split
    from ..trained import pick_device
    from .pyfunc import load_model

    model = load_model(model_uri, cfg, pick_device(cfg.evaluation.device)).accelerate(cfg)
    return evaluate_split(model, cfg, split).summary()


def decision_tags(decision: Promotion) -> dict[str, str]:
    """The decision as run tags (parent run of the study)."""
    return {f"bidpm.promotion.{k}": str(v) for k, v in asdict(decision).items()}
