"""YAML + ``key=value`` overrides -> one validated ``Config``; errors name every wrong field.

>>> cfg = load_config("configs/quickstart.yaml", ["method.time_grid=[0,0.5,1]", "train.epochs=3"])
>>> cfg.method.step_weights      # resolved to the paper's [1, 0.5, 1]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml
from pydantic import ValidationError

from .base import ConfigError
from .root import Config
from .tracking import has_password

__all__ = ["SECRET_KEYS", "apply_overrides", "config_from_dict", "load_config", "redact", "set_path", "with_overrides"]


# Config fields whose values are secrets: never echoed in an error or a command line (``redact``).
SECRET_KEYS = ("data.pseudonym_salt", "data.split.train_subjects", "data.split.val_subjects", "data.split.test_subjects",
               "tracking.tracking_uri")


def redact(override: str) -> str:
    """``key=value`` with the value replaced by ``<redacted>`` when ``key`` is a secret field (a tracking URI only
    when it carries a password)."""
    key, sep, value = override.partition("=")
    if not sep or key.strip() not in SECRET_KEYS:
        return override
    if key.strip() == "tracking.tracking_uri" and not has_password(value):
        return override
    return f"{key}=<redacted>"


def _format_validation(err: ValidationError, origin: str) -> str:
    """One line (a user error is one line on stderr): every wrong field with its rule, '; '-separated."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo? see the section's fields in bidpm/config/)"
        got = (e["type"] != "extra_forbidden" and not isinstance(e.get("input"), dict)
               and not any(loc == k or loc.startswith(k + ".") for k in SECRET_KEYS if k != "tracking.tracking_uri")
               and not (loc == "tracking.tracking_uri" and has_password(str(e.get("input")))))
        parts.append((f"{loc}: " if loc else "") + msg + (f" (got {e['input']!r})" if got else ""))
    return f"invalid config ({origin}): " + "; ".join(parts)


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` in a nested dict; values parse as YAML (``[0,0.5,1]``, ``true``, ``1e-4``)."""
    for item in overrides:
        shown = redact(item)                      # what an error may echo
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=3")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {shown!r}: empty key segment")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {shown!r}: value is not valid YAML"
                              + ("" if shown != item else f" ({exc})")) from None
        set_path(raw, key.strip(), value, what=f"override {shown!r}")
    return raw


def set_path(raw: dict[str, Any], key: str, value: Any, what: str = "") -> None:
    """``raw[a][b][c] = value`` for ``key`` "a.b.c" (missing sections are created). Shared by
    command-line overrides and Tune's trial parameters."""
    *parents, leaf = key.split(".")
    node = raw
    for p in parents:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{what or key}: {p} is a value, not a section")
        node = nxt
    node[leaf] = value


def config_from_dict(raw: dict[str, Any], origin: str = "<dict>") -> Config:
    """Validate a nested dict; errors name every wrong field and its rule."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, origin)) from None


def load_config(path: Optional[str | Path] = None, overrides: Iterable[str] = ()) -> Config:
    """YAML file (or the embedded defaults when ``path`` is None) + overrides -> validated Config.

    ``MLFLOW_TRACKING_URI`` is read here, once, when the file sets no ``tracking.tracking_uri``.
    """
    raw: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (configs live in configs/, e.g. configs/quickstart.yaml)")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections (model, method, data, ...)")
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides)
    if overrides:
        origin += " + overrides " + " ".join(redact(o) for o in overrides)
    if not (raw.get("tracking") or {}).get("tracking_uri") and os.environ.get("MLFLOW_TRACKING_URI"):
        raw.setdefault("tracking", {})["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]
        origin += " + MLFLOW_TRACKING_URI from the environment"
    return config_from_dict(raw, origin)


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A new validated Config: ``cfg`` with ``overrides`` set (``section.key`` paths). How a trial, a
    study cell or a best config is derived from the config a job was given."""
    raw = cfg.to_dict()
    for key, value in overrides.items():
        set_path(raw, key, value)
    return config_from_dict(raw, origin=f"{cfg.name} + trial overrides")
