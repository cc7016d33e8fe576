"""The logged model format, with one owner: ``log_model`` writes a training checkpoint as an MLflow
pyfunc (MLmodel + the checkpoint artifact), ``load_model`` reads one back.

Why pyfunc and not ``mlflow.pytorch.log_model``: its torch.export format froze the batch dimension to
the input example's. The pyfunc runs Algorithm 2 through ``TrainedModel`` on any batch, in either
direction (``params={"direction": ...}``). It is for SERVING only (``mlflow models serve``), which
unpickles ``python_model.pkl``: serve only models from a registry you trust. The platform itself
never loads the pickle: ``load_model`` reads the MLmodel as YAML and the checkpoint artifact's
weights (``weights_only=True``). Only the config's dump is stored (no pseudonym salt, no subject ids).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import mlflow
import numpy as np

from ..config import Config, ConfigError
from ..io.checkpoints import state_sha256
from .runs import TAG_WEIGHTS

MODEL_FORMAT = "bidpm-pyfunc-v1"


class BidpmPyfunc(mlflow.pyfunc.PythonModel):
    """Synthesis (paper Algorithm 2) from a training checkpoint, as an MLflow pyfunc.

    predict(x: float32 (B, C, H, W) in [-1, 1], params={"direction": "forward"|"backward"}) -> (B, C, H, W),
    with the EMA weights on the trained ``method.time_grid``. ``self.model`` is the ``TrainedModel``
    read from the checkpoint artifact. For serving only: the platform's jobs never load this class
    (``load_model`` reads the same checkpoint without unpickling it).
    """

    def load_context(self, context):  # noqa: ANN001 - MLflow reads type hints as a schema; none on purpose
        from ..trained import TrainedModel

        self.model = TrainedModel.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - see load_context
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32), device=self.model.device)
        y = self.model.sample(x, (params or {}).get("direction", "forward"))
        return y.cpu().numpy().astype(np.float32)


def model_signature(cfg: Config) -> Any:
    """Tensor in/out with a free batch dimension (-1) and the direction as an inference param."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    h, w = cfg.data.image_size
    spec = TensorSpec(np.dtype(np.float32), (-1, cfg.model.in_channels, h, w))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([spec]),
                          params=ParamSchema([ParamSpec("direction", "string", "forward")]))


def input_shape(cfg: Config) -> str:
    """``CxHxW`` of the inputs a model takes (a registered model holds one shape)."""
    h, w = cfg.data.image_size
    return f"{cfg.model.in_channels}x{h}x{w}"


def log_model(cfg: Config, run_id: str, checkpoint_dir: str) -> str:
    """Log the checkpoint as a ``BidpmPyfunc`` model in run ``run_id``; returns its model URI.

    Idempotent per run and weights: a model of this run already logged (READY) from the same
    ``state.pt`` is returned instead of a second copy (a driver rerun after a crash in the registry
    step logs nothing twice)."""
    import torch
    from mlflow import MlflowClient

    sha = state_sha256(checkpoint_dir)
    exp_id = MlflowClient().get_run(run_id).info.experiment_id
    for m in mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'"):
        if m.tags.get(TAG_WEIGHTS) == sha and str(m.status).endswith("READY"):
            return f"models:/{m.model_id}"
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=BidpmPyfunc(),
            artifacts={"checkpoint": str(checkpoint_dir)},
            signature=model_signature(cfg),
            input_example=(np.zeros((2, cfg.model.in_channels, *cfg.data.image_size), np.float32), {"direction": "forward"}),
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", "bidpm"],
            tags={"bidpm.format": MODEL_FORMAT, "bidpm.input_shape": input_shape(cfg), TAG_WEIGHTS: sha},
            metadata={"bidpm.format": MODEL_FORMAT, "bidpm.input_shape": input_shape(cfg)},
        )
    return info.model_uri


