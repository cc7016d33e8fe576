"""The registry: register a model version (all or nothing, once per trial), aliases, challenger vs
champion promotion (safe against concurrent promotions).

The best trial's model is registered under ``cfg.tracking.registered_model_name`` with alias
``challenger``; ``champion`` moves only when the challenger beats the champion on the TEST split
(ties keep the champion), both scored by ``bidpm.evaluation`` on the Ray-free split reader, which
loads the models from their weights (``TrainedModel.from_model_uri``: no pickle is loaded).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Mapping, Optional

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..config import Config
from ..evaluation import scale_note
from ..objective import Objective
from .pyfunc import MODEL_FORMAT, input_shape
from .store import TrackingError

CHALLENGER, CHAMPION = "challenger", "champion"
# The tags that say which trial's checkpoint a version is; with the run id they make the registration key.
IDENTITY_TAGS = ("bidpm.study", "bidpm.trial_id", "bidpm.checkpoint")
TAG_REGISTRATION_KEY = "bidpm.registration_key"
LOCK_SUFFIX = ".promotion-lock"
_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def check_registry(client: MlflowClient, cfg: Config) -> None:
    """Fail early when ``registered_model_name`` exists but holds something else than this kind of model."""
    name = cfg.tracking.registered_model_name
    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        return                                                   # does not exist yet: fine
    fmt, shape = rm.tags.get("bidpm.format"), rm.tags.get("bidpm.input_shape")
    has_versions = bool(client.search_model_versions(f"name = '{name}'", max_results=1))
    fix = f"set tracking.registered_model_name to a new name, or delete the registered model {name!r}"
    if fmt != MODEL_FORMAT and (has_versions or fmt is not None):
        raise TrackingError(
            f"tracking.registered_model_name: registered model {name!r} exists and does not hold bidpm models "
            f"(tag bidpm.format = {fmt!r}, expected {MODEL_FORMAT!r}); {fix}"
        )
    if shape is not None and shape != input_shape(cfg):
        raise TrackingError(
            f"tracking.registered_model_name: registered model {name!r} holds models for inputs {shape} "
            f"(C x H x W) but this config makes {input_shape(cfg)} (model.in_channels, data.image_size); {fix}"
        )


def registration_key(run_id: str, tags: Mapping[str, str]) -> str:
    """Identity of one trial's model: the run plus the study / trial / checkpoint tags present."""
    ident = {"run_id": str(run_id), **{k: str(tags[k]) for k in IDENTITY_TAGS if k in tags}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def find_registered(client: MlflowClient, name: str, key: str) -> Optional[str]:
    """The (lowest) version of ``name`` registered with ``key``, or None."""
    found = client.search_model_versions(f"name = '{name}' and tags.`{TAG_REGISTRATION_KEY}` = '{key}'")
    return str(min(int(v.version) for v in found)) if found else None


def register(client: MlflowClient, cfg: Config, model_uri: str, run_id: str, tags: Mapping[str, str]) -> str:
    """Register ``model_uri`` and give it alias ``challenger``; all or nothing, once per trial. Returns the version.

    Idempotent: the version is created WITH its registration key (run id + ``IDENTITY_TAGS``) in one
    call, so a driver killed right after the creation and rerun finds that version by the key and
    completes it (tags, alias) instead of registering the same trial's model again. If anything after
    a creation fails here (tags, alias), the new version is deleted again, so the registry never
    holds a half-registered version made by this call.
    """
    name = cfg.tracking.registered_model_name
    check_registry(client, cfg)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"bidpm.format": MODEL_FORMAT, "bidpm.input_shape": input_shape(cfg)},
                                       description="Bi-DPM velocity field u_theta (synthesis in both directions)")
    else:
        client.set_registered_model_tag(name, "bidpm.format", MODEL_FORMAT)
        client.set_registered_model_tag(name, "bidpm.input_shape", input_shape(cfg))
    key = registration_key(run_id, tags)
    all_tags = {**{k: str(v) for k, v in tags.items()}, TAG_REGISTRATION_KEY: key}
    version = find_registered(client, name, key)
    created = version is None
    if created:
        version = str(mlflow.register_model(model_uri, name, await_registration_for=300, tags=all_tags).version)
    try:
        mv = client.get_model_version(name, version)
        if str(mv.status) not in ("READY", "ModelVersionStatus.READY"):
            raise TrackingError(f"registered model {name!r} version {version} ended in status {mv.status}")
        for k, v in all_tags.items():
            client.set_model_version_tag(name, version, k, v)
        client.set_registered_model_alias(name, CHALLENGER, version)
    except BaseException:
        if created:
            client.delete_model_version(name, version)
        raise
    return version


