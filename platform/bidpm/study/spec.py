"""What a study folder was made for (``study_spec.json``): a rerun of another design is refused, so cells
of two designs never mix; a rerun after an upgrade that only added fields at their defaults resumes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..config import Config, ConfigError
from ..io import storage
from .cells import study_dir

SPEC_FILE = "study_spec.json"

__all__ = ["LEGACY_VALUES", "SPEC_FILE", "check_spec", "spec_digest"]


def spec_digest(cfg: Config) -> tuple[str, dict[str, Any]]:
    """What a study folder was made for: everything but the study's scheduling knobs and the tracking
    store. A rerun with another spec is refused (``check_spec``), so cells of two designs never mix."""
    raw = cfg.to_dict()
    for k in ("tracking", "tune"):
        raw.pop(k, None)
    raw["study"] = {k: v for k, v in raw["study"].items() if k not in ("max_concurrent_trials", "bootstrap_samples")}
    raw["train"] = {k: v for k, v in raw["train"].items() if k not in ("max_failures", "controller_failure_limit", "gpu_memory_gb")}
    text = json.dumps(raw, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], raw


# fields added with a default that is not what a folder made before them did: absent from an old spec
# means this value (data.pairing_unit came with the subject unit; before it every study paired slices)
LEGACY_VALUES = {("data", "pairing_unit"): "slice"}


def _irrelevant(section: str, key: str, spec: dict[str, Any]) -> bool:
    """A legacy field that cannot change this study: the pairing unit of a study whose every ratio is 100%."""
    return (section, key) == ("data", "pairing_unit") and all(float(r) >= 1.0 for r in spec["study"]["pairing_ratios"])


def _only_new_defaults(cfg: Config, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Same design after an upgrade: ``new`` differs from ``old`` only by section fields added since the
    folder was made (absent from ``old``) that hold their defaults - or, for ``LEGACY_VALUES``, what the
    folder did before the field existed - so a study resumes across versions."""
    if set(old) != set(new):
        return False
    for section, values in new.items():
        before = old[section]
        if not isinstance(values, dict) or not isinstance(before, dict):
            if values != before:
                return False
            continue
        fields = getattr(type(getattr(cfg, section, None)), "model_fields", {})
        for key, value in values.items():
            if key in before:
                if before[key] != value:
                    return False
            elif (section, key) in LEGACY_VALUES:
                if value != LEGACY_VALUES[section, key] and not _irrelevant(section, key, new):
                    return False
            elif key not in fields or value != json.loads(json.dumps(fields[key].get_default(call_default_factory=True), default=str)):
                return False
        if set(before) - set(values):
            return False
    return True


def check_spec(cfg: Config) -> None:
    """Refuse a study folder made for another design; record the spec for a new one."""
    digest, spec = spec_digest(cfg)
    loc = storage.join(study_dir(cfg), SPEC_FILE)
    if storage.is_file(loc):
        old = json.loads(storage.read_bytes(loc))
        if old["digest"] != digest and not _only_new_defaults(cfg, old["spec"], spec):
            changed = sorted(k for k in set(old["spec"]) | set(spec) if old["spec"].get(k) != spec.get(k))
            legacy = [f"{sec}.{key}={val}" for (sec, key), val in LEGACY_VALUES.items()
                      if key not in old["spec"].get(sec, {}) and spec.get(sec, {}).get(key) != val]
            hint = f" (it was made before {', '.join(legacy)} became a choice: set that to resume it)" if legacy else ""
            raise ConfigError(f"study.name={cfg.study.name!r}: {study_dir(cfg)} holds a study of another design "
                              f"(sections changed: {changed}){hint}; its cells would mix with these. Choose a new "
                              f"study.name=..., or delete that folder to start over")
        return
    storage.write_bytes_atomic(loc, json.dumps({"digest": digest, "spec": spec}, default=str).encode())
