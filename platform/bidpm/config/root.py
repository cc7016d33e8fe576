"""The root of the typed config: every section, the cross-section rules and the resolved paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from .base import Section
from .data import DataConfig
from .evaluation import EvaluationConfig
from .method import STEP_METHODS, MethodConfig
from .metrics import NFE_KEY, metric_problem
from .model import ModelConfig
from .study import StudyConfig
from .tracking import TrackingConfig
from .train import TrainConfig
from .tune import TuneConfig


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
        # the network's inputs follow the method: shortcut / MeanFlow condition on the step (model.step_conditioned)
        object.__setattr__(self.model, "step_conditioned", self.method.name in STEP_METHODS)
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
            problem = metric_problem(name, split, tuple(self.data.image_size))
            if problem:
                raise ValueError(f"{field}: {problem}")
        for i, obj in enumerate(self.tune.objectives):
            problem = None if obj.metric == NFE_KEY else metric_problem(obj.metric, "val", tuple(self.data.image_size))
            if problem:
                raise ValueError(f"tune.objectives[{i}].metric: {problem} (or {NFE_KEY!r}: the trial's Euler steps)")
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
