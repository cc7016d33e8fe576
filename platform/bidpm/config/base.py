"""Shared base for config sections: strict (unknown keys are errors), validated on assignment."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

_UNSAFE = re.compile(r"[/\\\x00-\x1f'\"`]")


class ConfigError(ValueError):
    """A config value is wrong; the message names the field, the rule and the file."""


class Section(BaseModel):
    """Base of every config section: typo'd keys fail instead of being silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _safe_name(value: str) -> str:
    """Names that become folder names (``..`` would delete a parent on ``tune.resume=false`` or
    ``--restart``; a ``/`` would escape the folder) and MLflow names inside filter strings (a ``'`` broke
    them). Spaces and dots are fine: configs and checkpoints named "BraTS T1 to T2" keep loading."""
    if not value.strip() or value.strip() in (".", "..") or _UNSAFE.search(value) or len(value) > 128:
        raise ValueError(f"{value!r} is not a safe name: no '/', '\\', quotes, backticks or control characters, "
                         "not '.' or '..', at most 128 characters (e.g. brats_t1t2-steps)")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]


_FILTER_BREAKING = re.compile(r"[\x00-\x1f'\"`]")


def _mlflow_name(value: str) -> str:
    """MLflow experiment / registered-model names: anything MLflow takes (Databricks' ``/Users/...`` too)
    but quotes and backticks, which broke the platform's filter strings."""
    if not value.strip() or _FILTER_BREAKING.search(value):
        raise ValueError(f"{value!r} is not a safe name: no quotes, backticks or control characters")
    return value


MlflowName = Annotated[str, AfterValidator(_mlflow_name)]
