"""The model registry: a search's best model registered once per trial (all or nothing, found again by
its registration key after a killed driver), with alias ``challenger``; which version carries an alias.
Moving ``champion`` is ``promotion``'s.
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping, Optional

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..config import Config
from .pyfunc import MODEL_FORMAT, input_shape
from .store import TrackingError

CHALLENGER, CHAMPION = "challenger", "champion"
# The tags that say which trial's checkpoint a version is; with the run id they make the registration key.
IDENTITY_TAGS = ("bidpm.study", "bidpm.trial_id", "bidpm.checkpoint")
TAG_REGISTRATION_KEY = "bidpm.registration_key"


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


def register(client: MlflowClient, cfg: Config, model_uri: str, run_id: str, tags: Mapping[str, str],
             challenger_alias: str = CHALLENGER) -> str:
    """Register ``model_uri`` and give it alias ``challenger`` (a step budget's: ``challenger-nfeK``,
    ``tracking.budgets``); all or nothing, once per trial. Returns the version.

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
        client.set_registered_model_alias(name, challenger_alias, version)
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
