"""What a tracking outage leaves unwritten, kept beside the experiment and written by the next driver.

A Tune callback that cannot reach the server journals the writes it still had to make (an epoch's
metrics, a trial's tags, checkpoint and end) as JSON lines (``JOURNAL_FILE``, written atomically); the
rerun replays them, oldest first, before any trial continues, so no record is lost and none doubled
(a metric the store committed before the outage cut its answer, or commits late, is not written twice:
each metrics entry keeps the time it was made, which with key, step and value is a SQL store's primary
key, so the store takes the replay as the record it has; an entry without that time, journaled before
entries carried it, is checked against the run's history instead: ``unwritten_metrics``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..io import storage
from ..io.checkpoints import local_checkpoint
from .runs import log_metrics
from .store import is_outage, unavailable

JOURNAL_FILE = "tracking_journal.jsonl"

__all__ = ["JOURNAL_FILE", "apply_op", "append_journal", "log_checkpoint_files", "replay_journal", "write_journal"]


def log_checkpoint_files(client: Any, run_id: str, location: str, log_checkpoints: bool, trial_id: str) -> None:
    """The best epoch's checkpoint folder (``log_checkpoints``) and its sample grid PNG; a warning (never
    a silent skip) when it cannot be read from the driver. Object-store checkpoints are downloaded to a
    temporary folder first (MLflow logs local files only)."""
    try:
        with local_checkpoint(location) as folder:
            if log_checkpoints:
                client.log_artifacts(run_id, str(folder), "best_checkpoint")
            for png in sorted(folder.glob("*.png")):
                client.log_artifact(run_id, str(png), "sample_grid")
    except OSError as exc:                 # FileNotFoundError, pyarrow I/O errors
        if is_outage(exc):        # requests' errors are OSErrors too: the server is gone, not the file
            raise
        print(f"warning: trial {trial_id}: best checkpoint not logged to MLflow run {run_id}: {exc}", file=sys.stderr)


def apply_op(client: Any, op: dict[str, Any]) -> None:
    """One tracking write, as the callback and the journal describe it."""
    kind, run_id = op["op"], op["run"]
    if kind == "metrics":
        log_metrics(client, run_id, op["metrics"], int(op["step"]), op.get("timestamp_ms"))
    elif kind == "tag":
        client.set_tag(run_id, op["key"], op["value"])
    elif kind == "checkpoint":
        log_checkpoint_files(client, run_id, op["location"], bool(op["log_checkpoints"]), op["trial"])
    elif kind == "status":
        client.set_terminated(run_id, status=op["status"])
    else:
        raise ValueError(f"unknown journal entry {op!r}")


def unwritten_metrics(client: Any, run_id: str, metrics: dict[str, float], step: int) -> dict[str, float]:
    """``metrics`` less those the run already holds at ``step`` with the same value: the replay of a
    journal entry that carries no record time (journaled before entries kept one).

    Why: an outage can begin between the store's commit and the server's answer (a database stopped
    mid-request, or the client's retry of a request that did commit), so a journaled batch may already be
    written. Writing the same (key, step, value) again adds nothing but a second point, so the replay skips
    it; a different value at that step is a different record and is written."""
    kept = {}
    for key, value in metrics.items():
        if not any(m.step == step and m.value == float(value) for m in client.get_metric_history(run_id, key)):
            kept[key] = value
    return kept


def read_journal(location: str) -> list[dict[str, Any]]:
    if not storage.is_file(location):
        return []
    return [json.loads(line) for line in storage.read_bytes(location).decode().splitlines() if line.strip()]


def write_journal(location: str, ops: list[dict[str, Any]]) -> None:
    """The journal holding exactly ``ops`` (none: the file is removed)."""
    if ops:
        storage.write_bytes_atomic(location, "".join(json.dumps(op) + "\n" for op in ops).encode())
    elif storage.is_file(location):
        fs, path = storage.resolve(location)
        fs.delete_file(path)


def replay_journal(client: Any, location: str, cfg: Any, print_fn=print) -> int:
    """Apply what an outage left unwritten (oldest first), dropping each entry once written; returns how
    many. Called by the next driver after it connected, before any trial continues."""
    ops = read_journal(location)
    for i, op in enumerate(ops):
        try:
            if op["op"] == "metrics" and op.get("timestamp_ms") is None:   # an entry of an older journal
                op = {**op, "metrics": unwritten_metrics(client, op["run"], op["metrics"], int(op["step"]))}
            apply_op(client, op)
        except Exception as exc:  # noqa: BLE001 - an outage again: keep the rest for the next rerun
            write_journal(location, ops[i:])
            if is_outage(exc):
                raise unavailable(cfg, exc, "writing what the last outage left unwritten") from None
            raise
    if ops:
        write_journal(location, [])
        print_fn(f"tracking: wrote {len(ops)} record(s) the last run could not (tracking server outage)")
    return len(ops)


def append_journal(location: str, ops: list[dict[str, Any]]) -> None:
    """Add ``ops`` to the journal; a warning (the outage is what the user must hear about) if it cannot."""
    try:
        write_journal(location, read_journal(location) + ops)
    except Exception as exc:  # noqa: BLE001 - the outage is what the user must hear about
        print(f"warning: could not keep {len(ops)} unwritten tracking record(s) in {location}: {exc}", file=sys.stderr)
