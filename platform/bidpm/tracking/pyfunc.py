"""The logged model: a training checkpoint as an MLflow pyfunc that synthesises in both directions.

Why pyfunc and not ``mlflow.pytorch.log_model``: its default torch.export format froze the batch
dimension to the input example's (batch 1 -> batch 4 failed). The pyfunc runs the Euler unroll
(Algorithm 2) through ``bidpm.trained.TrainedModel``, on any batch size, in either direction
(``params={"direction": ...}``); it is pickled by reference, so loading needs only ``bidpm`` and ``mlflow``.

The pyfunc is for SERVING only (``mlflow models serve``, ``mlflow.pyfunc.load_model``), which unpickles
``python_model.pkl``: serve only models from a registry you trust. The platform itself (promotion,
evaluation, synthesis) never loads the pickle: ``TrainedModel.from_model_uri`` reads the checkpoint
artifact's weights (``weights_only=True``) and config, which name a model by ``metadata.bidpm.format``.
Nothing of the config but its dump is stored (``Config.to_dict``: no pseudonym salt, no subject ids).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np

from ..config import Config

MODEL_FORMAT = "bidpm-pyfunc-v1"


class BidpmPyfunc(mlflow.pyfunc.PythonModel):
    """Synthesis (paper Algorithm 2) from a training checkpoint, as an MLflow pyfunc.

    predict(x: float32 (B, C, H, W) in [-1, 1], params={"direction": "forward"|"backward"}) -> (B, C, H, W),
    with the EMA weights on the trained ``method.time_grid``. ``self.model`` is the ``TrainedModel``
    read from the checkpoint artifact. For serving only: the platform's jobs never load this class
    (``TrainedModel.from_model_uri`` reads the same checkpoint without unpickling it).
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


def checkpoint_sha256(checkpoint_dir: str) -> str:
    """sha256 of the checkpoint's ``state.pt``: which weights a logged model holds."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    with open(Path(checkpoint_dir) / "state.pt", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def log_model(cfg: Config, run_id: str, checkpoint_dir: str) -> str:
    """Log the checkpoint as a ``BidpmPyfunc`` model in run ``run_id``; returns its model URI.

    Idempotent per run and weights: a model of this run already logged (READY) from the same
    ``state.pt`` is returned instead of a second copy (a driver rerun after a crash in the registry
    step logs nothing twice)."""
    import torch
    from mlflow import MlflowClient

    sha = checkpoint_sha256(checkpoint_dir)
    exp_id = MlflowClient().get_run(run_id).info.experiment_id
    for m in mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'"):
        if m.tags.get("bidpm.checkpoint_sha256") == sha and str(m.status).endswith("READY"):
            return f"models:/{m.model_id}"
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=BidpmPyfunc(),
            artifacts={"checkpoint": str(checkpoint_dir)},
            signature=model_signature(cfg),
            input_example=(np.zeros((2, cfg.model.in_channels, *cfg.data.image_size), np.float32), {"direction": "forward"}),
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", "bidpm"],
            tags={"bidpm.format": MODEL_FORMAT, "bidpm.input_shape": input_shape(cfg), "bidpm.checkpoint_sha256": sha},
            metadata={"bidpm.format": MODEL_FORMAT, "bidpm.input_shape": input_shape(cfg)},
        )
    return info.model_uri
