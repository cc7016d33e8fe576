"""MLflow: the study's runs, its artifacts, the logged model and registry promotion by alias.

Layout in the tracking store (experiment ``cfg.tracking.experiment_name``):
  - one parent run per study (tag ``bidpm.study``), found again on resume;
  - one nested child run per Tune trial (tags ``mlflow.parentRunId``, ``bidpm.trial_id``), holding the
    flattened resolved config as params (grids and weights as readable lists), per-epoch metrics,
    the resolved config YAML, the sample grid and the trial's best checkpoint;
  - the best trial's model logged as a pyfunc (``BidpmPyfunc``: checkpoint + a thin wrapper pickled by
    reference, so loading needs only ``bidpm`` and ``mlflow``), registered under
    ``cfg.tracking.registered_model_name`` with alias ``challenger``; alias ``champion`` moves only when
    the challenger beats the champion on the TEST split (ties keep the champion).

Why pyfunc and not ``mlflow.pytorch.log_model``: its default torch.export format froze the batch
dimension to the input example's (batch 1 -> batch 4 failed). The pyfunc runs the Euler unroll
(Algorithm 2) itself, on any batch size, in either direction (``params={"direction": ...}``).

Everything goes through ``MlflowClient`` with explicit run ids (no fluent "active run"), because
Tune's callbacks run while other runs are open; the one exception is ``log_model``.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .config import Config
from .data.manifest import manifest_digest

MODEL_FORMAT = "bidpm-pyfunc-v1"
CHALLENGER, CHAMPION = "challenger", "champion"
TAG_STUDY, TAG_ROLE, TAG_TRIAL = "bidpm.study", "bidpm.role", "bidpm.trial_id"
TAG_PARENT = "mlflow.parentRunId"


class TrackingError(RuntimeError):
    """The tracking store or registry cannot be used as configured; the message says how to fix it."""


# --- connecting -------------------------------------------------------------------------------------
def _check_http(uri: str, timeout_s: float) -> None:
    """GET <uri>/health: an ``mlflow server`` answers OK; a refused/timed-out socket fails in seconds
    (MLflow's own client retries for minutes, so this runs first)."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - configured URI
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404):     # a proxy / managed server without /health: the client call decides
            return
        raise TrackingError(_unreachable(uri, f"HTTP {exc.code}")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(_unreachable(uri, str(getattr(exc, "reason", exc)))) from None


def _unreachable(uri: str, why: str) -> str:
    return (
        f"MLflow tracking URI {uri} is unreachable ({why}). Start the server "
        f"(e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`), "
        f"or fix tracking.tracking_uri / MLFLOW_TRACKING_URI; leave both unset for the embedded SQLite "
        f"store in output_dir. Nothing was run."
    )


def use_store(cfg: Config) -> str:
    """Point MLflow (tracking and registry) at ``cfg.mlflow_uri`` after checking a server answers;
    returns the URI. Creates nothing in the store (``connect`` also makes the experiment)."""
    uri = cfg.mlflow_uri
    if uri.startswith(("http://", "https://")):
        _check_http(uri, cfg.tracking.connect_timeout_s)
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def connect(cfg: Config) -> tuple[MlflowClient, str]:
    """Point MLflow at ``cfg.mlflow_uri``, check it answers, create the experiment if needed.

    Returns (client, experiment_id). Raises TrackingError before any work starts when the store is
    unreachable. The experiment is created here, in the driver, because workers/trials that look it
    up by name fail when it does not exist yet.
    """
    uri = use_store(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
        if exp is None:
            exp_id = client.create_experiment(cfg.tracking.experiment_name, artifact_location=artifact_root(cfg))
        else:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"tracking.experiment_name: experiment {cfg.tracking.experiment_name!r} is deleted in {uri}; "
                    f"restore it (`mlflow experiments restore`) or choose another name"
                )
            exp_id = exp.experiment_id
    except MlflowException as exc:
        raise TrackingError(_unreachable(uri, str(exc).splitlines()[0])) from None
    return client, exp_id


def artifact_root(cfg: Config) -> Optional[str]:
    """Artifacts of an embedded SQLite store go next to it (``output_dir/mlartifacts``), not into the
    process's cwd (a Ray job's cwd is a temporary upload); a server decides for itself (None)."""
    uri = cfg.mlflow_uri
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def where(cfg: Config) -> str:
    """Human lines: where the runs are and how to browse them."""
    uri = cfg.mlflow_uri
    lines = [f"MLflow tracking store: {uri}  (experiment {cfg.tracking.experiment_name!r})"]
    if uri.startswith("sqlite:///"):
        lines.append(f"browse it with:  mlflow ui --backend-store-uri {uri}")
    elif uri.startswith("http"):
        lines.append(f"browse it at:  {uri}")
    return "\n".join(lines)


# --- provenance -------------------------------------------------------------------------------------
REPO_DIR = Path(__file__).resolve().parents[2]


def git_commit(cfg: Config) -> str:
    """The commit tagged on runs: ``tracking.git_commit`` when set, else HEAD of the checkout this
    package runs from, else 'unknown' (a ``ray job submit`` upload excludes .git: pass
    ``tracking.git_commit=$(git rev-parse HEAD)`` there)."""
    if cfg.tracking.git_commit:
        return cfg.tracking.git_commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(REPO_DIR), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def ray_job_id() -> str:
    """The Ray job this driver belongs to ('none' outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_job_id() if ray.is_initialized() else "none"
    except Exception:  # noqa: BLE001 - provenance only
        return "none"


def log_dataset(client: MlflowClient, run_id: str, cfg: Config, manifest: Mapping[str, Any], context: str = "train") -> None:
    """Dataset lineage: the shard folder as an MLflow dataset input, digest = the manifest's."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    source = resolve_dataset_source(cfg.shards_path)
    ds = MetaDataset(source=source, name=f"{cfg.data.layout}:{cfg.data.source_modality}->{cfg.data.target_modality}",
                     digest=manifest_digest(manifest)[:36])
    client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])])


