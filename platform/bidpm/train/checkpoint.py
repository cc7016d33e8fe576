"""Training checkpoints: one ``state.pt`` (+ a readable ``config.json``) per checkpoint directory.

``state.pt`` holds plain containers of tensors and numbers only, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs when a checkpoint is opened):

    format         CHECKPOINT_FORMAT (bumped when the layout changes)
    model          state_dict of u_theta (unwrapped from DDP: no ``module.`` prefix)
    ema            EMA.state_dict() (its averaged module + decay, warm-up, update count)
    optimizer      Adam state_dict
    scaler         GradScaler state_dict (fp16, on any device) or None
    step, epoch    optimizer steps done, epochs completed (1-based: epoch 1 is done after the first)
    config         the resolved Config as a dict (``Config.to_dict()``)
    manifest_digest  content digest of the shards trained on (resume refuses other shards)

The directory is what ``ray.train.report(checkpoint=Checkpoint.from_directory(dir))`` uploads;
``samples.png`` (see samples.py) sits beside it.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from bidpm.config import Config, config_from_dict
from bidpm.model import EMA, build_velocity_field, unwrap_model

CHECKPOINT_FORMAT = 1
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
_KEYS = ("format", "model", "ema", "optimizer", "scaler", "step", "epoch", "config", "manifest_digest")


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    step: int,
    epoch: int,
    cfg: Config,
    manifest_digest: str,
    scaler: Optional[torch.amp.GradScaler] = None,
) -> Path:
    """Write ``state.pt`` and ``config.json`` into ``directory`` (temp names, then renamed); returns the dir."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
        "ema": _to_cpu(ema.state_dict()),
        "optimizer": _to_cpu(optimizer.state_dict()),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "step": int(step),
        "epoch": int(epoch),
        "config": cfg.to_dict(),
        "manifest_digest": str(manifest_digest),
    }
    _atomic_write(d / STATE_FILE, lambda p: torch.save(state, p))
    _atomic_write(d / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(state["config"], indent=2)))
    return d


def load_checkpoint(path: Any, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint's state dict safely (``weights_only=True``).

    ``path``: the checkpoint directory, its ``state.pt``, or a ``ray.train.Checkpoint``.
    """
    if hasattr(path, "as_directory"):  # ray.train.Checkpoint (local or remote storage)
        with path.as_directory() as d:
            return load_checkpoint(d, map_location)
    p = Path(path)
    f = p / STATE_FILE if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {f} (pass a checkpoint directory holding {STATE_FILE}, e.g. "
            "<storage_path>/<run_name>/checkpoint_*/, or result.checkpoint of run_training)"
        )
    state = torch.load(f, map_location=map_location, weights_only=True)
    missing = [k for k in _KEYS if k not in state]
    if missing or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{f}: not a bidpm checkpoint of format {CHECKPOINT_FORMAT} (format {state.get('format')!r}, "
            f"missing keys {missing}); it was written by another version - retrain or load it with that version"
        )
    return state


def load_checkpoint_model(path: Any, map_location: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module, Config]:
    """Checkpoint -> (model, ema_model, cfg) for synthesis/evaluation; both models in eval mode.

    ``ema_model`` carries the EMA weights (what validation reports and what synthesis should use).
    """
    state = load_checkpoint(path, map_location)
    cfg = config_from_dict(state["config"], origin=f"checkpoint {path}")
    image_size = tuple(cfg.data.image_size)
    model = build_velocity_field(cfg.model, image_size)
    model.load_state_dict(state["model"])
    ema = EMA(build_velocity_field(cfg.model, image_size), decay=cfg.train.ema_decay)
    ema.load_state_dict(state["ema"])
    return model.to(map_location).eval(), ema.module.to(map_location).eval(), cfg


def restore_state(state: dict[str, Any], model: nn.Module, ema: EMA,
                  scaler: torch.amp.GradScaler) -> tuple[Optional[dict], int, int]:
    """A resume (``train.loop``): weights, EMA and the fp16 loss scale back from ``state``; returns
    (optimizer state, step, finished epochs); the optimizer is built later, on the prepared model.

    The scale matters: a fresh scaler restarts at 2^16 and skips steps backing off again. A checkpoint
    without scaler state (fp32/bf16) leaves the scaler as built; a disabled scaler ignores one."""
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    if state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    return state["optimizer"], int(state["step"]), int(state["epoch"])


def check_resumable(state: dict[str, Any], cfg: Config, manifest_digest: str) -> None:
    """Refuse to continue a run on other shards or with another network shape (the weights would not fit)."""
    if state["manifest_digest"] != manifest_digest:
        raise ValueError(
            f"train.run_name={cfg.train.run_name!r}: its latest checkpoint was trained on shards with digest "
            f"{state['manifest_digest']}, the shards now have {manifest_digest}; pick a new train.run_name "
            "(or restore the shards it was trained on)"
        )
    current = cfg.model.model_dump(mode="json")
    stored = state["config"]["model"]
    fields = type(cfg.model).model_fields          # a field added since the checkpoint, at its default, is no change
    if set(stored) - set(current) or any(stored.get(k, fields[k].get_default(call_default_factory=True)) != v
                                         for k, v in current.items()):
        raise ValueError(
            f"train.run_name={cfg.train.run_name!r}: its latest checkpoint has model settings "
            f"{state['config']['model']}, the config now has {current}; "
            "pick a new train.run_name to train this model from scratch"
        )


def _to_cpu(obj: Any) -> Any:
    """Tensors anywhere in nested dicts/lists -> CPU (a CUDA tensor would pin the checkpoint to a GPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _atomic_write(final: Path, write) -> None:
    """Write to ``<name>.tmp`` then rename: a crash never leaves a partial file under the real name.

    Not ``storage.write_bytes_atomic``: that needs the bytes in memory, and the state (model, EMA and
    Adam moments) is the largest thing a worker writes; ``torch.save`` streams it to the file."""
    tmp = final.with_name(final.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, final)
    except (OSError, RuntimeError) as exc:   # full or read-only: no temp left, nothing under the real name
        _discard(tmp)
        if isinstance(exc, RuntimeError) and "write" not in str(exc):   # torch.save reports ENOSPC as RuntimeError
            raise
        raise OSError(getattr(exc, "errno", None) or errno.EIO,
                      f"cannot write checkpoint file {final}: {getattr(exc, 'strerror', None) or exc}; free space "
                      f"there or choose another location") from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
