"""Shared base for config sections: strict (unknown keys are errors), validated on assignment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config value is wrong; the message names the field, the rule and the file."""


class Section(BaseModel):
    """Base of every config section: typo'd keys fail instead of being silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
