"""The outage journal's replay against a real MLflow store (SQLite): a batch the store committed before
the outage cut its answer is not written twice; what is missing is written; the journal is then gone."""

from __future__ import annotations

from mlflow import MlflowClient

from bidpm.tracking.journal import read_journal, replay_journal, write_journal
from bidpm.tracking.runs import log_metrics


def _client_and_run(tmp_path) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("journal", artifact_location=str(tmp_path / "artifacts"))
    return client, client.create_run(exp).info.run_id


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_replayed_batch_the_store_already_committed_is_not_doubled(tmp_path):
    client, run = _client_and_run(tmp_path)
    log_metrics(client, run, {"epoch": 1, "val/psnr": 21.5}, 1)        # committed; the answer was lost
    journal = str(tmp_path / "tracking_journal.jsonl")
    write_journal(journal, [
        {"op": "metrics", "run": run, "step": 1, "metrics": {"epoch": 1.0, "val/psnr": 21.5, "val/ssim": 0.7}},
        {"op": "metrics", "run": run, "step": 2, "metrics": {"epoch": 2.0, "val/psnr": 22.0}},
        {"op": "tag", "run": run, "key": "bidpm.checkpoint", "value": "epoch 2"},
        {"op": "status", "run": run, "status": "FINISHED"},
    ])
    printed: list[str] = []
    assert replay_journal(client, journal, None, printed.append) == 4
    assert _history(client, run, "epoch") == [(1, 1.0), (2, 2.0)]            # step 1 once, not twice
    assert _history(client, run, "val/psnr") == [(1, 21.5), (2, 22.0)]
    assert _history(client, run, "val/ssim") == [(1, 0.7)]                   # the part not written: written
    got = client.get_run(run)
    assert got.data.tags["bidpm.checkpoint"] == "epoch 2" and got.info.status == "FINISHED"
    assert read_journal(journal) == [] and printed == ["tracking: wrote 4 record(s) the last run could not "
                                                       "(tracking server outage)"]
    assert replay_journal(client, journal, None, printed.append) == 0         # replayed once: nothing left


def test_a_different_value_at_a_logged_step_is_a_record_and_is_written(tmp_path):
    client, run = _client_and_run(tmp_path)
    log_metrics(client, run, {"train/loss": 0.5}, 3)
    journal = str(tmp_path / "tracking_journal.jsonl")
    write_journal(journal, [{"op": "metrics", "run": run, "step": 3, "metrics": {"train/loss": 0.25}}])
    replay_journal(client, journal, None, lambda *_: None)
    assert _history(client, run, "train/loss") == [(3, 0.25), (3, 0.5)]


def test_a_write_committed_after_its_replay_is_the_same_record(tmp_path):
    """The server's first attempt commits only after the rerun replayed it (a request held while its
    database was down): both carry the entry's own time, so the SQL store keeps one record."""
    from bidpm.tracking.journal import apply_op

    client, run = _client_and_run(tmp_path)
    op = {"op": "metrics", "run": run, "step": 1, "timestamp_ms": 1_700_000_000_123, "metrics": {"epoch": 1.0}}
    journal = str(tmp_path / "tracking_journal.jsonl")
    write_journal(journal, [op])
    replay_journal(client, journal, None, lambda *_: None)
    apply_op(client, op)                                                    # the late commit of the first attempt
    (m,) = client.get_metric_history(run, "epoch")
    assert (m.step, m.value, m.timestamp) == (1, 1.0, 1_700_000_000_123)
