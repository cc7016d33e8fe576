"""Object storage for real: a search whose shards, Ray results, checkpoints and MLflow artifacts all live
on an S3-compatible server on loopback (``moto`` in server mode: the session's, conftest ``s3_env``).

As a user runs it: ``jobs/tune_steps.py`` with ``data.shards_dir=s3://...`` and ``train.storage_path=
s3://...`` against an ``mlflow server --artifacts-destination s3://...``, a driver in a subprocess on
the session's Ray head. Credentials and the endpoint reach every process through the environment only
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_ENDPOINT_URL``, in the head's environment as on a
cluster's nodes; ``MLFLOW_S3_ENDPOINT_URL`` for the MLflow server), never a config file. Two faults,
each frozen first (SIGSTOP) so the kill lands mid-trial, then SIGKILL by PID:

1. once the trial's Train run has registered its epoch-1 checkpoint in the bucket, its Ray Train worker
   (with the shipped ``train.max_failures`` Ray Train restarts it from that checkpoint, in the same run);
2. once the restarted worker has registered a further checkpoint and Tune has saved its experiment
   state in the bucket, the driver (Ray then ends its job); the same job (in this process) then resumes
   the search from the bucket - the Train run continuing from the last checkpoint - and finishes it:
   best checkpoint and sample grid uploaded through the MLflow server into the bucket.

Each attempt starts at the step of the last registered checkpoint and each epoch is reported once (work
lost < one epoch per fault). Nothing but the phantom inputs is written locally, and the secret key
appears in no object and no local file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from procs import S3_BUCKET, processes_naming, settled, wait_placement_groups_removed  # tests/procs.py
from tiny import tiny_study  # tests/tiny.py

pytestmark = pytest.mark.integration

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed")

REPO = Path(__file__).resolve().parents[2]
BUCKET = S3_BUCKET
EPOCHS, STEPS = 4, 3
EXP = "s3-tune"
STUDY = tiny_study("s3", epochs=EPOCHS, sections={
    "data": {"num_slices": 6, "shards_dir": f"s3://{BUCKET}/shards", "num_workers": 1, "subjects_per_task": 6},
    "train": {"max_steps_per_epoch": STEPS, "sample_grid_rows": 2, "lr": 1.0e-3, "checkpoint_keep": EPOCHS,
              "storage_path": f"s3://{BUCKET}/ray"},
    "tune": {"experiment_name": EXP, "scheduler": "fifo"},
    "evaluation": {"max_batches": 1}}, log_checkpoints=True)
# registering (pyfunc packaging + test-split scoring) adds half a minute and no storage path of its own: off


@pytest.fixture(scope="module")
def s3(s3_env):
    """The session's S3 server and bucket (conftest ``s3_env``, also in the Ray head's environment), a client."""
    if s3_env is None:
        pytest.skip("moto[server] (the test extra) is not installed")
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
    yield s3_env, client


def _keys(client, prefix: str = "") -> list[str]:
    out, token = [], None
    while True:
        kw = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = client.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _get(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _registered(client, run_prefix: str) -> list[dict]:
    """The checkpoints Ray Train's controller has registered for a run, read from its snapshot in the bucket."""
    try:
        return [c["metrics"] for c in json.loads(_get(client, f"{run_prefix}/checkpoint_manager_snapshot.json"))["checkpoint_results"]]
    except Exception:  # noqa: BLE001 - not written yet
        return []


def _first_run_with(client, n: int):
    """The first trial Train run (bucket prefix) with at least ``n`` registered checkpoints, else None."""
    runs = sorted({k.split("/")[3] for k in _keys(client, f"ray/{EXP}/train_runs/") if k.count("/") >= 4})
    prefix = f"ray/{EXP}/train_runs/{runs[0]}" if runs else None
    return prefix if prefix and len(_registered(client, prefix)) >= n else None


def _wait(job: subprocess.Popen, log: Path, what: str, check, timeout_s: float = 420):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and job.poll() is None:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"no {what} (job exit code {job.poll()}):\n{log.read_text()[-4000:]}")


