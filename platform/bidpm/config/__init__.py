"""One typed config from YAML (+ ``key=value`` overrides) to every part of the platform.

>>> cfg = load_config("configs/quickstart.yaml", ["method.time_grid=[0,0.5,1]", "train.epochs=3"])
>>> cfg.method.step_weights      # resolved to the paper's [1, 0.5, 1]
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from .base import ConfigError, Section
from .data import DataConfig, PhantomConfig, SplitConfig
from .evaluation import EvaluationConfig
from .method import MethodConfig, paper_step_weights
from .model import ModelConfig
from .study import StudyConfig, StudyMethod
from .tracking import TrackingConfig
from .train import TrainConfig
from .tune import SearchSpaceConfig, TuneConfig

__all__ = [
    "Config", "ConfigError", "DataConfig", "EvaluationConfig", "MethodConfig", "ModelConfig", "PhantomConfig", "SearchSpaceConfig",
    "SplitConfig", "StudyConfig", "StudyMethod", "TrackingConfig", "TrainConfig", "TuneConfig", "apply_overrides", "config_from_dict",
    "load_config", "metric_problem", "paper_step_weights", "set_path", "summary_keys",
]


class Config(Section):
    """The whole experiment. ``output_dir`` is made absolute against the directory the config is loaded
    in; relative paths in sections resolve under it."""

    name: str = "bidpm"
    output_dir: str = "outputs"
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)

    @model_validator(mode="after")
    def _cross(self) -> "Config":
        # Absolute once, at load: Tune trials and Ray workers run in other working directories, where
        # a relative output_dir would silently point somewhere else.
        if "://" not in self.output_dir and not os.path.isabs(self.output_dir):
            object.__setattr__(self, "output_dir", str(Path(self.output_dir).resolve()))
        self.model.check_levels()
        if (self.model.kind == "cyclegan") != (self.method.name == "cyclegan"):
            raise ValueError("model.kind=cyclegan and method.name=cyclegan go together (the CycleGAN objective needs "
                             "its generators and discriminators); set both or neither")
        if self.method.name == "cyclegan" and list(self.method.time_grid) != [0.0, 1.0]:
            raise ValueError(f"method.time_grid: CycleGAN is a one-step map; use [0.0, 1.0] (got {self.method.time_grid})")
        if self.train.batch_size < 2 and self._mixed_batches():
            raise ValueError(
                f"train.batch_size={self.train.batch_size}: with data.pairing_ratio < 1 (or a study ratio < 1) every batch "
                "mixes paired and unpaired rows, which needs at least 2 rows per worker; set train.batch_size >= 2")
        for field, name, split in (("tune.metric", self.tune.metric, "val"),
                                   ("train.checkpoint_score", self.train.checkpoint_score, "val"),
                                   ("tracking.promote_metric", self.tracking.promote_metric, "test")):
            problem = metric_problem(name, split)
            if problem:
                raise ValueError(f"{field}: {problem}")
        if self.model.kind in ("unet", "cyclegan"):
            f = 2 ** self.model.depth
            h, w = self.data.image_size
            if h % f or w % f:
                raise ValueError(
                    f"data.image_size: {h}x{w} is not divisible by 2^depth = {f} "
                    f"(model.channel_mults has {len(self.model.channel_mults)} levels); "
                    f"use sides divisible by {f} or fewer levels"
                )
        return self

    def _mixed_batches(self) -> bool:
        """Will some run of this config train on batches of paired + unpaired rows?"""
        return self.data.pairing_ratio < 1.0 or bool(self.study.methods and min(self.study.pairing_ratios) < 1.0)

    # --- paths -------------------------------------------------------------------------------
    def resolve_path(self, p: str) -> str:
        """URIs and absolute paths as given; relative paths under ``output_dir`` (made absolute)."""
        if "://" in p or os.path.isabs(p):
            return p
        return str((Path(self.output_dir) / p).resolve())

    @property
    def shards_path(self) -> str:
        return self.resolve_path(self.data.shards_dir)

    @property
    def storage_path(self) -> str:
        return self.resolve_path(self.train.storage_path)

    @property
    def mlflow_uri(self) -> str:
        uri = self.tracking.tracking_uri
        if uri:
            return uri
        return "sqlite:///" + str((Path(self.output_dir) / "mlflow.db").resolve())

    # --- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``section.key -> value`` (lists kept as lists) for MLflow params and tables."""
        out: dict[str, Any] = {}

        def walk(prefix: str, d: dict[str, Any]) -> None:
            for k, v in d.items():
                key = f"{prefix}.{k}" if prefix else k
                if isinstance(v, dict):
                    walk(key, v)
                else:
                    out[key] = v

        walk("", self.to_dict())
        return out


# What a training run reports (bidpm.train.loop: per epoch, rank 0 with its checkpoint) and what promotion
# scores (the test split): ``<split>/<fwd|bwd>_<metric>_<mean|std>``, ``<split>/<metric>_mean`` (both
# directions), ``<split>/images``; test scoring adds per-volume ``_vol_`` and SynthRAD ``_hu_`` keys. The same
# schema as ``bidpm.evaluation.summary_keys`` (not imported: it pulls in torch; a unit test keeps them equal).
METRIC_NAMES = ("ssim", "psnr", "mae")
TRAIN_KEYS = ("epoch", "step")     # plus anything under train/ (loss components differ per method)


def summary_keys(split: str) -> list[str]:
    return ([f"{split}/{d}_{m}_{s}" for d in ("fwd", "bwd") for m in METRIC_NAMES for s in ("mean", "std")]
            + [f"{split}/{m}_mean" for m in METRIC_NAMES] + [f"{split}/images"])


def metric_problem(name: str, split: str) -> Optional[str]:
    """Why no result will carry metric ``name`` (None when one will). ``split``: "val" for what trials and
    checkpoints are ranked by, "test" for promotion. Checked at load: a name no trial reports was found
    only after the first epoch (61 s into a quickstart), as a traceback."""
    import difflib

    if split == "val":
        known = summary_keys("val") + list(TRAIN_KEYS)
        if name in known or (name.startswith("train/") and len(name) > 6):
            return None
    else:
        known = summary_keys("test")
        vol = re.fullmatch(r"test/(fwd|bwd)_(vol|hu)_(ssim|psnr|mae)_(mean|std)", name)
        if name in known or vol:
            return None
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return (f"{name!r} is not a metric that is reported ({'validation, every epoch' if split == 'val' else 'test split'}); "
            f"use one of {close or known[:4]}" + (" ..." if not close else ""))


def _format_validation(err: ValidationError, origin: str) -> str:
    """One line (a user error is one line on stderr): every wrong field with its rule, '; '-separated."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo? see the section's fields in bidpm/config/)"
        got = e["type"] != "extra_forbidden" and not isinstance(e.get("input"), dict)
        parts.append((f"{loc}: " if loc else "") + msg + (f" (got {e['input']!r})" if got else ""))
    return f"invalid config ({origin}): " + "; ".join(parts)


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` in a nested dict; values parse as YAML (``[0,0.5,1]``, ``true``, ``1e-4``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=3")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key segment")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
        set_path(raw, key.strip(), value, what=f"override {item!r}")
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
        origin += " + overrides " + " ".join(overrides)
    if not (raw.get("tracking") or {}).get("tracking_uri") and os.environ.get("MLFLOW_TRACKING_URI"):
        raw.setdefault("tracking", {})["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]
        origin += " + MLFLOW_TRACKING_URI from the environment"
    return config_from_dict(raw, origin)
