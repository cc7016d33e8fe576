"""The registry: register a model version (all or nothing), aliases, challenger vs champion promotion.

The best trial's model is registered under ``cfg.tracking.registered_model_name`` with alias
``challenger``; ``champion`` moves only when the challenger beats the champion on the TEST split
(ties keep the champion), both scored by ``bidpm.evaluation`` on the Ray-free split reader.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Optional

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..config import Config
from ..evaluation import scale_note
from ..objective import Objective
from .pyfunc import MODEL_FORMAT, input_shape
from .store import TrackingError

CHALLENGER, CHAMPION = "challenger", "champion"


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


def register(client: MlflowClient, cfg: Config, model_uri: str, run_id: str, tags: Mapping[str, str]) -> str:
    """Register ``model_uri`` and give it alias ``challenger``; all or nothing. Returns the version.

    If anything after the version's creation fails (tags, alias), the version is deleted again, so the
    registry never holds a half-registered version.
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
    mv = mlflow.register_model(model_uri, name, await_registration_for=300)
    try:
        if str(mv.status) not in ("READY", "ModelVersionStatus.READY"):
            raise TrackingError(f"registered model {name!r} version {mv.version} ended in status {mv.status}")
        for k, v in tags.items():
            client.set_model_version_tag(name, mv.version, k, str(v))
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
    except BaseException:
        client.delete_model_version(name, mv.version)
        raise
    return str(mv.version)


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


def promote(client: MlflowClient, cfg: Config, version: str,
            evaluate: Optional[Callable[[str], Mapping[str, float]]] = None,
            challenger_scores: Optional[Mapping[str, float]] = None) -> Promotion:
    """Compare registered ``version`` with the current ``champion`` on the test split; move aliases.

    Both models are scored on the same split now (a stored score may come from other data). The
    challenger takes ``champion`` only if strictly better by ``tracking.promote_metric`` (ties keep the
    champion). ``evaluate(model_uri) -> metrics`` defaults to ``score_model(uri, cfg, "test")``.
    """
    objective = Objective.of_promotion(cfg)
    name, metric, mode = cfg.tracking.registered_model_name, objective.metric, objective.mode
    evaluate = evaluate or (lambda uri: score_model(uri, cfg, "test"))
    version = str(version)
    client.get_model_version(name, version)                     # clear MLflow error if it does not exist
    scores = dict(challenger_scores) if challenger_scores is not None else dict(evaluate(f"models:/{name}/{version}"))
    if metric not in scores:
        raise TrackingError(f"tracking.promote_metric: {metric!r} is not among the evaluation metrics {sorted(scores)}")
    ours = float(scores[metric])
    champ_v = alias_version(client, name, CHAMPION)
    champ_score: Optional[float] = None
    if champ_v is None:
        promoted, reason = True, "no champion yet"
    elif champ_v == version:
        promoted, reason, champ_score = True, "already the champion", ours
    else:
        champ_score = float(evaluate(f"models:/{name}/{champ_v}")[metric])
        better = objective.better(ours, champ_score)
        promoted = better
        reason = f"{'beats' if better else 'does not beat'} the champion ({mode} {metric}; ties keep the champion)"
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = Promotion(name, version, metric, mode, ours, champ_v, champ_score, promoted, reason)
    tags = {
        "bidpm.promotion.decision": "promoted" if promoted else "kept_champion",
        "bidpm.promotion.reason": reason,
        "bidpm.promotion.metric": metric,
        "bidpm.promotion.challenger_score": f"{ours:.6f}",
        "bidpm.promotion.champion_version": champ_v or "none",
        "bidpm.promotion.champion_score": "none" if champ_score is None else f"{champ_score:.6f}",
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    for k, v in scores.items():
        client.set_model_version_tag(name, version, f"bidpm.{k}", f"{float(v):.6f}")
    client.set_model_version_tag(name, version, "bidpm.metric_scale", scale_note(cfg.evaluation.scale))
    return decision


def score_model(model_uri: str, cfg: Config, split: str = "test") -> dict[str, float]:
    """A logged/registered model scored by THE evaluation on ``split`` (Ray-free reader), on its own
    training grid, with ``cfg.evaluation``'s scale, batches and device. Never used to select when 'test'."""
    from ..evaluation import evaluate_split
    from ..trained import TrainedModel, pick_device

    model = TrainedModel.from_model_uri(model_uri, cfg, pick_device(cfg.evaluation.device))
    return evaluate_split(model, cfg, split).summary()


def decision_tags(decision: Promotion) -> dict[str, str]:
    """The decision as run tags (parent run of the study)."""
    return {f"bidpm.promotion.{k}": str(v) for k, v in asdict(decision).items()}
