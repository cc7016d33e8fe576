"""No silent hangs: a Tune callback that ends a study whose trials wait for resources nobody will free.

What hung (issue 13, fault 6): with a second Ray instance on the host, Ray Train's placement-group
cleaner connected to the wrong instance, a finished trial's reservation leaked, the next trial's worker
group never got its CPUs, and Ray Train retried the start every 60 s forever
(``train.controller_failure_limit=-1``, right on an autoscaling cluster) while the driver showed only
RUNNING. The trigger is in Ray; the endless, silent wait was ours.

The rule, checked every ``CHECK_INTERVAL_S`` in Tune's loop (``on_step_end``):

- a trial *computes* when its Ray Train run is RUNNING (its workers started; read from Ray Train's
  state actor) or it reported a result since the last check;
- the study *waits for resources* when no trial computes and a placement group is pending (a Tune
  trial or a Train worker group asked for resources that are not free);
- any progress (a result, a trial computing, a trial ending) restarts the stall clock.

When the study has waited for resources ``tune.stall_timeout_s`` without progress on a cluster that
cannot grow, the watchdog raises ``StudyStalled``: what one trial asks (Tune trial + Train workers),
what the cluster has free and in total, which placement groups hold resources, and how to proceed.
Tune then stops the trials; its experiment state and the Train checkpoints stay, so rerunning the
command resumes. On an autoscaling cluster waiting is right: nothing stops, and the live table says
"waiting for N GPUs". Which clusters grow: ``tune.autoscaling`` when set; unset, a local Ray the driver
started itself is fixed, and a cluster it joined (``RAY_ADDRESS``, ``ray job submit``) is assumed to
grow unless Ray's autoscaler says otherwise - set ``tune.autoscaling=false`` on a fixed shared cluster. ``tune.report_timeout_s`` (off by default: an epoch may take hours) also stops a
trial whose workers run but report nothing that long.

Why not a shorter Ray Train timeout instead: a worker group that waits behind another trial of the
same study (``max_concurrent_trials`` above what fits) must wait, and only the study sees that
another trial computes. The check reads Ray's state (placement groups, resources, Train runs) only
every few seconds and from the driver; it never touches a trial.
"""

from __future__ import annotations

import math
import re
import sys
import time
from typing import Any, Callable, Mapping, Optional

from ray.tune import Callback

CHECK_INTERVAL_S = 5.0
_PG_RESOURCE = re.compile(r"_group_(\d+_)?[0-9a-f]{20,}$")     # Ray's per-placement-group resources (CPU_group_<id>)
_WAITING_TRAIN = ("INITIALIZING", "SCHEDULING", "RESTARTING", "RESIZING")


class StudyStalled(RuntimeError):
    """The study was stopped because it could not make progress; the message says why and what to do.
    Resumable: Tune's state and the Train checkpoints are kept (the CLI exits 75 with the rerun command)."""


def trial_request(cfg: Any, with_trial: bool = True) -> dict[str, float]:
    """Resources one trial holds while it trains: its Tune actor (``tune.trial_cpus``, unless
    ``with_trial`` is False: a plain ``jobs/train.py`` run) plus its Train worker group
    (``train.launch.build_scaling_config``, so every per-worker resource counts)."""
    from ..train.launch import build_scaling_config

    workers = {k: float(v) for k, v in build_scaling_config(cfg).total_resources.items() if v}
    if with_trial:
        workers["CPU"] = workers.get("CPU", 0.0) + float(cfg.tune.trial_cpus)
    return workers


def shortfall(asked: Mapping[str, float], free: Mapping[str, float]) -> dict[str, float]:
    """Resources by which ``asked`` exceeds ``free`` (empty when it fits)."""
    return {k: v - free.get(k, 0.0) for k, v in asked.items() if v - free.get(k, 0.0) > 1e-9}


def amount(n: float, resource: str) -> str:
    """'2 GPUs', '0.25 CPU', '1 CPU' (plural above 1)."""
    name = resource if resource in ("CPU", "GPU") else f"'{resource}'"
    return f"{n:g} {name}{'s' if n > 1 and resource in ('CPU', 'GPU') else ''}"


def waiting_note(short: Mapping[str, float]) -> str:
    """What the live table shows for a trial that waits: 'waiting for 1 GPU, 0.5 CPU'."""
    return "waiting for " + ", ".join(amount(v, k) for k, v in sorted(short.items(), key=lambda kv: kv[0] != "GPU"))


def _fmt(res: Mapping[str, float]) -> str:
    """{CPU: 0.75, GPU: 1} - the schedulable resources (not node:/memory bookkeeping keys)."""
    keep = {k: v for k, v in res.items() if ":" not in k and k not in ("memory", "object_store_memory")
            and not _PG_RESOURCE.search(k)}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(keep.items())) + "}"


def max_cluster_resources() -> Optional[dict[str, float]]:
    """What an autoscaling cluster can grow to (Ray's autoscaler publishes its node types), else None.
    Ray Train reads the same record to refuse a worker group larger than the cluster can ever be."""
    try:
        from ray._private.state import state

        got = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - private API; absent means "not known to autoscale"
        return None
    return {k: float(v) for k, v in got.items()} if got else None