def _train_workers(head: dict, run: str) -> list[psutil.Process]:
    """The Ray Train worker processes of Train run ``run`` on the session's head (a worker's cwd is its run's
    working directory, named after the run)."""
    out = []
    for p in processes_naming(head["temp_dir"]):
        try:
            if " ".join(p.cmdline()).startswith("ray::RayTrainWorker") and run in p.cwd():
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_storage_round_trip_and_checkpoint_download_on_s3(s3, tmp_path, monkeypatch):
    """bidpm.io.storage on the real server (seconds, no Ray): atomic writes leave no temp object, a
    folder uploaded the way Ray Train uploads checkpoints (pyarrow, with a directory marker) downloads
    (copy_files alone failed on it), and a location carrying credentials is refused, the secret unprinted."""
    import pyarrow.fs as pafs

    from bidpm.io import storage
    from bidpm.io.checkpoints import local_checkpoint

    env, client = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    base = f"s3://{BUCKET}/unit"
    storage.write_bytes_atomic(f"{base}/a/x.json", b"{}")
    assert storage.is_file(f"{base}/a/x.json") and [i.base_name for i in storage.list_dir(f"{base}/a")] == ["x.json"]
    src = tmp_path / "checkpoint_epoch_0001"
    src.mkdir()
    (src / "state.pt").write_bytes(b"weights")
    (src / "config.json").write_text("{}")
    fs, path = storage.resolve(f"{base}/run/checkpoint_epoch_0001")
    pafs.copy_files(str(src), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    with local_checkpoint(f"{base}/run/checkpoint_epoch_0001") as folder:
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "state.pt"]
        assert (folder / "state.pt").read_bytes() == b"weights"
    storage.remove_tree(base)
    assert not _keys(client, "unit/")
    with pytest.raises(ValueError, match="environment") as err:
        storage.resolve(f"s3://bidpm-test:{env['AWS_SECRET_ACCESS_KEY']}@{BUCKET}/x")
    assert env["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


@pytest.mark.slow
def test_study_on_s3_ingests_trains_is_killed_resumes_and_logs_artifacts_there(s3, mlflow_server_s3, tmp_path, ray_head, session_env,
                                                                               ray_session, monkeypatch, capsys):
    from bidpm.commands.tune_steps import main

    env_s3, client = s3
    out = tmp_path / "out"
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(out), "tracking": {**STUDY["tracking"],
                                                                                    "tracking_uri": mlflow_server_s3}}))
    assert "AWS" not in cfg_path.read_text() and env_s3["AWS_SECRET_ACCESS_KEY"] not in cfg_path.read_text()
    cmd = [sys.executable, str(REPO / "jobs" / "tune_steps.py"), "--config", str(cfg_path)]
    env = {**session_env, **env_s3, "TUNE_GLOBAL_CHECKPOINT_S": "1"}   # Tune saves its state (to the bucket) every second

    log1 = tmp_path / "first.log"
    with open(log1, "w") as f:
        job = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path), start_new_session=True)
    try:
        run_prefix = _wait(job, log1, "a registered checkpoint in the bucket", lambda: _first_run_with(client, 1))
        # fault 1: kill -9 of the Train worker, default failure settings: Ray Train restarts it
        (worker,) = _train_workers(ray_head, run_prefix.rsplit("/", 1)[1])
        worker.send_signal(signal.SIGSTOP)         # frozen first, so the kill lands mid-trial
        worker_killed_after = settled(lambda: max(m["epoch"] for m in _registered(client, run_prefix)))
        assert worker_killed_after < EPOCHS - 1, "the trial got too far before the worker kill"
        worker.send_signal(signal.SIGKILL)
        # fault 2: the whole driver killed once the restarted worker registered a checkpoint and Tune saved
        # its experiment state (in the bucket) with the trial in it
        trial = run_prefix.rsplit("/", 1)[1].removeprefix("train_")
        _wait(job, log1, "a checkpoint after the worker kill + saved experiment state",
              lambda: max(m["epoch"] for m in _registered(client, run_prefix)) > worker_killed_after
              and any(trial in _get(client, k).decode() for k in _keys(client, f"ray/{EXP}/")
                      if k.count("/") == 2 and "experiment_state" in k))
        frozen = [psutil.Process(job.pid), *_train_workers(ray_head, run_prefix.rsplit("/", 1)[1])]
        for p in frozen:
            p.send_signal(signal.SIGSTOP)          # the driver and its Train worker stand still: the kill lands mid-trial
        killed_after = settled(lambda: max(m["epoch"] for m in _registered(client, run_prefix)))
        assert killed_after < EPOCHS, "the trial ended before the driver kill"
        os.killpg(job.pid, signal.SIGKILL)         # the driver: Ray then ends its job (the frozen worker too)
        job.wait(30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)

    # the ingest wrote shards + manifest to the bucket; nothing of the study is local
    shards = _keys(client, "shards/")
    assert any(k.endswith("/manifest.json") for k in shards) and sum(k.endswith(".parquet") for k in shards) >= 3
    manifest_key = next(k for k in shards if k.endswith("/manifest.json"))
    listed = {f"{manifest_key.rsplit('/', 1)[0]}/{f['path']}" for f in json.loads(_get(client, manifest_key))["files"]}
    assert listed and listed <= set(shards)                    # every shard the manifest lists is in the bucket
    assert not (out / "shards").exists() and not (out / "ray_results").exists()

    wait_placement_groups_removed()                          # the killed job is gone, as for a person rerunning
    for k, v in env_s3.items():                              # the same job in this process, with the same environment
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    assert main(["--config", str(cfg_path)]) == 0
    assert "restoring study" in capsys.readouterr().out

    # resumed from the bucket: the attempt after the kill started at the last registered step, ran to the end
    final = _registered(client, run_prefix)
    assert sorted(m["epoch"] for m in final) == list(range(1, EPOCHS + 1))
    by_epoch = {m["epoch"]: m["resumed_from_step"] for m in final}
    k1, k2 = worker_killed_after, killed_after               # each attempt started at the last registered step
    assert by_epoch == {e: (0 if e <= k1 else k1 * STEPS if e <= k2 else k2 * STEPS) for e in range(1, EPOCHS + 1)}
    assert max(m["step"] for m in final) == EPOCHS * STEPS
    assert {f"{run_prefix}/checkpoint_epoch_{e:04d}/state.pt" for e in range(1, EPOCHS + 1)} <= set(_keys(client, run_prefix))
    assert f"ray/{EXP}/study.json" in _keys(client, f"ray/{EXP}/")
    assert not (out / "ray_results").exists() and not (out / "mlartifacts").exists()

    # MLflow: runs FINISHED; the trial's best checkpoint and sample grid are objects in the bucket
    from mlflow import MlflowClient

    ml = MlflowClient(mlflow_server_s3, mlflow_server_s3)
    runs = ml.search_runs([ml.get_experiment_by_name("s3").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    (trial_run,) = [r for r in runs if r.data.tags.get("bidpm.role") == "trial"]
    assert [m.step for m in ml.get_metric_history(trial_run.info.run_id, "val/ssim_mean")] == list(range(1, EPOCHS + 1))
    artifacts = _keys(client, "mlflow/")
    assert any(trial_run.info.run_id in k and "/best_checkpoint/" in k and k.endswith("state.pt") for k in artifacts)
    assert any(trial_run.info.run_id in k and "/sample_grid/" in k and k.endswith(".png") for k in artifacts)
    assert trial_run.info.artifact_uri.startswith("mlflow-artifacts:")   # uploaded through the server

    # the secret key is in no object of the bucket and no file the study wrote locally
    secret = env_s3["AWS_SECRET_ACCESS_KEY"].encode()
    assert not [k for k in _keys(client) if secret in _get(client, k)]
    assert not [p for p in out.rglob("*") if p.is_file() and secret in p.read_bytes()]
    shapes = sorted({re.sub(r"[0-9a-f]{8,}", "*", k) for k in _keys(client)})
    print("\nobjects in s3://" + BUCKET + " (ids as *):\n  " + "\n  ".join(shapes))
    print(f"\nbucket after the resumed study: {len(shards)} shard objects, {len(_keys(client, 'ray/'))} Ray objects, "
          f"{len(artifacts)} MLflow objects; worker killed after epoch {k1} (resumed at step {k1 * STEPS}), driver "
          f"killed after epoch {k2} (rerun resumed at step {k2 * STEPS})")