@contextlib.contextmanager
def model_checkpoint(model_uri: str, cfg: Config) -> Iterator[Path]:
    """The checkpoint folder inside logged/registered model ``model_uri`` (``models:/name@alias``,
    ``models:/name/3``, ``runs:/...``) of the store ``cfg.mlflow_uri``, for the ``with`` block: downloaded
    into a temporary folder, its MLmodel read as YAML (never the pickle), its checkpoint artifact
    confined to the download. Errors name the URI and the fix."""
    import yaml
    from mlflow.exceptions import MlflowException

    from .store import use_store

    uri = use_store(cfg)                 # an unreachable server fails in seconds
    with tempfile.TemporaryDirectory(prefix="bidpm-model-") as workdir:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=workdir))
        except (MlflowException, OSError) as exc:
            raise ConfigError(
                f"--model-uri {model_uri}: cannot be fetched from the tracking store {uri} "
                f"({str(exc).splitlines()[0]}); check the name/alias (`mlflow models` / the MLflow UI) and "
                f"tracking.tracking_uri (pass the training config with --config)") from None
        meta = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
        meta = meta if isinstance(meta, dict) else {}
        flavor = ((meta.get("flavors") or {}).get("python_function") or {})
        ck_rel = ((flavor.get("artifacts") or {}).get("checkpoint") or {}).get("path")
        fmt = (meta.get("metadata") or {}).get("bidpm.format")
        ck = (local / str(ck_rel)).resolve() if ck_rel else None
        if (ck is None or local.resolve() not in ck.parents or not (ck / "state.pt").is_file()
                or fmt not in (None, MODEL_FORMAT)):
            raise ConfigError(f"--model-uri {model_uri}: not a bidpm model (no checkpoint artifact with state.pt in "
                              "its MLmodel); register models with jobs/tune_steps.py / bidpm.tracking.log_model")
        verify_weights(model_uri, ck)
        yield ck


def recorded_sha256(model_uri: str) -> tuple[Optional[str], str]:
    """(the ``bidpm.checkpoint_sha256`` recorded in the tracking DATABASE for ``model_uri``'s logged model,
    what the URI resolved to). Why the database: the artifact store is the volume every Ray pod mounts
    read-write; the tag was written by ``log_model`` when the weights were logged."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    rest = model_uri.removeprefix("models:/")
    try:
        if model_uri.startswith("runs:/"):
            run_id, _, name = model_uri.removeprefix("runs:/").partition("/")
            exp_id = client.get_run(run_id).info.experiment_id
            found = [m for m in mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list",
                                                            filter_string=f"source_run_id = '{run_id}'")
                     if m.name == name.strip("/")]
            model_id, what = (found[-1].model_id if found else None), f"run {run_id}'s model {name!r}"
        elif "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
            model_id, what = _logged_model_id(mv), f"registered model {name!r} version {mv.version}"
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
            model_id, what = _logged_model_id(client.get_model_version(name, version)), f"registered model {name!r} version {version}"
        else:
            model_id, what = rest, f"logged model {rest}"
        tags = client.get_logged_model(model_id).tags if model_id else {}
    except MlflowException:
        return None, model_uri
    return tags.get(TAG_WEIGHTS), what


def _logged_model_id(mv: Any) -> Optional[str]:
    """The logged model a registered version was made from (MLflow 3 leaves ``model_id`` unset when the
    version was registered from a ``models:/m-...`` URI, which is then its ``source``)."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = str(mv.source or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def verify_weights(model_uri: str, checkpoint_dir: Path) -> None:
    """Refuse weights that are not the ones registered: their sha256 against ``recorded_sha256``."""
    expected, what = recorded_sha256(model_uri)
    fix = ("the artifact store was written after registration: restore the file from a backup or register the "
           "checkpoint again (jobs/tune_steps.py); load a checkpoint folder you trust with --checkpoint")
    if expected is None:
        raise ConfigError(f"--model-uri {model_uri}: {what} has no recorded weights digest (tag bidpm.checkpoint_sha256), "
                          f"so its state.pt cannot be verified; fix: {fix}")
    actual = state_sha256(str(checkpoint_dir))
    if actual != expected:
        raise ConfigError(f"--model-uri {model_uri}: the weights of {what} are not the registered ones (state.pt sha256 "
                          f"{actual[:16]}..., registered {expected[:16]}...); fix: {fix}")


def load_model(model_uri: str, cfg: Config, device: Any = "cpu") -> Any:
    """The ``TrainedModel`` of logged/registered model ``model_uri``, loaded from its weights exactly as a
    checkpoint folder is. Why not the pyfunc: whoever can write to the registry could otherwise run code
    in every driver that promotes, evaluates or synthesises with the model."""
    from ..trained import TrainedModel

    with model_checkpoint(model_uri, cfg) as ck:
        try:
            model = TrainedModel.from_checkpoint(ck, device)
        except ConfigError as exc:
            raise ConfigError(f"--model-uri {model_uri}: {str(exc).removeprefix(f'--checkpoint {ck}: ')}") from None
    model.origin = f"model {model_uri}"
    return model