# --- runs -------------------------------------------------------------------------------------------
def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_param_value(x) for x in v) + "]"
    return str(v)


def config_params(cfg: Config) -> dict[str, str]:
    """Flattened resolved config as MLflow params; lists stay readable (``[0.0, 0.5, 1.0]``)."""
    params = {k: _param_value(v) for k, v in cfg.flat().items()}
    params["method.n_steps"] = str(cfg.method.n_steps)
    return params


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """MLflow takes at most 100 params per call; params are immutable, so a resumed run re-logs the same."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in sorted(params.items())]
    existing = client.get_run(run_id).data.params
    items = [p for p in items if p.key not in existing]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """Log numeric entries only (Tune results carry strings and dicts too)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, int(step))
        for k, v in metrics.items()
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v)
    ]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])


def find_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> Optional[str]:
    """The newest run carrying all ``tags`` (used to resume the same parent/child runs)."""
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=filt, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def study_run(client: MlflowClient, experiment_id: str, cfg: Config, extra_tags: Mapping[str, str]) -> tuple[str, bool]:
    """Find (resume) or create the parent run of study ``cfg.tune.experiment_name``. Returns (run_id, resumed)."""
    key = {TAG_STUDY: cfg.tune.experiment_name, TAG_ROLE: "study"}
    run_id = find_run(client, experiment_id, key)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    run = client.create_run(experiment_id, run_name=cfg.tune.experiment_name, tags={**key, **extra_tags})
    log_params(client, run.info.run_id, config_params(cfg))
    client.log_text(run.info.run_id, cfg.to_yaml(), "config/study.yaml")
    return run.info.run_id, False


def trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, study: str, trial_id: str,
              trial_name: str, cfg: Config, extra_tags: Mapping[str, str]) -> str:
    """Find or create the nested child run of one trial; logs params and the resolved config once."""
    key = {TAG_STUDY: study, TAG_ROLE: "trial", TAG_TRIAL: trial_id}
    run_id = find_run(client, experiment_id, key)
    if run_id is None:
        run = client.create_run(experiment_id, run_name=trial_name, tags={**key, TAG_PARENT: parent_run_id, **extra_tags})
        run_id = run.info.run_id
        log_params(client, run_id, config_params(cfg))
        client.log_text(run_id, cfg.to_yaml(), "config/resolved.yaml")
    else:
        client.update_run(run_id, status="RUNNING")
    return run_id


# --- the logged model -------------------------------------------------------------------------------
class BidpmPyfunc(mlflow.pyfunc.PythonModel):
    """Synthesis (paper Algorithm 2) from a training checkpoint, as an MLflow pyfunc.

    predict(x: float32 (B, C, H, W) in [-1, 1], params={"direction": "forward"|"backward"}) -> (B, C, H, W).
    Uses the EMA weights when the checkpoint has them, on the trained ``method.time_grid``. Sampling
    needs no paired distance, so the method is ``bidpm.synthesis.sampling_method`` (L2: LPIPS weights are
    not needed to load).
    """

    def load_context(self, context):  # noqa: ANN001 - MLflow reads type hints as a schema; none on purpose
        from .synthesis import sampling_method
        from .train.checkpoint import load_checkpoint_model

        model, ema_model, cfg = load_checkpoint_model(context.artifacts["checkpoint"])
        self.cfg = cfg  # the model's own data/method settings (jobs read them through bidpm.model_source)
        self.net = (ema_model if ema_model is not None else model).eval()
        self.grid = list(cfg.method.time_grid)
        self.method = sampling_method(cfg.method)

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - see load_context
        import torch

        direction = (params or {}).get("direction", "forward")
        if direction not in ("forward", "backward"):
            raise ValueError(f"params.direction: {direction!r}; use 'forward' (source->target) or 'backward'")
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            y = self.method.sample(self.net, x, grid=self.grid, direction=direction)
        return y.cpu().numpy().astype(np.float32)


