"""What a trial's training cost, as people count it: device-hours = the wall-clock seconds of its Ray Train
``fit()`` x the devices its worker group reserved, summed over every attempt of the trial.

Devices: GPUs (``train.gpus_per_worker`` x ``num_workers``) when ``train.use_gpu``, else CPUs
(``cpus_per_worker`` x ``num_workers``); every table names which (``GPU-h`` / ``CPU-h``). Only the Train
workers' reservation counts: the trial's own coordinator (``tune.trial_cpus``) and a study cell's scoring
task do not.

Why a record of our own rather than Tune's ``time_total_s``: Ray Tune (2.60, ``Trainable.restore``) takes
``time_total_s`` back from a trial's *Tune* checkpoint, and these trials report none (their checkpoints are
Ray Train's, passed to Tune as a path), so a trial retried after a failure or resumed after a driver kill
starts again at 0: ``time_total_s`` counts its last attempt only. Instead each attempt keeps a file of its
own, ``<train run>/attempts/<id>.json`` (atomic writes through ``bidpm.io.storage``: local or object store),
rewritten every ``HEARTBEAT_S`` seconds and at its end, so a killed attempt still counts up to its last beat
(at most ``HEARTBEAT_S`` lost). One writer per file, so no lock; the total is the sum over the files.
Every result the trial reports carries the running total (``cost/device_hours``, ``cost/train_s``,
``cost/devices``, ``cost/device``): the MLflow run and the search table take it from Tune's results.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from types import TracebackType
from typing import Any, Callable, Optional

from ray.tune.integration.ray_train import TuneReportCallback

from ..io import storage

HEARTBEAT_S = 30.0      # how stale a killed attempt's record can be (one small write per trial per beat)
ATTEMPTS = "attempts"

__all__ = ["AttemptClock", "CostReportCallback", "held_devices", "read_attempts", "summed", "running_total"]


def held_devices(tc: Any) -> tuple[str, float]:
    """("GPU", gpus x workers) when ``train.use_gpu``, else ("CPU", cpus x workers): what the worker group reserves."""
    if tc.use_gpu:
        return "GPU", float(tc.gpus_per_worker) * tc.num_workers
    return "CPU", float(tc.cpus_per_worker) * tc.num_workers


def read_attempts(folder: str) -> list[dict[str, Any]]:
    """Every attempt record in ``folder`` (none when it does not exist); temp files of a write in flight skipped."""
    if not storage.is_dir(folder):
        return []
    return [json.loads(storage.read_bytes(storage.join(folder, i.base_name))) for i in storage.list_dir(folder)
            if i.base_name.endswith(".json")]


def summed(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Attempts, wall seconds, device-hours (seconds x devices of each attempt / 3600), the device kind."""
    return {"attempts": len(records), "train_s": float(sum(r["seconds"] for r in records)),
            "device_hours": float(sum(r["seconds"] * r["devices"] for r in records)) / 3600.0,
            "devices": float(records[-1]["devices"]) if records else None,
            "device": records[-1]["device"] if records else None}


def running_total(prior: dict[str, Any], elapsed_s: float, kind: str, devices: float) -> dict[str, Any]:
    """The ``cost/*`` entries of a result: earlier attempts (``summed``) + this one so far."""
    return {"cost/train_s": prior["train_s"] + elapsed_s,
            "cost/device_hours": prior["device_hours"] + elapsed_s * devices / 3600.0,
            "cost/devices": devices, "cost/device": kind, "cost/attempts": prior["attempts"] + 1}


class AttemptClock:
    """This attempt's record, kept fresh while it runs (module docstring). ``with AttemptClock(...) as c:``
    around ``run_training``; ``c.callback()`` is the ``TuneReportCallback`` that adds the running total."""

    def __init__(self, folder: str, kind: str, devices: float, every_s: float = HEARTBEAT_S,
                 now: Callable[[], float] = time.time) -> None:
        self.folder, self.kind, self.devices, self.every_s, self.now = folder, kind, devices, every_s, now
        self.location = storage.join(folder, f"{uuid.uuid4().hex[:12]}.json")
        self.prior = summed([])
        self.started = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def beat(self, finished: bool = False) -> None:
        """Write this attempt's record as of now."""
        rec = {"started": self.started, "seconds": self.now() - self.started, "devices": self.devices,
               "device": self.kind, "finished": finished}
        storage.write_bytes_atomic(self.location, json.dumps(rec).encode())

    def _beats(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a storage hiccup costs one beat, never the training
                pass

    def __enter__(self) -> "AttemptClock":
        self.prior = summed(read_attempts(self.folder))
        self.started = self.now()
        self.beat()
        self._thread = threading.Thread(target=self._beats, name="bidpm-attempt-clock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.beat(finished=exc_type is None)
        except Exception:  # noqa: BLE001 - the training's own error (often the same storage) is the one to see
            if exc_type is None:
                raise

    def callback(self) -> "CostReportCallback":
        return CostReportCallback(self.prior, self.started, self.kind, self.devices)


class CostReportCallback(TuneReportCallback):
    """``TuneReportCallback`` whose results also carry the trial's cost so far (``running_total``). It runs
    in the Train controller (plain floats pickled there): ``time.time()`` there against the attempt's start."""

    def __init__(self, prior: dict[str, Any], started: float, kind: str, devices: float) -> None:
        super().__init__()
        self.prior, self.started, self.kind, self.devices = dict(prior), started, kind, devices

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        cost = running_total(self.prior, time.time() - self.started, self.kind, self.devices)
        super().after_report(run_context, [{**metrics[0], **cost}, *metrics[1:]], checkpoint)
