"""A driver killed after Ray Train registered an epoch's checkpoint but before its Tune callback wrote that
epoch to MLflow: the resumed driver's callback writes the epoch from the checkpoint's metrics file, once,
at the time the epoch was made. Against a real MLflow store (SQLite); no Ray runs."""

from __future__ import annotations

import pickle
import time

from bidpm.config import load_config
from bidpm.io.checkpoints import EPOCH_END_KEY, read_epoch_metrics, write_epoch_metrics
from bidpm.tune.mlflow import MLflowTrialCallback

from tiny import tiny_overrides  # tests/tiny.py


class _Callback(MLflowTrialCallback):
    def trial_cfg(self, trial):
        return self.cfg


class _Trial:
    trial_id = "abc12"
    config: dict = {}

    def __str__(self) -> str:
        return "trial_abc12"


def _epoch(folder, epoch: int, ssim: float) -> int:
    """Epoch ``epoch``'s checkpoint folder with its metrics file, as the train loop writes it; its time."""
    time.sleep(0.01)                                  # every record made at its own millisecond, in order
    made_ms = int(time.time() * 1000)
    ck = folder / f"checkpoint_epoch_{epoch:04d}"
    ck.mkdir(parents=True)
    write_epoch_metrics(ck, {"epoch": epoch, "step": 3 * epoch, "val/ssim_mean": ssim, "note": "text"}, made_ms)
    time.sleep(0.01)
    return made_ms


def _setup(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"))
    from mlflow import MlflowClient

    client = MlflowClient(cfg.mlflow_uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp).info.run_id
    runs = tmp_path / "train_runs"
    cb = _Callback(cfg.to_dict(), exp, parent, {}, {"content_digest": "d" * 64}, journal=str(tmp_path / "journal.jsonl"),
                   train_runs=str(runs))
    return client, cb, runs / "train_abc12"


def test_a_resumed_trial_writes_the_epochs_its_killed_driver_did_not(tmp_path):
    client, first, run = _setup(tmp_path)
    trial = _Trial()
    first.on_trial_start(0, [], trial)
    _epoch(run, 1, 0.25)
    first.on_trial_result(0, [], trial, {"epoch": 1, "val/ssim_mean": 0.25})
    made = _epoch(run, 2, 0.5)          # registered by Ray Train; the driver killed before its result
    (run / "checkpoint_epoch_0003").mkdir()          # an upload in progress: no metrics file yet
    assert sorted(read_epoch_metrics(str(run))) == [1, 2]

    resumed = pickle.loads(pickle.dumps(first))       # as Tune restores it into the next driver
    resumed.set_state(first.get_state())
    resumed.on_trial_start(0, [], trial)
    run_id = first.runs[trial.trial_id]
    hist = client.get_metric_history(run_id, "val/ssim_mean")
    assert [(m.step, m.value) for m in hist] == [(1, 0.25), (2, 0.5)]
    assert hist[1].timestamp == made                             # when the epoch was made
    assert [m.step for m in client.get_metric_history(run_id, "epoch")] == [1, 2]
    assert "step" not in client.get_run(run_id).data.metrics                  # what a result would log, no more
    # its result comes after all: only what the checkpoint lacked (the controller's cost entries) is added
    resumed.on_trial_result(0, [], trial, {"epoch": 2, "val/ssim_mean": 0.5, "cost/device_hours": 0.01, EPOCH_END_KEY: made})
    (cost,) = client.get_metric_history(run_id, "cost/device_hours")
    assert (cost.step, cost.value, cost.timestamp) == (2, 0.01, made)
    resumed.on_trial_result(0, [], trial, {"epoch": 2, "val/ssim_mean": 0.5, "cost/device_hours": 0.01})  # again: nothing
    resumed.on_trial_result(0, [], trial, {"epoch": 3, "val/ssim_mean": 0.75})
    assert [m.step for m in client.get_metric_history(run_id, "val/ssim_mean")] == [1, 2, 3]
    assert len(client.get_metric_history(run_id, "cost/device_hours")) == 1

    again = pickle.loads(pickle.dumps(resumed))                               # another restart: nothing new
    again.set_state(resumed.get_state())
    again.on_trial_start(0, [], trial)
    assert [m.step for m in client.get_metric_history(run_id, "epoch")] == [1, 2, 3]


def test_an_epoch_result_lost_in_a_worker_restart_is_written_before_the_next(tmp_path):
    """Ray Train registered epoch 2, then its worker was killed before the result reached Tune; the
    restarted worker reports epoch 3: the run gets epoch 2 (from its checkpoint) first, then 3."""
    client, cb, run = _setup(tmp_path)
    trial = _Trial()
    cb.on_trial_start(0, [], trial)
    made = {}
    for epoch, ssim in ((1, 0.25), (2, 0.5), (3, 0.75), (4, 0.8)):
        made[epoch] = _epoch(run, epoch, ssim)
        if epoch == 3:                                 # the driver lags: epoch 3 is made before it logs epoch 1
            for e, v in ((1, 0.25), (3, 0.75)):
                cb.on_trial_result(0, [], trial, {"epoch": e, "val/ssim_mean": v, EPOCH_END_KEY: made[e]})
    cb.on_trial_result(0, [], trial, {"epoch": 4, "val/ssim_mean": 0.8, EPOCH_END_KEY: made[4]})   # no gap
    hist = client.get_metric_history(cb.runs[trial.trial_id], "val/ssim_mean")
    assert [(m.step, m.value) for m in hist] == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 0.8)]
    assert [m.timestamp for m in hist] == [made[e] for e in (1, 2, 3, 4)]    # each epoch at its own time


def test_a_cells_scores_reported_after_a_restore_reach_its_run_once(tmp_path):
    """A study cell's last result is its scores (no ``epoch``; step = Tune's iteration count, which starts
    again in a restored trial). Driver 1 trained epoch 1 and stopped before its result was logged; driver 2
    wrote epoch 1 from its checkpoint and was killed while scoring; driver 3's restored trial reports the
    scores at iteration 1, epoch 1's step: they reach the run (they were dropped as a repeat of epoch 1, so
    the cell's run had no test scores and no cost). Driver 4 reports them again (read from the cell's file):
    nothing is written twice."""
    client, first, run = _setup(tmp_path)
    trial = _Trial()
    first.on_trial_start(0, [], trial)
    made = _epoch(run, 1, 0.25)                       # registered; the driver stopped before its result

    def restored(cb):
        nxt = pickle.loads(pickle.dumps(cb))          # as Tune restores it into the next driver
        nxt.set_state(cb.get_state())
        nxt.on_trial_start(0, [], trial)
        return nxt

    second = restored(first)                          # writes epoch 1 from the checkpoint; killed while scoring
    run_id = first.runs[trial.trial_id]
    assert [m.step for m in client.get_metric_history(run_id, "epoch")] == [1]
    third = restored(second)
    scores = {"test/fwd_ssim_mean": 0.4, "cost/device_hours": 0.02, "cell_done": 1, "training_iteration": 1}
    third.on_trial_result(0, [], trial, dict(scores))
    got = client.get_run(run_id).data.metrics
    assert got["test/fwd_ssim_mean"] == 0.4 and got["cost/device_hours"] == 0.02, sorted(got)
    assert [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, "val/ssim_mean")] == [(1, 0.25, made)]
    restored(third).on_trial_result(0, [], trial, dict(scores))          # driver 4: the same scores again
    for key in ("test/fwd_ssim_mean", "cost/device_hours", "epoch", "val/ssim_mean"):
        assert len(client.get_metric_history(run_id, key)) == 1, key
