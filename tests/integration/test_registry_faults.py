"""The registry under faults and attack, against real MLflow stores (SQLite in tmp_path; the basic-auth
server over HTTP on loopback when Flask-WTF is installed).

- a tampered ``python_model.pkl`` in the artifact store is never unpickled by the platform;
- a driver SIGKILLed right after the model version was created, then rerun, completes that version
  (one version, alias set) instead of registering v2;
- two promotions of different versions at once end with ``champion`` on the better one, and the
  decision tags say why;
- a known pseudonym salt appears in no MLflow param, run artifact or registered model artifact.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import mlflow
from bidpm import tracking
from bidpm.config import load_config
from bidpm.config.data import SALT_ENV
from bidpm.tracking.promotion import LOCK_SUFFIX, promotion_lock
from bidpm.tracking.registry import CHAMPION, TAG_REGISTRATION_KEY, registration_key

from procs import MlflowServer, manifest_server  # tests/procs.py
from tiny import tiny_checkpoint, tiny_overrides  # tests/tiny.py

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SALT = "s3cr3t-salt-7f1e9c2ab4d0"


@pytest.fixture(autouse=True)
def _own_env(monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; undo it so each test's config is its own."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(SALT_ENV, raising=False)


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, tiny_overrides(tmp_path, *extra))


# --- a tampered pickle -----------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``path`` (open(path, "w")): proof that the pickle ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _registered(tmp_path: Path):
    """A tiny checkpoint logged in a run and registered as ``tiny`` v1: (cfg, client, run, checkpoint, model URI, version)."""
    cfg = _cfg(tmp_path)
    client, exp_id = tracking.connect(cfg)
    run = client.create_run(exp_id)
    ck = tiny_checkpoint(cfg, tmp_path / "ck")
    uri = tracking.log_model(cfg, run.info.run_id, str(ck))
    return cfg, client, run, ck, uri, tracking.register(client, cfg, uri, run.info.run_id, {})


def test_tampered_python_model_pickle_is_never_executed(tmp_path):
    from argparse import Namespace

    from bidpm.cli import load_model_arg
    from bidpm.method.solver import euler_integrate
    from bidpm.train.checkpoint import load_checkpoint_model

    cfg, client, run, ck, uri, version = _registered(tmp_path)
    tracking.promote(client, cfg, version, evaluate=lambda u: {cfg.tracking.promote_metric: 0.5})
    # an attacker with write access to the artifact store swaps the pickle
    marker = tmp_path / "PWNED"
    stored = [p for p in (tmp_path / "mlartifacts").rglob("python_model.pkl")]
    assert stored, "the logged model's pickle is not where the test looks"
    for p in stored:
        p.write_bytes(pickle.dumps(_Payload(str(marker))))
    # every way the platform loads a registered model: promotion / evaluation / synthesis
    job_args = Namespace(checkpoint=None, model_uri="models:/tiny@champion", config="given.yaml", overrides=[])
    models = [tracking.load_model(f"models:/tiny/{version}", cfg), load_model_arg(job_args, cfg, "cpu")]
    assert not marker.exists(), "loading the model ran the tampered pickle"
    # ... and they are the checkpoint's EMA field (independent reference: the checkpoint itself)
    _, ema_net, _ = load_checkpoint_model(ck)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (3, 1, 16, 16)).astype(np.float32))
    ref = euler_integrate(ema_net, x, [0.0, 0.4, 1.0], "forward")
    for m in models:
        torch.testing.assert_close(m.sample(x, "forward"), ref)
    assert models[1].origin == "model models:/tiny@champion"
    # control: MLflow's own pyfunc loader (serving) does unpickle it - the payload is live
    try:
        mlflow.pyfunc.load_model(f"models:/tiny/{version}")
    except Exception:  # noqa: BLE001 - the payload is no PythonModel; only its side effect matters
        pass
    assert marker.exists()


def test_swapped_weights_in_the_artifact_store_are_refused_with_the_version_named(tmp_path):
    """Issue 22 item 3: state.pt is checked against the sha256 recorded in the tracking database at
    registration (a hashlib digest of the original file is the reference), on every load."""
    import hashlib

    from bidpm.config import ConfigError

    cfg, client, run, ck, uri, version = _registered(tmp_path)
    client.set_registered_model_alias("tiny", CHAMPION, version)
    assert tracking.load_model("models:/tiny@champion", cfg).grid  # untouched: loads
    stored = list((tmp_path / "mlartifacts").rglob("state.pt"))
    assert len(stored) == 1 and hashlib.sha256(stored[0].read_bytes()).hexdigest() == \
        hashlib.sha256((ck / "state.pt").read_bytes()).hexdigest()
    other = tiny_checkpoint(cfg, tmp_path / "ck-other", seed=7)  # valid weights, not the registered ones
    stored[0].write_bytes((other / "state.pt").read_bytes())
    for model_uri in ("models:/tiny@champion", f"models:/tiny/{version}", uri, f"runs:/{run.info.run_id}/model"):
        with pytest.raises(ConfigError, match=rf"registered model 'tiny' version {version}|logged model|run .*'s model") as e:
            tracking.load_model(model_uri, cfg)
        assert "not the registered ones" in str(e.value), str(e.value)


def test_a_foreign_model_is_refused_without_unpickling(tmp_path):
    """A registered version whose MLmodel has no bidpm checkpoint artifact: a clear error, nothing run."""
    from bidpm.config import ConfigError

    cfg = _cfg(tmp_path)
    client, exp_id = tracking.connect(cfg)
    marker = tmp_path / "PWNED"
    art = tmp_path / "foreign"
    art.mkdir()
    (art / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
                                 "    python_model: python_model.pkl\n")
    (art / "python_model.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    client.create_registered_model("foreign")
    client.create_model_version("foreign", source=str(art))
    with pytest.raises(ConfigError, match="not a bidpm model"):
        tracking.load_model("models:/foreign/1", cfg)
    assert not marker.exists()


# --- a crash inside the registry step --------------------------------------------------------------
_KILLED_AFTER_CREATE = textwrap.dedent('''
    import os, signal, sys
    import mlflow
    from bidpm import tracking
    from bidpm.config import load_config

    cfg = load_config(None, sys.argv[3:])
    client, _ = tracking.connect(cfg)
    real = mlflow.register_model

    def register_then_die(*a, **k):
        mv = real(*a, **k)
        print("created version", mv.version, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)      # the driver dies right after the version exists

    mlflow.register_model = register_then_die
    uri = tracking.log_model(cfg, sys.argv[1], sys.argv[2])
    tracking.register(client, cfg, uri, sys.argv[1], TAGS)
''')


def test_rerun_after_kill_right_after_version_creation_registers_once(tmp_path):
    cfg = _cfg(tmp_path)
    client, exp_id = tracking.connect(cfg)
    run_id = client.create_run(exp_id).info.run_id
    ck = tiny_checkpoint(cfg, tmp_path / "ck")
    tags = {"bidpm.study": "s1", "bidpm.trial_id": "t7", "bidpm.checkpoint": str(ck), "bidpm.git_commit": "abc"}
    script = _KILLED_AFTER_CREATE.replace("TAGS", json.dumps(tags))
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", script, run_id, str(ck), *tiny_overrides(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert "created version 1" in proc.stdout
    (v1,) = client.search_model_versions("name = 'tiny'")
    assert v1.tags[TAG_REGISTRATION_KEY] == registration_key(run_id, tags)   # the key came with the creation
    assert tracking.alias_version(client, "tiny", "challenger") is None       # the crash skipped the alias
    # the same driver step again (what a rerun of the study does): log + register
    uri = tracking.log_model(cfg, run_id, str(ck))
    version = tracking.register(client, cfg, uri, run_id, tags)
    versions = client.search_model_versions("name = 'tiny'")
    assert version == "1" and len(versions) == 1, [v.version for v in versions]
    assert tracking.alias_version(client, "tiny", "challenger") == "1"
    got = client.get_model_version("tiny", "1").tags
    assert {k: got[k] for k in tags} == tags
    # nothing logged twice either: one logged model for the run
    logged = mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'")
    assert len(logged) == 1 and uri == f"models:/{logged[0].model_id}"
    # a different trial of the same run is a new version (idempotence is per trial, not per run)
    other = tracking.register(client, cfg, uri, run_id, {**tags, "bidpm.trial_id": "t8"})
    assert other == "2" and tracking.alias_version(client, "tiny", "challenger") == "2"


# --- concurrent promotions -------------------------------------------------------------------------
class _GatedClient:
    """An MlflowClient whose FIRST read of the champion alias waits at ``gate`` (after reading), so
    both promotions have seen the same champion before either moves it: the race, every time."""

    def __init__(self, inner, gate):
        self._inner, self._gate, self._first = inner, gate, True

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def get_model_version_by_alias(self, name, alias):
        try:
            return self._inner.get_model_version_by_alias(name, alias)
        finally:
            if alias == CHAMPION and self._first:
                self._first = False
                self._gate()


def _versions(client, n: int) -> None:
    client.create_registered_model("tiny")
    for _ in range(n):
        client.create_model_version("tiny", source="/nonexistent/model")


@pytest.mark.parametrize("order", ["worse_moves_last", "either_first"])
def test_two_promotions_at_once_end_on_the_better_model(tmp_path, order):
    cfg = _cfg(tmp_path)
    client, _ = tracking.connect(cfg)
    metric = cfg.tracking.promote_metric
    _versions(client, 3)
    score = {"1": 0.50, "2": 0.60, "3": 0.55}          # v1 champion; v2 (better) and v3 (worse) race
    evaluate = lambda uri: {metric: score[uri.rsplit("/", 1)[1]]}  # noqa: E731
    assert tracking.promote(client, cfg, "1", evaluate=evaluate).promoted
    barrier, better_done = threading.Barrier(2, timeout=60), threading.Event()

    def gate_better():
        barrier.wait()

    def gate_worse():
        barrier.wait()
        if order == "worse_moves_last":               # the interleaving that loses the better model
            assert better_done.wait(60)                # without a lock: v3 overwrites v2

    results, errors = {}, []

    def run(version, gate):
        try:
            c = _GatedClient(mlflow.MlflowClient(cfg.mlflow_uri, cfg.mlflow_uri), gate)
            results[version] = tracking.promote(c, cfg, version, evaluate=evaluate)
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            if version == "2":
                better_done.set()

    threads = [threading.Thread(target=run, args=("2", gate_better)), threading.Thread(target=run, args=("3", gate_worse))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert tracking.alias_version(client, "tiny", CHAMPION) == "2"
    assert results["2"].promoted
    assert not results["3"].promoted or order == "either_first"
    t2, t3 = client.get_model_version("tiny", "2").tags, client.get_model_version("tiny", "3").tags
    assert t2["bidpm.promotion.decision"] == "promoted"
    if order == "worse_moves_last":
        # v3 had read champion v1, found v2 there under the lease, compared again and lost: the tags say so
        assert t3["bidpm.promotion.decision"] == "kept_champion"
        assert t3["bidpm.promotion.champion_version"] == "2" and float(t3["bidpm.promotion.champion_score"]) == 0.6
        assert "does not beat" in t3["bidpm.promotion.reason"] and "changed to v2" in t3["bidpm.promotion.reason"]
        assert "changed" not in t2["bidpm.promotion.reason"]
    else:
        # whichever moved second compared with the first one's result
        assert {t2["bidpm.promotion.champion_version"], t3["bidpm.promotion.champion_version"]} & {"2", "3"}
    assert not [m for m in client.search_registered_models() if m.name.endswith(LOCK_SUFFIX)]   # lease released


def test_promotion_lease_expires_and_times_out(tmp_path):
    cfg = _cfg(tmp_path)
    client, _ = tracking.connect(cfg)
    _versions(client, 1)
    # a lease left by a killed promoter (expired) is broken
    client.create_registered_model("tiny" + LOCK_SUFFIX, tags={"bidpm.lock.holder": "dead:1", "bidpm.lock.expires": "0"})
    d = tracking.promote(client, cfg, "1", evaluate=lambda u: {cfg.tracking.promote_metric: 0.5})
    assert d.promoted and tracking.alias_version(client, "tiny", CHAMPION) == "1"
    # a live lease: a second holder waits, then gives up with the holder's name
    with promotion_lock(client, "tiny", ttl_s=60) as holder:
        t0 = time.monotonic()
        with pytest.raises(tracking.TrackingError, match=f"{holder}.*holds the lease"):
            with promotion_lock(client, "tiny", wait_s=0.5):
                pass
        assert time.monotonic() - t0 < 30
    with promotion_lock(client, "tiny", wait_s=0.5):    # released: free again
        pass


# --- the salt in MLflow ----------------------------------------------------------------------------
def test_salt_is_in_no_param_run_artifact_or_registered_model(tmp_path):
    cfg = _cfg(tmp_path, f"data.pseudonym_salt={SALT}", "data.split.test_subjects=[BraTS2021_00042]")
    client, exp_id = tracking.connect(cfg)
    parent, _ = tracking.study_run(client, exp_id, cfg, {})
    child = tracking.trial_run(client, exp_id, parent, cfg.tune.experiment_name, "t1", "trial_1", cfg, {})
    uri = tracking.log_model(cfg, child, str(tiny_checkpoint(cfg, tmp_path / "ck")))
    version = tracking.register(client, cfg, uri, child, {"bidpm.trial_id": "t1"})
    needles = (SALT, "BraTS2021_00042")
    for run_id in (parent, child):
        run = client.get_run(run_id)
        assert run.data.params["data.salt_digest"] == cfg.data.salt_digest       # the digest, for lineage
        for text in (json.dumps(run.data.params), json.dumps(run.data.tags)):
            assert not any(n in text for n in needles)
        out = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / f"dl-{run_id}")))
        assert list(out.rglob("*.yaml")), "the resolved config is not among the run's artifacts"
        for f in (p for p in out.rglob("*") if p.is_file()):
            assert not any(n.encode() in f.read_bytes() for n in needles), f
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/tiny/{version}", dst_path=str(tmp_path / "dl-model")))
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    assert {"MLmodel", "state.pt", "config.json"} <= {p.name for p in files}
    for f in files:
        assert not any(n.encode() in f.read_bytes() for n in needles), f
    mv = client.get_model_version("tiny", version)
    assert not any(n in json.dumps(mv.tags) + str(mv.description) for n in needles)


# --- the basic-auth server (the configuration of cluster/kuberay/mlflow-server.yaml) -----------------
@pytest.fixture
def auth_server(tmp_path):
    """`mlflow server --app-name basic-auth` with the manifest's auth config and env (the Secret's values)."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (mlflow[auth])")
    server, secret = manifest_server(tmp_path)                  # its store and artifacts under tmp_path
    with server:
        yield server.uri, secret


@pytest.mark.slow
def test_auth_server_refuses_anonymous_clients_and_serves_the_platform(tmp_path, auth_server, monkeypatch):
    import base64

    uri, secret = auth_server
    api = uri + "/api/2.0/mlflow/registered-models/search"
    for user, password in ((None, None), (secret["username"], "wrong")):    # anonymous or a wrong password: refused
        req = urllib.request.Request(api)
        if user:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 401, user
    cfg = _cfg(tmp_path / "client", f"tracking.tracking_uri={uri}")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", secret["username"])          # credentials from the env
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret["password"])
    client, exp_id = tracking.connect(cfg)
    run_id = client.create_run(exp_id).info.run_id
    uri_model = tracking.log_model(cfg, run_id, str(tiny_checkpoint(cfg, tmp_path / "ck")))
    v = tracking.register(client, cfg, uri_model, run_id, {})
    assert tracking.promote(client, cfg, v, evaluate=lambda u: {cfg.tracking.promote_metric: 0.5}).promoted
    assert tracking.load_model("models:/tiny@champion", cfg).grid == [0.0, 0.4, 1.0]
