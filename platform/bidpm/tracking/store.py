"""The tracking store: connect (with a fast health check), the experiment, where artifacts go.

Everything goes through ``MlflowClient`` with explicit run ids (no fluent "active run"), because Tune's
callbacks run while other runs are open; the one exception is ``pyfunc.log_model``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..config import Config


class TrackingError(RuntimeError):
    """The tracking store or registry cannot be used as configured; the message says how to fix it."""


class TrackingUnavailable(TrackingError):
    """The tracking server stopped answering while a job ran (after MLflow's bounded retries).

    The decision for an outage mid-experiment: stop at once, not buffer and catch up.
    A study without its records is not one (the registry step needs the server too, and buffered
    metrics would be lost with the driver); Tune's experiment state and the Train checkpoints are kept, so
    the work lost is at most the current epoch of the running trials, and rerunning the same command once
    the server is back resumes the study under the same MLflow parent and trial runs. The study run
    cannot be marked while the server is down: the rerun takes it over (RUNNING again) and ends it.
    The CLI exits 75 with the command to rerun."""


# MLflow's HTTP client retries by these variables (mlflow.environment_variables); set from the config
# here, once per connect, so no code reads them from the user's environment.
_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "http_max_retries", "MLFLOW_HTTP_REQUEST_TIMEOUT": "http_timeout_s",
             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "http_backoff_factor"}


def bound_retries(cfg: Config) -> None:
    """Bound MLflow's HTTP retries by ``tracking.http_*`` (its defaults block ~4 min per call on an outage)."""
    import os

    for env, field in _HTTP_ENV.items():
        os.environ[env] = str(int(getattr(cfg.tracking, field)))      # MLflow parses them as int


def unavailable(cfg: Config, exc: BaseException, doing: str) -> TrackingUnavailable:
    """The error to raise when a tracking call failed mid-job: what failed, where, and what is kept."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    # `mlflow server` answers 503 while its backend store (PostgreSQL, ...) is down: the server is up. A
    # worker that has to (re)create its SQLAlchemy engine first retries the database for up to ~100 s
    # (mlflow.store.db.utils: 10 tries, exponential back-off), so a 503 can come after the client gave up
    if "503" in first or "TEMPORARILY_UNAVAILABLE" in first:
        what = "start its database (the server answers 503: its backend store is unreachable)"
    elif "timed out" in first.lower() or "timeout" in first.lower():
        what = (f"the server did not answer within tracking.http_timeout_s={cfg.tracking.http_timeout_s} s: check "
                f"that it and its database are up (a server whose database is down can take ~100 s to answer 503)")
    else:
        what = "start the server again"
    return TrackingUnavailable(
        f"the MLflow tracking server {cfg.mlflow_uri} stopped answering while {doing} ({first}); the study was stopped "
        f"at once so no record is lost (finished trials and checkpoints are kept, the MLflow runs are resumed by the "
        f"rerun); {what} (or fix tracking.tracking_uri)")


def outage_in(exc: BaseException) -> Optional["TrackingUnavailable"]:
    """The ``TrackingUnavailable`` behind ``exc``, if any.

    Tune re-raises an exception from some callback hooks (``on_trial_result``) as a ``TuneError`` whose
    message is the formatted traceback, so which type reaches ``tuner.fit``'s caller depends on which
    hook met the outage first. Found here through ``__cause__``/``__context__``, else from the
    traceback text (its last ``TrackingUnavailable:`` line), so every outage exits as one. A Ctrl+C or
    exit met while handling an outage stays what it is (its own exit code, not the outage's).
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return None
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, TrackingUnavailable):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    marker = f"{TrackingUnavailable.__module__}.{TrackingUnavailable.__name__}: "
    lines = [ln for ln in str(exc).splitlines() if ln.strip().startswith(marker)]
    return TrackingUnavailable(lines[-1].strip()[len(marker):]) if lines else None


def is_outage(exc: BaseException) -> bool:
    """Did a tracking call fail because the store could not be reached (vs. a bad request)?"""
    import requests

    if isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        # rest_utils: "API request to <url> failed with exception <requests error>" (after the retries);
        # "... failed with error code 503 != 200" for a proxy in front of a stopped server
        # the server's own 503 while its database is down arrives as a RestException TEMPORARILY_UNAVAILABLE
        return exc.error_code == "TEMPORARILY_UNAVAILABLE" or "failed with exception" in text or \
            any(f"error code {c}" in text for c in (502, 503, 504))
    return False


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
    bound_retries(cfg)
    if uri.startswith(("http://", "https://")):
        _check_http(uri, cfg.tracking.connect_timeout_s)
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking store {uri}: cannot create its folder {folder} ({exc.strerror or exc}); fix: "
                                f"set output_dir (or tracking.tracking_uri) to a writable location") from None
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
