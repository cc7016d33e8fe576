"""No silent hangs: a Tune callback that stops an experiment whose trials wait for resources nobody frees.

Checked every ``CHECK_INTERVAL_S`` in Tune's loop (``on_step_end``): a trial *computes* when its Ray
Train run is RUNNING (Ray Train's state actor) or it reported since the last check; the experiment
*waits* when no trial computes and a placement group is pending; any progress restarts the clock.
After ``tune.stall_timeout_s`` of waiting on a cluster that cannot grow it raises ``StudyStalled``
(what one trial asks, what is free, which placement groups hold it, what to do); the Tune state and
the checkpoints stay, so the same command resumes. On an autoscaling cluster it only waits, and the
live table says "waiting for N GPUs". ``tune.report_timeout_s`` stops a trial that computes but
reports nothing for that long.

Why not a shorter Ray Train timeout: a worker group that waits behind another trial of the same
experiment must wait, and only the driver sees that the other trial computes.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Mapping, Optional

from ray.tune import Callback

from ..raycluster.resources import cluster_can_grow, describe, shortfall, trial_request, waiting_note
from .names import train_run_name

CHECK_INTERVAL_S = 5.0
_WAITING_TRAIN = ("INITIALIZING", "SCHEDULING", "RESTARTING", "RESIZING")


class StudyStalled(RuntimeError):
    """The study was stopped because it could not make progress; the message says why and what to do.
    Resumable: Tune's state and the Train checkpoints are kept (the CLI exits 75 with the rerun command)."""


def _train_runs() -> Optional[dict[str, str]]:
    """Ray Train run name -> status of its latest run (DeveloperAPI state actor); None if unavailable."""
    import ray

    try:
        from ray.train.v2._internal.state.state_actor import get_state_actor

        actor = get_state_actor()
        if actor is None:
            return {}
        runs = ray.get(actor.get_train_runs.remote(), timeout=5)
    except Exception:  # noqa: BLE001 - internal API: fall back to "reported at least once"
        return None
    latest: dict[str, tuple[int, str]] = {}
    for run in runs.values():
        t = int(getattr(run, "start_time_ns", 0) or 0)
        if run.name not in latest or t >= latest[run.name][0]:
            latest[run.name] = (t, str(getattr(run.status, "value", run.status)))
    return {name: st for name, (_, st) in latest.items()}


def _placement_groups() -> tuple[list[dict[str, float]], list[str]]:
    """(bundles of pending placement groups, short descriptions of the ones holding resources)."""
    import ray

    pending: list[dict[str, float]] = []
    held: list[str] = []
    try:
        table = ray.util.placement_group_table()
    except Exception:  # noqa: BLE001 - diagnostics only
        return pending, held
    for pg_id, pg in table.items():
        bundles = [dict(b) for b in (pg.get("bundles") or {}).values()]
        state = pg.get("state")
        if state in ("PENDING", "RESCHEDULING"):
            pending.extend(bundles)
        elif state == "CREATED":
            held.append(f"{str(pg_id)[:8]} {len(bundles)} x {describe(bundles[0]) if bundles else '{}'}")
    return pending, held


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


