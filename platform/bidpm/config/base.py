"""Shared base for config sections: strict (unknown keys are errors), validated on assignment."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ConfigError(ValueError):
    """A config value is wrong; the message names the field, the rule and the file."""


class Section(BaseModel):
    """Base of every config section: typo'd keys fail instead of being silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _safe_name(value: str) -> str:
    """Names that become folder names (``..`` would delete a parent on ``tune.resume=false`` or
    ``--restart``) and MLflow names inside filter strings (a ``'`` broke them)."""
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a safe name: use letters, digits, '.', '_' and '-' (no '..', at most 128, "
                         "starting with a letter or digit), e.g. brats_t1t2-steps")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
