"""An autoscaling cluster of fake nodes on this machine: a study scales it out from 0 worker nodes to 2
and back to 0, and survives losing the node one of its trials trains on (tests/fake_cluster.py).

The head offers 2 CPUs and no accelerator; the worker node type offers one ``accelerator_slot`` (a
custom resource standing in for a GPU) and 1 CPU, min 0, max 2, idle timeout 10 s. The study's trials
ask for the slot per Train worker (``train.resources_per_worker``: the same config runs on GPU nodes
with ``{GPU: 1}``), so none can train on the head: the autoscaler must add a node per trial. The study
runs as a user runs it (``jobs/tune_steps.py`` with ``RAY_ADDRESS`` of the cluster, default failure
settings), two trials at once; their coordinators (``tune.trial_cpus``) start on the head, before any
worker node exists. Once one trial's Train run has registered a checkpoint, the node it trains on is
lost (its Train worker frozen first so the kill cannot land after the trial ended, then its raylet and
every process under it killed by PID): the trial must resume from that checkpoint on another node -
each epoch reported exactly once, the resumed attempt starting at the last registered step, so the
work lost is under one checkpoint interval (an epoch) - the other trial must run through untouched,
and the study must finish with every MLflow run FINISHED. The test records the node count over time
from the GCS (a watcher process) and asserts 0 -> 2 -> 0; the job prints its own timeline.

One study run covers both (a cluster start and a study cost about a minute each on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from fake_cluster import FakeCluster, NodeWatcher, raylet_of, ray_env, workers_titled  # tests/fake_cluster.py
from procs import settled  # tests/procs.py
from tiny import tiny_study  # tests/tiny.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SLOT = "accelerator_slot"
EPOCHS, STEPS = 2, 3
IDLE_S = 10.0
STUDY = tiny_study("fake-cluster", epochs=EPOCHS, sections={
    "data": {"num_slices": 6, "num_workers": 1, "subjects_per_task": 6},   # one ingest task: it fits the head, no node is added for it
    "train": {"resources_per_worker": {SLOT: 1}, "max_steps_per_epoch": STEPS, "sample_grid_rows": 2, "lr": 1.0e-3},
    "tune": {"experiment_name": "fake-cluster-tune", "num_samples": 2, "max_concurrent_trials": 2, "scheduler": "fifo",
             "autoscaling": None},                         # detected: the cluster it joins autoscales
    "evaluation": {"max_batches": 1}}, log_checkpoints=True)


@pytest.fixture(scope="module")
def cluster():
    c = FakeCluster(head_cpus=2, idle_timeout_s=IDLE_S, worker_types={
        "slot_node": {"resources": {"CPU": 1, SLOT: 1, "object_store_memory": 200_000_000},
                      "min_workers": 0, "max_workers": 2}})
    try:
        yield c.start()
    finally:
        c.stop()
        assert not c.processes(), "processes of the fake cluster left running"


def _snapshot(run_dir: Path) -> list[dict]:
    """The checkpoints Ray Train's controller has registered for a run (its own snapshot file)."""
    p = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return [c["metrics"] for c in json.loads(p.read_text())["checkpoint_results"]]
    except (OSError, ValueError, KeyError):
        return []


def _wait(what: str, timeout_s: float, check, job: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if job.poll() is not None:
            raise AssertionError(f"job exited ({job.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


def _lose_node_of(cluster: FakeCluster, run_dir: Path) -> int:
    """Freeze the Train worker of ``run_dir``'s run, then kill its node; returns the last registered epoch."""
    # a Train worker's cwd is its run's working directory, named after the run (train_<trial id>)
    mine = [w for w in workers_titled(cluster, "ray::RayTrainWorker") if run_dir.name in w.cwd()]
    assert len(mine) == 1, f"expected one Train worker of {run_dir.name}, found {len(mine)}"
    mine[0].send_signal(signal.SIGSTOP)          # no step, no report from here on: the kill lands mid-trial
    raylet = raylet_of(mine[0])
    assert raylet.pid not in {p.pid for p in cluster.processes() if "--head" in " ".join(p.cmdline())}
    node = [raylet, *raylet.children(recursive=True)]
    registered = settled(lambda: max(m["epoch"] for m in _snapshot(run_dir)))
    assert registered < EPOCHS, "the trial had ended before its node could be lost"
    for p in node:
        try:
            p.send_signal(signal.SIGKILL)        # the node is gone: raylet, workers, agents
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(node, timeout=30)
    return registered


def test_study_scales_out_from_zero_survives_a_lost_node_and_scales_back_in(cluster, tmp_path):
    out = tmp_path / "out"
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(out)}))
    exp = out / "ray_results" / STUDY["tune"]["experiment_name"]
    watcher = NodeWatcher(cluster.address)
    try:
        start = watcher.wait_for(lambda s: True, 60, "a first sample")
        assert start["workers"] == 0 and SLOT not in start["resources"], start   # nothing offers the slot yet

        log = tmp_path / "job.log"
        env = ray_env({"RAY_ADDRESS": cluster.address, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO / "platform")})
        with open(log, "w") as f:
            job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "tune_steps.py"), "--config", str(cfg_path)],
                                   stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path), start_new_session=True)
        try:
            run_dir = _wait("Train run with a registered checkpoint", 300,
                            lambda: next((d for d in sorted((exp / "train_runs").glob("train_*")) if _snapshot(d)), None),
                            job, log)
            lost_after = _lose_node_of(cluster, run_dir)
            killed_at = time.monotonic()
            job.wait(timeout=600)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
        ended = len(watcher.samples)
        text = log.read_text()
        assert job.returncode == 0, text[-5000:]
        down = watcher.wait_for(lambda s: s["workers"] == 0, IDLE_S + 60, "0 worker nodes after the study", start=ended)
    finally:
        watcher.stop()
    timeline = watcher.changes()
    print(f"\nnodes over time (watcher): {timeline}\nnode lost after epoch {lost_after}; "
          f"the study went on for {time.monotonic() - killed_at:.0f} s after the kill")

    # scaled out from 0 to both nodes while the trials were pending, back to 0 after the study
    assert timeline[0][1] == 0 and max(w for _, w in timeline) == 2 and down["workers"] == 0
    assert "nodes over time:" in text and "[nodes " in text and f"{SLOT} 2" in text      # the job's own timeline

    # the lost node's trial resumed from its last registered checkpoint: each epoch reported once, the
    # resumed attempt starting at that checkpoint's step (lost work < one epoch); the other trial ran through
    for d in sorted((exp / "train_runs").glob("train_*")):
        trial_dir = exp / f"trial_{d.name.removeprefix('train_')}"
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
        k = lost_after if d == run_dir else EPOCHS
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), (d.name, [r["epoch"] for r in rows])
        assert [r["resumed_from_step"] for r in rows] == [0] * k + [k * STEPS] * (EPOCHS - k), d.name
        assert rows[-1]["step"] == EPOCHS * STEPS

    # MLflow: one FINISHED study run, a FINISHED run per trial with one point per epoch, nothing RUNNING
    from mlflow import MlflowClient

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name(STUDY["tracking"]["experiment_name"]).experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    trials = [r for r in runs if r.data.tags.get("bidpm.role") == "trial"]
    assert len(trials) == 2 and len(runs) == 3
    for r in trials:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/ssim_mean")] == list(range(1, EPOCHS + 1))