def model_signature(cfg: Config) -> Any:
    """Tensor in/out with a free batch dimension (-1) and the direction as an inference param."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    h, w = cfg.data.image_size
    spec = TensorSpec(np.dtype(np.float32), (-1, cfg.model.in_channels, h, w))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([spec]),
                          params=ParamSchema([ParamSpec("direction", "string", "forward")]))


def _input_shape(cfg: Config) -> str:
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
            tags={"bidpm.format": MODEL_FORMAT, "bidpm.input_shape": _input_shape(cfg)},
        )
    return info.model_uri


# --- evaluation on a split --------------------------------------------------------------------------
def evaluate_model(model_uri: str, cfg: Config, split: str = "test") -> dict[str, float]:
    """Both directions of a logged/registered model on ``split`` (never used for selection when 'test')."""
    model = mlflow.pyfunc.load_model(model_uri)
    return evaluate_predict(lambda x, d: model.predict(x, params={"direction": d}), cfg, split)


def evaluate_checkpoint(path: str, cfg: Config, split: str = "test") -> dict[str, float]:
    """The same evaluation straight from a training checkpoint (EMA weights, its own time grid)."""
    import torch

    from .synthesis import sampling_method
    from .train.checkpoint import load_checkpoint_model

    _, net, ck_cfg = load_checkpoint_model(path)
    method = sampling_method(ck_cfg.method)

    def predict(x: np.ndarray, direction: str) -> np.ndarray:
        with torch.no_grad():
            return method.sample(net, torch.from_numpy(x), direction=direction).numpy()

    return evaluate_predict(predict, cfg, split)


def evaluate_predict(predict: Callable[[np.ndarray, str], np.ndarray], cfg: Config, split: str = "test") -> dict[str, float]:
    """Score ``predict(x (B,1,H,W), direction) -> (B,1,H,W)`` on ``split`` in both directions.

    Returns ``{split}/fwd_<m>_mean``, ``{split}/bwd_<m>_mean`` (and _std) for m in ssim, psnr, mae
    (inside the mask), plus ``{split}/<m>_mean`` = mean of the two directions and ``{split}/count``.
    """
    import torch

    from .data.shards import read_split
    from .metrics import MetricAccumulator, image_metrics

    ds = read_split(cfg, split, columns=("source", "target", "mask"))
    acc = MetricAccumulator()
    n = 0
    for i, batch in enumerate(ds.iter_batches(batch_size=cfg.tracking.test_batch_size, batch_format="numpy")):
        if cfg.tracking.test_batches is not None and i >= cfg.tracking.test_batches:
            break
        src, tgt, mask = (np.stack([np.asarray(a, dtype=np.float32) for a in batch[k]])[:, None] for k in ("source", "target", "mask"))
        fwd, bwd = predict(src, "forward"), predict(tgt, "backward")
        m = torch.from_numpy(mask)
        acc.update(image_metrics(torch.from_numpy(fwd), torch.from_numpy(tgt), 2.0, m), prefix="fwd")
        acc.update(image_metrics(torch.from_numpy(bwd), torch.from_numpy(src), 2.0, m), prefix="bwd")
        n += len(src)
    if n == 0:
        raise TrackingError(f"the {split} split of {cfg.shards_path} is empty; give data.split.{split}_fraction > 0")
    raw = acc.compute()                                   # keys "fwd/ssim_mean" -> "{split}/fwd_ssim_mean"
    out = {f"{split}/{k.replace('/', '_')}": v for k, v in raw.items()}
    for m in ("ssim", "psnr", "mae"):
        out[f"{split}/{m}_mean"] = 0.5 * (raw[f"fwd/{m}_mean"] + raw[f"bwd/{m}_mean"])
    out[f"{split}/count"] = float(n)
    return out


# --- registry -------------------------------------------------------------------------------------------
def check_registry(client: MlflowClient, cfg: Config) -> None:
    """Fail early when ``registered_model_name`` exists but holds something else than this kind of model."""
    name = cfg.tracking.registered_model_name
    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        return                                                   # does not exist yet: fine
    fmt, shape = rm.tags.get("bidpm.format"), rm.tags.get("bidpm.input_shape")
    has_versions = bool(client.search_model_versions(f"name = '{name}'", max_results=1))
    fix = f"set tracking.registered_model_name to a new name, or delete the registered model {name!r}"
    if fmt != MODEL_FORMAT and (has_versions or fmt is not None):
        raise TrackingError(
            f"tracking.registered_model_name: registered model {name!r} exists and does not hold bidpm models "
            f"(tag bidpm.format = {fmt!r}, expected {MODEL_FORMAT!r}); {fix}"
        )
    if shape is not None and shape != _input_shape(cfg):
        raise TrackingError(
            f"tracking.registered_model_name: registered model {name!r} holds models for inputs {shape} "
            f"(C x H x W) but this config makes {_input_shape(cfg)} (model.in_channels, data.image_size); {fix}"
        )


def register(client: MlflowClient, cfg: Config, model_uri: str, run_id: str, tags: Mapping[str, str]) -> str:
    """Register ``model_uri`` and give it alias ``challenger``; all or nothing. Returns the version.

    If anything after the version's creation fails (tags, alias), the version is deleted again, so the
    registry never holds a half-registered version.
    """
    name = cfg.tracking.registered_model_name
    check_registry(client, cfg)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"bidpm.format": MODEL_FORMAT, "bidpm.input_shape": _input_shape(cfg)},
                                       description="Bi-DPM velocity field u_theta (synthesis in both directions)")
    else:
        client.set_registered_model_tag(name, "bidpm.format", MODEL_FORMAT)
        client.set_registered_model_tag(name, "bidpm.input_shape", _input_shape(cfg))
    mv = mlflow.register_model(model_uri, name, await_registration_for=300)
    try:
        if str(mv.status) not in ("READY", "ModelVersionStatus.READY"):
            raise TrackingError(f"registered model {name!r} version {mv.version} ended in status {mv.status}")
        for k, v in tags.items():
            client.set_model_version_tag(name, mv.version, k, str(v))
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
    except BaseException:
        client.delete_model_version(name, mv.version)
        raise
    return str(mv.version)


def alias_version(client: MlflowClient, name: str, alias: str) -> Optional[str]:
    """The version carrying ``alias``, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


