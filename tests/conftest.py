"""Shared fixtures. Unit tests never start Ray; integration tests share one Ray head per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Tests never download: torch hub lookups stay inside a temp cache unless the caller set TORCH_HOME.
os.environ.setdefault("MPLBACKEND", "Agg")
# One Ray authentication mode for the session's head and everything that joins it, fixed here, before any
# test imports Ray (a process reads RAY_AUTH_MODE once): token when this machine has a token (`ray start`
# then turns token auth on), else off - so a token created mid-session (a job's own local Ray) changes nothing.
os.environ.setdefault("RAY_AUTH_MODE", "token" if (Path.home() / ".ray" / "auth_token").exists()
                      or os.environ.get("RAY_AUTH_TOKEN") else "disabled")

# No Ray usage statistics from the test session (its processes inherit this environment). With them on, Ray
# Data's usage collector queries Prometheus (localhost:9090) from a background thread after every dataset and
# logs each refused connection at DEBUG with its traceback; CPython 3.11.7's traceback carets call ast.parse,
# whose AST constructor keeps one recursion counter per interpreter, not per thread (CPython gh-106905): a
# test parsing source at that moment failed with "SystemError: AST constructor recursion depth mismatch" (CI).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


# what a job run in this process exports for MLflow (the tracking store; bounded HTTP retries, from tracking.http_*)
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI into this process, and config loading reads it
    when a file sets no tracking_uri: without this, one test's store leaks into the next test's config
    (seen: the job-submit and synthesize tests read another test's SQLite file when run after the fault tests)."""
    for name in MLFLOW_ENV:
        os.environ.pop(name, None)
    yield
    for name in MLFLOW_ENV:
        os.environ.pop(name, None)  # not restored: whatever a test (or a job run in-process) exported is its own


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


# Ray settings of the test session's head, inherited by every Ray process it starts: the Train controller
# polls its workers every 0.5 s instead of 2 s (each run's start and end are noticed sooner; nothing a
# test checks depends on the interval); no preemption watcher actor per run (it only observes cloud
# preemptions, which no test has); no Prometheus metrics of Ray Train runs (nobody scrapes them here); and
# no idle worker processes started ahead for each new driver (a suite of short jobs on 2 cores paid for
# workers it never used: test_study_job 104 -> 91 s, measured).
SESSION_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                   "RAY_TRAIN_METRICS_ENABLED": "0", "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0"}


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory):
    """An S3-compatible server (moto) on loopback for the session, and the environment that reaches it
    (credentials and endpoint); None without moto (the ``test`` extra). The session's Ray head carries
    it, as a cluster's nodes carry their object store's credentials: only in the environment."""
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        yield None
        return
    import procs

    import boto3

    with procs.s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as env:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=procs.S3_BUCKET)
        yield env


@pytest.fixture(scope="session")
def mlflow_server_s3(s3_env, tmp_path_factory):
    """One `mlflow server` for the session whose artifacts go to s3://BUCKET/mlflow, proxied, as
    cluster/kuberay deploys it (the HTTP registry round trip and the S3 search use it); its URI."""
    if s3_env is None:
        pytest.skip("moto[server] (the test extra) is not installed")
    import procs

    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}, **s3_env}
    with procs.MlflowServer(tmp_path_factory.mktemp("mlflow"), "--artifacts-destination", f"s3://{procs.S3_BUCKET}/mlflow",
                            env=env) as server:
        yield server.uri


@pytest.fixture(scope="session")
def ray_head(s3_env):
    """ONE Ray head for the whole test session (one per xdist worker), as Ray's own suite shares a cluster
    (``ray_start_regular_shared``): 2 CPUs, one custom ``slot`` (what the stall test's trial asks for and
    another job holds), the dashboard (``ray job submit``) and the session's S3 endpoint in its
    environment. Started and stopped by PID (tests/procs.py), never by name. Yields {"gcs": host:port,
    "dashboard": url, "temp_dir"}; in-process tests join it through ``ray_session``, subprocess jobs
    through ``RAY_ADDRESS`` (``session_env``). The one test with a cluster of its own: test_autoscaling
    (an autoscaler adding and removing fake nodes)."""
    import procs

    with procs.ray_head("rsuite", "--num-cpus=2", "--num-gpus=0", '--resources={"slot": 1}',
                        "--object-store-memory=400000000", dashboard=True,
                        env=procs.ray_env({**SESSION_RAY_ENV, **(s3_env or {})}), stop_timeout_s=2) as head:
        yield head


@pytest.fixture(scope="session")
def session_env(ray_head):
    """The environment for a job run as a subprocess on the session's head (its own temp dir and ports)."""
    import procs

    return procs.ray_env({"RAY_ADDRESS": ray_head["gcs"], "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO / "platform")})


@pytest.fixture(scope="session")
def ray_session(ray_head):
    """This pytest process as a driver of the session's head (worker start-up is the expensive part)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address=ray_head["gcs"], log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO / "platform")}})
    yield ray
    ray.shutdown()
