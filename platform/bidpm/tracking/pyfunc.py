"""The logged model: a training checkpoint as an MLflow pyfunc that synthesises in both directions.

Why pyfunc and not ``mlflow.pytorch.log_model``: its default torch.export format froze the batch
dimension to the input example's (batch 1 -> batch 4 failed). The pyfunc runs the Euler unroll
(Algorithm 2) through ``bidpm.trained.TrainedModel``, on any batch size, in either direction
(``params={"direction": ...}``); it is pickled by reference, so loading needs only ``bidpm`` and ``mlflow``.
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
    (jobs take it through ``TrainedModel.from_model_uri``).
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
    """Log the checkpoint as a ``BidpmPyfunc`` model in run ``run_id``; returns its model URI."""
    import torch

    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=BidpmPyfunc(),
            artifacts={"checkpoint": str(checkpoint_dir)},
            signature=model_signature(cfg),
            input_example=(np.zeros((2, cfg.model.in_channels, *cfg.data.image_size), np.float32), {"direction": "forward"}),
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", "bidpm"],
            tags={"bidpm.format": MODEL_FORMAT, "bidpm.input_shape": input_shape(cfg)},
        )
    return info.model_uri