def alias_version(client: MlflowClient, name: str, alias: str) -> Optional[str]:
    """The version carrying ``alias``, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


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
            if exc.error_code not in _EXISTS:
                raise
        try:
            held = client.get_registered_model(lock).tags
        except MlflowException:
            continue                                            # released in between: try again at once
        if time.time() > float(held.get("bidpm.lock.expires") or 0):
            _release(client, lock, held.get("bidpm.lock.holder"))  # a killed promoter's lease
            continue
        if time.monotonic() > deadline:
            raise TrackingError(
                f"registered model {name!r}: another promotion ({held.get('bidpm.lock.holder')}) holds the lease "
                f"{lock!r} for more than {wait_s:.0f} s; retry later, or delete registered model {lock!r} if no "
                "promotion is running")
        time.sleep(poll_s)
    try:
        yield holder
    finally:
        _release(client, lock, holder)


def _release(client: MlflowClient, lock: str, holder: Optional[str]) -> None:
    """Delete the lease if ``holder`` still holds it (never someone else's newer lease)."""
    try:
        if client.get_registered_model(lock).tags.get("bidpm.lock.holder") == holder:
            client.delete_registered_model(lock)
    except MlflowException:
        pass                                                    # already gone


def promote(client: MlflowClient, cfg: Config, version: str,
            evaluate: Optional[Callable[[str], Mapping[str, float]]] = None,
            challenger_scores: Optional[Mapping[str, float]] = None) -> Promotion:
    """Compare registered ``version`` with the current ``champion`` on the test split; move aliases.

    Both models are scored on the same split now (a stored score may come from other data). The
    challenger takes ``champion`` only if strictly better by ``tracking.promote_metric`` (ties keep the
    champion). ``evaluate(model_uri) -> metrics`` defaults to ``score_model(uri, cfg, "test")``.

    Concurrent promotions (two drivers, two versions): scoring runs outside any lock; the decision
    and the alias move run under ``promotion_lock``, after re-reading the champion. When the champion
    moved meanwhile (another promotion won), the lease is released, the new champion is scored and
    the comparison repeats, so the champion always ends on the better model and the reason tag says
    which champion was compared and that it changed during the promotion.
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
        champ_v = alias_version(client, name, CHAMPION)
        if champ_v is not None and champ_v != version and champ_v not in champion_scores:
            champion_scores[champ_v] = float(evaluate(f"models:/{name}/{champ_v}")[metric])
        with promotion_lock(client, name):
            now = alias_version(client, name, CHAMPION)
            if now != champ_v:                                  # another promotion moved it: score that one
                moved.append(f"v{now}" if now else "none")
                continue
            decision = _decide(objective, name, version, ours, champ_v, champion_scores.get(champ_v), moved)
            client.set_registered_model_alias(name, CHALLENGER, version)
            if decision.promoted:
                client.set_registered_model_alias(name, CHAMPION, version)
            _record(client, cfg, decision, scores)
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


def _record(client: MlflowClient, cfg: Config, decision: Promotion, scores: Mapping[str, float]) -> None:
    """The decision as tags of the challenger version (under the lease: tags and aliases agree)."""
    name, version = decision.name, decision.version
    tags = {
        "bidpm.promotion.decision": "promoted" if decision.promoted else "kept_champion",
        "bidpm.promotion.reason": decision.reason,
        "bidpm.promotion.metric": decision.metric,
        "bidpm.promotion.challenger_score": f"{decision.challenger_score:.6f}",
        "bidpm.promotion.champion_version": decision.champion_version or "none",
        "bidpm.promotion.champion_score": "none" if decision.champion_score is None else f"{decision.champion_score:.6f}",
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
    from ..trained import TrainedModel, pick_device

    model = TrainedModel.from_model_uri(model_uri, cfg, pick_device(cfg.evaluation.device)).accelerate(cfg)
    return evaluate_split(model, cfg, split).summary()


def decision_tags(decision: Promotion) -> dict[str, str]:
    """The decision as run tags (parent run of the study)."""
    return {f"bidpm.promotion.{k}": str(v) for k, v in asdict(decision).items()}