def started_here() -> bool:
    """Did this driver's ``ray.init`` start the cluster (a local Ray, which cannot grow)?"""
    import ray._private.worker as w

    return bool(getattr(getattr(w, "_global_node", None), "ray_init_cluster", False))


def cluster_can_grow(setting: Optional[bool]) -> bool:
    """``tune.autoscaling``, or detected: the autoscaler published its node types (Ray's own record), or
    else the driver joined a cluster it did not start (RAY_ADDRESS, ``ray job submit``), which may
    autoscale: it is waited for (the wait is printed); ``tune.autoscaling=false`` makes it a fixed one."""
    if setting is not None:
        return setting
    return max_cluster_resources() is not None or not started_here()


def check_fits(cfg: Any, limit: Optional[Mapping[str, float]] = None, can_grow: Optional[bool] = None,
               with_trial: bool = True) -> None:
    """Before any trial: refuse a trial larger than the cluster is (fixed) or can become (autoscaling).

    Raises ``ConfigError`` naming the settings (Ray Train on a fixed cluster would wait for it forever).
    ``limit``/``can_grow`` default to the connected cluster's."""
    from ..config import ConfigError

    grow = cluster_can_grow(cfg.tune.autoscaling) if can_grow is None else can_grow
    if limit is None:
        import ray

        most = max_cluster_resources() if grow else None
        if grow and most is None:
            return                               # autoscaling by setting, its maximum unknown: nothing to compare
        limit = most or {k: float(v) for k, v in ray.cluster_resources().items()}
    asked = trial_request(cfg, with_trial)
    short = shortfall(asked, limit)
    if short:
        tc = cfg.train
        what = ", ".join(f"{amount(asked[k], k)} (the cluster {'can grow to' if grow else 'has'} {limit.get(k, 0.0):g})"
                         for k in short)
        raise ConfigError(
            f"one {'trial' if with_trial else 'run'} needs {what}: "
            + (f"tune.trial_cpus={cfg.tune.trial_cpus:g} + " if with_trial else "") + f"train.num_workers={tc.num_workers} x "
            f"(train.cpus_per_worker={tc.cpus_per_worker:g}" + (f", train.gpus_per_worker={tc.gpus_per_worker:g}" if tc.use_gpu else "")
            + "); lower them or use a larger cluster. Nothing was run")


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
            held.append(f"{str(pg_id)[:8]} {len(bundles)} x {_fmt(bundles[0]) if bundles else '{}'}")
    return pending, held


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


class StallWatchdog(Callback):
    """See the module docstring. Plain state only (Tune pickles callbacks into the experiment); the
    clock and Ray lookups are module functions, re-read after a restore (``setup``)."""

    def __init__(self, study: str, asked: Mapping[str, float], stall_timeout_s: Optional[float],
                 report_timeout_s: Optional[float] = None, autoscaling: Optional[bool] = None,
                 run_name: str = "trial", clock: Callable[[], float] = time.monotonic,
                 check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.study, self.asked = study, dict(asked)
        self.stall_timeout_s, self.report_timeout_s = stall_timeout_s, report_timeout_s
        self.autoscaling, self.run_name, self.clock, self.check_interval_s = autoscaling, run_name, clock, check_interval_s
        self._reset()

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
    def train_run_name(self, trial: Any) -> str:
        """The Train run a trial starts (``tune.launch._trial`` / ``tune.study._cell_trial`` name them)."""
        if self.run_name == "cell" and isinstance((trial.config or {}).get("cell"), str):
            return f"train_{trial.config['cell']}"
        return f"train_{trial.trial_id}"

    def classify(self, live: list, train: Optional[Mapping[str, str]]) -> tuple[list, list]:
        """(computing, waiting) among RUNNING/PENDING trials. Without Ray Train's state (``train`` None),
        a RUNNING trial computes once it has reported in this fit."""
        computing, waiting = [], []
        for t in live:
            if t.status == "PENDING":
                waiting.append(t)
            elif train is None:
                (computing if t.trial_id in self._reported else waiting).append(t)
            elif train.get(self.train_run_name(t), "INITIALIZING") in _WAITING_TRAIN:
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
            print(f"[bidpm] study {self.study}: {note} (asked {_fmt(_sum(pending))}, free {_fmt(free)} of {_fmt(total)})"
                  + ("; the cluster autoscales: waiting for nodes" if self._can_grow else ""), file=sys.stderr, flush=True)
            self._said = note
        waited = now - self._progress
        if self._can_grow or self.stall_timeout_s is None or waited < self.stall_timeout_s:
            return
        raise StudyStalled(
            f"study {self.study!r} stopped: for {waited:.0f} s (tune.stall_timeout_s={self.stall_timeout_s:g}) no trial "
            f"computed while trial {waiting[0].trial_id} waited for resources: asked {_fmt(_sum(pending))} (one trial: "
            f"{_fmt(self.asked)} = tune.trial_cpus + train.num_workers x per-worker resources); the cluster has "
            f"{_fmt(free)} free of {_fmt(total)}" + (f", held by placement groups {', '.join(held[:4])}" if held else "")
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