class StallWatchdog(Callback):
    """See the module docstring. Plain state only (Tune pickles callbacks into the experiment); the
    clock and Ray lookups are module functions, re-read after a restore (``setup``). A trial's Train
    run is found by ``names.train_run_name`` of the trial's name."""

    def __init__(self, study: str, asked: Mapping[str, float], stall_timeout_s: Optional[float],
                 report_timeout_s: Optional[float] = None, autoscaling: Optional[bool] = None,
                 clock: Callable[[], float] = time.monotonic, check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.study, self.asked = study, dict(asked)
        self.stall_timeout_s, self.report_timeout_s = stall_timeout_s, report_timeout_s
        self.autoscaling, self.clock, self.check_interval_s = autoscaling, clock, check_interval_s
        self._reset()

    @classmethod
    def for_config(cls, cfg: Any, study: str) -> "StallWatchdog":
        """The watchdog of experiment ``study`` run with ``cfg`` (``tune.stall_timeout_s`` / ``report_timeout_s``
        / ``autoscaling``, one trial's ``trial_request``)."""
        t = cfg.tune
        return cls(study, trial_request(cfg), t.stall_timeout_s, t.report_timeout_s, t.autoscaling)

    def _reset(self) -> None:
        self._progress = self.clock()           # last result, computing trial or trial end
        self._last_check = -math.inf
        self._since: dict[str, float] = {}      # trial id -> its start or last result
        self._reported: set[str] = set()        # trials with a result in this fit
        self._can_grow: Optional[bool] = None
        self._said = ""
        self.notes: dict[str, str] = {}         # trial id -> "waiting for 1 GPU" (read by the live table)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k != "notes"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def setup(self, **info: Any) -> None:
        """Once per fit (also after ``Tuner.restore``): monotonic times of another process mean nothing."""
        self._reset()

    # --- Tune events: progress ----------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._since[trial.trial_id] = self.clock()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._progress = self._since[trial.trial_id] = self.clock()
        self._reported.add(trial.trial_id)
        self.notes.pop(trial.trial_id, None)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._progress = self.clock()
        self._since.pop(trial.trial_id, None)
        self.notes.pop(trial.trial_id, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.on_trial_complete(iteration, trials, trial)

    # --- the check ------------------------------------------------------------------------------
    def classify(self, live: list, train: Optional[Mapping[str, str]]) -> tuple[list, list]:
        """(computing, waiting) among RUNNING/PENDING trials. Without Ray Train's state (``train`` None),
        a RUNNING trial computes once it has reported in this fit."""
        computing, waiting = [], []
        for t in live:
            if t.status == "PENDING":
                waiting.append(t)
            elif train is None:
                (computing if t.trial_id in self._reported else waiting).append(t)
            elif train.get(train_run_name(str(t)), "INITIALIZING") in _WAITING_TRAIN:
                waiting.append(t)
            else:
                computing.append(t)
        return computing, waiting

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = self.clock()
        if now - self._last_check < self.check_interval_s:
            return
        self._last_check = now
        live = [t for t in trials if t.status in ("RUNNING", "PENDING")]
        if not live:
            self._progress, self.notes = now, {}
            return
        computing, waiting = self.classify(live, _train_runs())
        if computing:
            self._progress, self.notes = now, {}
            self._check_silent(computing, now)
            return
        pending, held = _placement_groups()
        if not pending:                # nothing asks for resources: starting up, or between Train's retries
            return
        import ray

        free = {k: float(v) for k, v in ray.available_resources().items()}
        total = {k: float(v) for k, v in ray.cluster_resources().items()}
        self.check_waiting(waiting or live, pending, held, free, total, now)

    def check_waiting(self, waiting: list, pending: list[dict[str, float]], held: list[str],
                      free: Mapping[str, float], total: Mapping[str, float], now: float) -> None:
        """No trial computes and resources are pending: note it, and stop after the timeout (fixed cluster)."""
        short = shortfall(_sum(pending), free)
        note = waiting_note(short) if short else "waiting for resources"
        self.notes = {t.trial_id: note for t in waiting}
        if self._can_grow is None:
            self._can_grow = cluster_can_grow(self.autoscaling)
        if note != self._said:
            print(f"[bidpm] study {self.study}: {note} (asked {describe(_sum(pending))}, free {describe(free)} of {describe(total)})"
                  + ("; the cluster autoscales: waiting for nodes" if self._can_grow else ""), file=sys.stderr, flush=True)
            self._said = note
        waited = now - self._progress
        if self._can_grow or self.stall_timeout_s is None or waited < self.stall_timeout_s:
            return
        raise StudyStalled(
            f"study {self.study!r} stopped: for {waited:.0f} s (tune.stall_timeout_s={self.stall_timeout_s:g}) no trial "
            f"computed while trial {waiting[0].trial_id} waited for resources: asked {describe(_sum(pending))} (one trial: "
            f"{describe(self.asked)} = tune.trial_cpus + train.num_workers x per-worker resources); the cluster has "
            f"{describe(free)} free of {describe(total)}" + (f", held by placement groups {', '.join(held[:4])}" if held else "")
            + ". A fixed cluster will not free them by itself: another Ray instance on this host or another job may "
            "hold them, or a finished run's reservation leaked (`ray status --address <this cluster>` shows them); stop "
            "that instance or job, or restart this Ray, or lower train.num_workers / train.cpus_per_worker. On a cluster "
            "that adds nodes set tune.autoscaling=true (it then waits); tune.stall_timeout_s=null waits forever. "
            "Finished trials and checkpoints are kept")

    def _check_silent(self, computing: list, now: float) -> None:
        if self.report_timeout_s is None:
            return
        for t in computing:
            since = self._since.setdefault(t.trial_id, now)
            if now - since >= self.report_timeout_s:
                raise StudyStalled(
                    f"study {self.study!r} stopped: trial {t.trial_id}'s workers run but it has reported nothing for "
                    f"{now - since:.0f} s (tune.report_timeout_s={self.report_timeout_s:g}); it may hang: see its logs "
                    f"under {getattr(t, 'local_path', None) or 'the study folder'}. If an epoch (+ validation) "
                    f"takes longer, raise tune.report_timeout_s (null = no limit). Finished trials and checkpoints are kept")
