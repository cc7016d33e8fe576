"""Where a trained model comes from: a training checkpoint folder or an MLflow model URI.

Shared by ``jobs/synthesize.py`` and ``jobs/evaluate.py``: both take ``--checkpoint`` or
``--model-uri`` and need the EMA network (what validation and the registry score) plus the model's own
``Config`` (its data settings decide normalisation and image size).
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Optional

from .config import Config, ConfigError


def checkpoint_from_model_uri(model_uri: str, cfg: Config):
    """``models:/<name>@<alias>`` (or ``/<version>``, ``runs:/...``) -> (EMA net, the model's Config).

    Downloads the logged ``BidpmPyfunc`` model into a temporary folder (removed afterwards: the
    network is in memory by then), loads it with ``mlflow.pyfunc.load_model`` (checks it is a bidpm
    model) and takes its network and config. Tracking store: ``cfg.mlflow_uri``, checked first
    (``tracking.use_store``), so an unreachable server fails in seconds with the fix.
    """
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from .tracking import BidpmPyfunc, use_store

    uri = use_store(cfg)
    with tempfile.TemporaryDirectory(prefix="bidpm-model-") as workdir:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=workdir))
        except (MlflowException, OSError) as exc:
            raise ConfigError(
                f"--model-uri {model_uri}: cannot be fetched from the tracking store {uri} "
                f"({str(exc).splitlines()[0]}); check the name/alias (`mlflow models` / the MLflow UI) and "
                f"tracking.tracking_uri (pass the training config with --config)"
            ) from None
        meta = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
        ck_rel = (((meta.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}).get("checkpoint", {}).get("path")
        if not ck_rel or not (local / ck_rel / "config.json").is_file():
            raise ConfigError(f"--model-uri {model_uri}: not a bidpm model (no checkpoint artifact in its MLmodel); "
                              "register models with jobs/tune_steps.py / bidpm.tracking.log_model")
        impl = mlflow.pyfunc.load_model(str(local)).unwrap_python_model()
    if not isinstance(impl, BidpmPyfunc):
        raise ConfigError(f"--model-uri {model_uri}: holds a {type(impl).__name__}, not a bidpm model (BidpmPyfunc)")
    return impl.net, impl.cfg


def load_model(checkpoint: Optional[str], model_uri: Optional[str], cfg: Config, explicit_config: bool, device: str):
    """(EMA net on ``device``, the model's Config, a description) from a checkpoint folder or a model URI.

    ``explicit_config``: the user passed a config / data overrides, which must then describe the
    same data as the model (``check_compatible``)."""
    if checkpoint:
        from .train.checkpoint import load_checkpoint_model

        ck = Path(checkpoint)
        if not ck.exists():
            raise ConfigError(f"--checkpoint {ck}: does not exist; pass a checkpoint folder holding state.pt "
                              "(<output_dir>/<train.storage_path>/<run_name>/checkpoint_*)")
        try:
            _, net, model_cfg = load_checkpoint_model(ck)
        except (FileNotFoundError, ValueError) as exc:  # load_checkpoint's own messages name the fix
            raise ConfigError(f"--checkpoint {ck}: {exc}") from None
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise ConfigError(f"--checkpoint {ck}: not a readable bidpm checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); pass the checkpoint_* folder or its state.pt") from None
        what = f"checkpoint {ck}"
    else:
        net, model_cfg = checkpoint_from_model_uri(str(model_uri), cfg)
        what = f"model {model_uri}"
    if explicit_config:
        check_compatible(model_cfg, cfg, what)
    return net.to(device).eval(), model_cfg, what


def check_compatible(model_cfg: Config, cfg: Config, what: str) -> None:
    """A config given on the command line must describe the same data as the model was trained on."""
    if list(model_cfg.data.image_size) != list(cfg.data.image_size):
        raise ConfigError(
            f"{what} was trained on {model_cfg.data.image_size[0]}x{model_cfg.data.image_size[1]} slices but the config "
            f"says data.image_size={cfg.data.image_size}; drop the override / use the training config "
            "(synthesis always resizes to the model's own size)"
        )
    if model_cfg.data.modalities != cfg.data.modalities:
        raise ConfigError(
            f"{what} maps {model_cfg.data.modalities[0]}<->{model_cfg.data.modalities[1]} but the config names "
            f"{cfg.data.modalities[0]}<->{cfg.data.modalities[1]}; use the training config or another model"
        )


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name