@dataclass
class Promotion:
    """The outcome of a challenger vs champion comparison (recorded as tags and printed)."""

    name: str
    version: str
    metric: str
    mode: str
    challenger_score: float
    champion_version: Optional[str]
    champion_score: Optional[float]
    promoted: bool
    reason: str

    def describe(self) -> str:
        champ = "none" if self.champion_version is None else f"v{self.champion_version} {self.metric}={self.champion_score:.4f}"
        verdict = "PROMOTED to champion" if self.promoted else "champion kept"
        return (f"registry {self.name!r}: challenger v{self.version} {self.metric}={self.challenger_score:.4f} vs "
                f"champion {champ} -> {verdict} ({self.reason})")


def promote(client: MlflowClient, cfg: Config, version: str,
            evaluate: Optional[Callable[[str], Mapping[str, float]]] = None,
            challenger_scores: Optional[Mapping[str, float]] = None) -> Promotion:
    """Compare registered ``version`` with the current ``champion`` on the test split; move aliases.

    Both models are scored on the same split now (a stored score may come from other data). The
    challenger takes ``champion`` only if strictly better by ``tracking.promote_metric`` (ties keep the
    champion). ``evaluate(model_uri) -> metrics`` defaults to ``evaluate_model(uri, cfg, "test")``.
    """
    name, metric, mode = cfg.tracking.registered_model_name, cfg.tracking.promote_metric, cfg.tracking.promote_mode
    evaluate = evaluate or (lambda uri: evaluate_model(uri, cfg, "test"))
    version = str(version)
    client.get_model_version(name, version)                     # clear MLflow error if it does not exist
    scores = dict(challenger_scores) if challenger_scores is not None else dict(evaluate(f"models:/{name}/{version}"))
    if metric not in scores:
        raise TrackingError(f"tracking.promote_metric: {metric!r} is not among the evaluation metrics {sorted(scores)}")
    ours = float(scores[metric])
    champ_v = alias_version(client, name, CHAMPION)
    champ_score: Optional[float] = None
    if champ_v is None:
        promoted, reason = True, "no champion yet"
    elif champ_v == version:
        promoted, reason, champ_score = True, "already the champion", ours
    else:
        champ_score = float(evaluate(f"models:/{name}/{champ_v}")[metric])
        better = ours > champ_score if mode == "max" else ours < champ_score
        promoted = bool(better)
        reason = f"{'beats' if better else 'does not beat'} the champion ({mode} {metric}; ties keep the champion)"
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = Promotion(name, version, metric, mode, ours, champ_v, champ_score, promoted, reason)
    tags = {
        "bidpm.promotion.decision": "promoted" if promoted else "kept_champion",
        "bidpm.promotion.reason": reason,
        "bidpm.promotion.metric": metric,
        "bidpm.promotion.challenger_score": f"{ours:.6f}",
        "bidpm.promotion.champion_version": champ_v or "none",
        "bidpm.promotion.champion_score": "none" if champ_score is None else f"{champ_score:.6f}",
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    for k, v in scores.items():
        client.set_model_version_tag(name, version, f"bidpm.{k}", f"{float(v):.6f}")
    return decision


def decision_tags(decision: Promotion) -> dict[str, str]:
    """The decision as run tags (parent run of the study)."""
    return {f"bidpm.promotion.{k}": str(v) for k, v in asdict(decision).items()}


def log_json(client: MlflowClient, run_id: str, obj: Any, artifact_file: str) -> None:
    client.log_text(run_id, json.dumps(obj, indent=2, default=str), artifact_file)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))
