"""A trained model: velocity field + its config + where it came from, built in ONE place.

``TrainedModel.from_checkpoint`` (a training checkpoint folder, weights only:
``torch.load(weights_only=True)``) is how every checkpoint becomes a model - a registered one too,
whose checkpoint artifact ``tracking.pyfunc.load_model`` downloads first. ``sample(x, direction,
grid)`` runs the Euler solver (``method.solver``) directly: no training objective, so no LPIPS
weights are needed to synthesise. The network is the EMA copy (what validation and the registry
score). Imports torch; no MLflow, no Ray.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .config import Config, ConfigError
from .method.solver import Direction, check_direction, check_grid, euler_integrate

__all__ = ["TrainedModel", "check_compatible", "pick_device"]


@dataclass
class TrainedModel:
    """``net``: u_theta (EMA weights) in eval mode; ``cfg``: the model's own Config (data settings decide
    normalisation and image size); ``origin``: a human description (``checkpoint <path>`` / ``model <uri>``)."""

    net: nn.Module
    cfg: Config
    origin: str

    @property
    def grid(self) -> list[float]:
        """The training grid ``method.time_grid`` (the default synthesis grid)."""
        return list(self.cfg.method.time_grid)

    @property
    def device(self) -> torch.device:
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def accelerate(self, cfg: Config) -> "TrainedModel":
        """``evaluation.compile``/``channels_last`` (on CUDA by default) applied to ``net`` for synthesis and
        scoring; the weights are shared, the maths unchanged (``model.runtime.inference_field``). Also the
        process-wide ``train.matmul_precision``/``cudnn_benchmark`` (TF32, cuDNN autotuning: CUDA by default)."""
        from .model.runtime import inference_field, set_backends

        ev = cfg.evaluation
        set_backends(cfg.train.matmul_precision, cfg.train.cudnn_benchmark, self.device)
        self.net = inference_field(self.net, self.device, ev.compile, ev.channels_last, ev.compile_mode, ev.compile_backend)
        return self

    def to(self, device: str | torch.device) -> "TrainedModel":
        self.net.to(device)
        return self

    def sample(self, x: Tensor, direction: Direction = "forward", grid: Optional[Sequence[float]] = None) -> Tensor:
        """Algorithm 2 on one batch: forward maps sources to synthetic targets (X^f_1), backward targets
        to synthetic sources (X^b_0). ``grid`` None = the training grid. x must be on ``device``."""
        g = check_grid(self.grid if grid is None else grid, "synthesis grid")
        with torch.inference_mode():
            return euler_integrate(self.net, x, g, check_direction(direction))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "TrainedModel":
        """A checkpoint folder (or its ``state.pt``); errors name the path and the fix."""
        from .train.checkpoint import load_checkpoint_model

        ck = Path(path)
        if not ck.exists():
            raise ConfigError(f"--checkpoint {ck}: does not exist; pass a checkpoint folder holding state.pt "
                              "(<output_dir>/<train.storage_path>/<run_name>/checkpoint_*)")
        try:
            _, net, cfg = load_checkpoint_model(ck)
        except (FileNotFoundError, ValueError) as exc:  # load_checkpoint's own messages name the fix
            raise ConfigError(f"--checkpoint {ck}: {exc}") from None
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise ConfigError(f"--checkpoint {ck}: not a readable bidpm checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); pass the checkpoint_* folder or its state.pt") from None
        return cls(net.eval().requires_grad_(False), cfg, f"checkpoint {ck}").to(device)


def check_compatible(model_cfg: Config, cfg: Config, what: str) -> None:
    """A config given on the command line must describe the same data as the model was trained on."""
    if list(model_cfg.data.image_size) != list(cfg.data.image_size):
        raise ConfigError(
            f"{what} was trained on {model_cfg.data.image_size[0]}x{model_cfg.data.image_size[1]} slices but the config "
            f"says data.image_size={cfg.data.image_size}; drop the override / use the training config "
            "(synthesis always resizes to the model's own size)")
    if model_cfg.data.modalities != cfg.data.modalities:
        raise ConfigError(
            f"{what} maps {model_cfg.data.modalities[0]}<->{model_cfg.data.modalities[1]} but the config names "
            f"{cfg.data.modalities[0]}<->{cfg.data.modalities[1]}; use the training config or another model")


def pick_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; an unavailable CUDA device is a clear error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name
