"""The subject-level split settings (``data.split:``); the split itself is ``bidpm.data.split``."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from .base import Section


class SplitConfig(Section):
    """Subject-level split: fractions by seed, or explicit subject lists (which win when given).

    Explicit lists name the ORIGINAL subject ids (folder names / CSV ids). Subjects in no list go to
    train when ``train_subjects`` is unset, otherwise they are left out (counted in the manifest).
    Raw ids identify patients, so the lists, like the salt, stay with the ingest: excluded from every
    dump, which carries ``subjects_digest`` (salted) instead.
    """

    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    train_subjects: Optional[list[str]] = Field(None, exclude=True, repr=False)
    val_subjects: Optional[list[str]] = Field(None, exclude=True, repr=False)
    test_subjects: Optional[list[str]] = Field(None, exclude=True, repr=False)
    subjects_digest: Optional[str] = Field(
        None, description="derived (do not set): salted digest of the explicit subject lists; None without lists")

    def __getstate__(self) -> dict:
        """Pickles (Ray object store, spilled objects, Tune state) carry no raw ids, like dumps."""
        state = super().__getstate__()
        state["__dict__"] = {**state["__dict__"], "train_subjects": None, "val_subjects": None, "test_subjects": None}
        return state

    def explicit_lists(self) -> Optional[dict[str, Optional[list[str]]]]:
        """The three lists when any is given, else None."""
        lists = {k: getattr(self, k) for k in ("train_subjects", "val_subjects", "test_subjects")}
        return lists if any(v is not None for v in lists.values()) else None

    @model_validator(mode="after")
    def _sum(self) -> "SplitConfig":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.split: val_fraction + test_fraction must be < 1 (some subjects must train)")
        seen: dict[str, str] = {}
        for name in ("train_subjects", "val_subjects", "test_subjects"):
            for s in getattr(self, name) or []:
                if s in seen and seen[s] != name:
                    raise ValueError(f"data.split: subject {s!r} is in both {seen[s]} and {name}; a subject may be in one split only")
                seen[s] = name
        return self
