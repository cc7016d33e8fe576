"""One typed config from YAML (+ ``key=value`` overrides) to every part of the platform.

``root`` (the ``Config`` and its cross-section rules), one module per section, ``loader`` (YAML,
overrides, validation), ``metrics`` (the metric-name schema). Loading a config imports pydantic and
yaml only: no torch, no Ray.
"""

from .base import ConfigError, Section
from .data import DataConfig, PhantomConfig, SplitConfig
from .evaluation import EvaluationConfig
from .loader import apply_overrides, config_from_dict, load_config, set_path, with_overrides
from .method import MethodConfig, paper_step_weights
from .metrics import metric_problem, summary_keys
from .model import ModelConfig
from .root import Config
from .study import StudyConfig, StudyMethod
from .tracking import TrackingConfig
from .train import TrainConfig
from .tune import SearchSpaceConfig, TuneConfig

__all__ = [
    "Config", "ConfigError", "DataConfig", "EvaluationConfig", "MethodConfig", "ModelConfig", "PhantomConfig", "SearchSpaceConfig",
    "Section", "SplitConfig", "StudyConfig", "StudyMethod", "TrackingConfig", "TrainConfig", "TuneConfig", "apply_overrides",
    "config_from_dict", "load_config", "metric_problem", "paper_step_weights", "set_path", "summary_keys", "with_overrides",
]
