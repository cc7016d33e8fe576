"""A compact live progress table for a study, instead of Ray Tune's per-trial config/result dumps.

A ``ray.tune.Callback``, not a ``ProgressReporter``: Ray 2.60's default output engine ignores
``RunConfig(progress_reporter=...)`` at every ``verbose`` level (see ``progress_settings``).
Formatting is pure (plain dicts -> str) so it is tested without Ray; the callback only adapts Trials.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from ray.tune import Callback

COLUMNS = ("trial", "N", "grid", "lambda_u", "kernel", "fwd SSIM", "bwd SSIM", "epochs", "status")
_STATUS = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused", "ERROR": "error"}


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _status(info: Mapping[str, Any], epochs: Optional[int], max_epochs: Optional[int]) -> str:
    """TERMINATED -> finished / stopped (ASHA stopped it before ``max_epochs``) / done (unknown)."""
    s = str(info.get("status", "PENDING"))
    if s in ("RUNNING", "PENDING") and info.get("note"):
        return str(info["note"])               # e.g. "waiting for 1 GPU" (bidpm.tune.watchdog)
    if s != "TERMINATED":
        return _STATUS.get(s, s.lower())
    if max_epochs is None:
        return "done"
    return "finished" if (epochs or 0) >= max_epochs else "stopped"


def trial_cells(info: Mapping[str, Any], max_epochs: Optional[int] = None) -> list[str]:
    """One row. ``info``: {"trial", "status" (Ray's name), "config" (dotted keys), "result" (latest)}."""
    cfg, res = info.get("config") or {}, info.get("result") or {}
    grid = list(cfg.get("method.time_grid") or [])
    lam = cfg.get("method.lambda_unpaired")
    epochs = res.get("training_iteration")
    return [
        str(info.get("trial", "?")),
        str(len(grid) - 1) if grid else "-",
        "[" + ",".join(f"{t:.3g}" for t in grid) + "]" if grid else "-",
        f"{lam:.3g}" if isinstance(lam, (int, float)) else "-",
        str(cfg.get("method.mmd_kernel") or "") if lam else "",  # kernel is unused when lambda_u = 0
        _num(res.get("val/fwd_ssim_mean")),
        _num(res.get("val/bwd_ssim_mean")),
        _num(epochs),
        _status(info, epochs, max_epochs),
    ]


def count_line(trials: Sequence[Mapping[str, Any]], total: Optional[int] = None) -> str:
    """'trials: X done, Y running, Z pending (of N)'; trials the searcher has not created yet are pending."""
    n = {s: sum(1 for t in trials if t.get("status") == s) for s in ("TERMINATED", "ERROR", "RUNNING")}
    total = max(total or 0, len(trials))
    pending = total - sum(n.values())
    err = f", {n['ERROR']} errored" if n["ERROR"] else ""
    return f"trials: {n['TERMINATED']} done{err}, {n['RUNNING']} running, {pending} pending (of {total})"


def format_progress(trials: Sequence[Mapping[str, Any]], total: Optional[int] = None, max_rows: int = 0,
                    max_epochs: Optional[int] = None) -> str:
    """Fixed-width table + count line. ``max_rows`` > 0: unfinished trials and the latest finished ones."""
    shown = list(trials)
    if 0 < max_rows < len(shown):
        finished = [t for t in shown if t.get("status") in ("TERMINATED", "ERROR")]
        room = max(max_rows - (len(shown) - len(finished)), 0)
        hidden = {id(t) for t in finished[:len(finished) - room]}
        shown = [t for t in shown if id(t) not in hidden]
    body = [trial_cells(t, max_epochs) for t in shown]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(COLUMNS), line(["-" * w for w in widths]), *(line(r) for r in body)]
    if len(shown) < len(trials):
        out.append(f"({len(trials) - len(shown)} earlier finished trials not shown)")
    return "\n".join(out + [count_line(trials, total)])


def trial_info(trial: Any, notes: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Plain dict of a ``ray.tune.experiment.Trial``; ``notes``: trial id -> what it waits for.

    Reads ``run_metadata.last_result``, not ``Trial.last_result``: that property may ``ray.get`` the
    actor's default result and so block Tune's loop while a trial actor waits for resources.
    """
    meta = getattr(trial, "run_metadata", None)
    return {"trial": trial.trial_id, "status": trial.status, "config": dict(trial.config or {}),
            "result": dict(getattr(meta, "last_result", None) or {}), "note": (notes or {}).get(trial.trial_id)}


def _print(text: str) -> None:
    print(text, flush=True)


class BidpmReporter(Callback):
    """Prints the table when a trial changes status, else at most every ``interval_s`` (if it changed).

    A new trial appearing as pending is not a change (the searcher creates trials just before they
    start, so that would print every table twice); its start is.

    Picklable (Tune saves RunConfig callbacks in ``tuner.pkl``): keep ``print_fn``/``clock`` module-level
    functions; ``print_fn`` None looks ``print`` up when printing (Ray Tune replaces ``builtins.print`` in
    the driver, and the replaced function does not pickle by reference).
    functions, not lambdas.
    """

    def __init__(self, interval_s: float = 60.0, print_fn: Optional[Callable[[str], Any]] = None,
                 clock: Callable[[], float] = time.monotonic, max_rows: int = 20, max_epochs: Optional[int] = None,
                 total: Optional[int] = None, watchdog: Any = None) -> None:
        self.interval_s, self.print_fn, self.clock = interval_s, print_fn, clock
        self.max_rows, self.max_epochs, self.total = max_rows, max_epochs, total
        self.watchdog = watchdog                 # a StallWatchdog: its ``notes`` say what trials wait for
        self._reset()

    def _reset(self) -> None:
        self._statuses: tuple = ()
        self._last_text: Optional[str] = None
        self._last_time = -math.inf

    def setup(self, total_num_samples: Optional[int] = None, **info: Any) -> None:
        """Tune calls this once per fit (also after ``Tuner.restore``, with state from the pickle)."""
        self._reset()
        if total_num_samples and total_num_samples > 0:
            self.total = total_num_samples

    def update(self, trials: Sequence[Mapping[str, Any]], done: bool = False) -> bool:
        """Decide and print; True when it printed. ``trials``: ``trial_info`` dicts."""
        statuses = tuple((t.get("trial"), t.get("status"), t.get("note")) for t in trials
                         if t.get("status") != "PENDING" or t.get("note"))
        changed, now = statuses != self._statuses, self.clock()
        if not trials or not (changed or done or now - self._last_time >= self.interval_s):
            return False
        text = format_progress(trials, self.total, self.max_rows, self.max_epochs)
        self._statuses = statuses
        if text == self._last_text:              # interval passed, nothing new to show
            return False
        (self.print_fn or _print)(text)
        self._last_text, self._last_time = text, now
        return True

    def _notes(self) -> Optional[Mapping[str, str]]:
        return getattr(self.watchdog, "notes", None)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.update([trial_info(t, self._notes()) for t in trials])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.update([trial_info(t) for t in trials], done=True)


def progress_settings(cfg: Any, callbacks: Optional[Sequence[Callback]] = None,
                      print_fn: Optional[Callable[[str], Any]] = None, interval_s: float = 60.0,
                      watchdog: Any = None) -> dict[str, Any]:
    """RunConfig kwargs: ``RunConfig(name=..., storage_path=..., **progress_settings(cfg, callbacks))``.

    ``cfg.tune.verbose`` true: ``verbose=1`` (Ray's own output, as before). False: ``verbose=0`` and a
    ``BidpmReporter`` appended to ``callbacks``. Why: in Ray 2.60 the new output engine (default,
    ``RAY_AIR_NEW_OUTPUT`` unset) drops a passed ``progress_reporter`` at every level ("AIR_VERBOSITY
    is set, ignoring passed-in ProgressReporter"); only the legacy engine (``RAY_AIR_NEW_OUTPUT=0``)
    calls one, at ``verbose >= 1``. ``verbose=0`` silences the new engine's heartbeat tables and
    per-trial config/result dumps, while callbacks still run. 60 s default: epochs take minutes, and
    status changes print at once anyway. ``Tuner.restore`` reuses the pickled RunConfig (so
    the first launch's choice sticks; the reporter must be picklable). ``watchdog`` (a
    ``bidpm.tune.watchdog.StallWatchdog``) is added to the callbacks; the table shows what its waiting
    trials wait for ("waiting for 2 GPUs").
    """
    cbs = list(callbacks or []) + ([watchdog] if watchdog is not None else [])
    if cfg.tune.verbose:
        return {"verbose": 1, "callbacks": cbs}
    reporter = BidpmReporter(interval_s=interval_s, print_fn=print_fn, max_epochs=cfg.train.epochs,
                             total=cfg.tune.num_samples, watchdog=watchdog)
    return {"verbose": 0, "callbacks": cbs + [reporter]}


class CellProgress(Callback):
    """A line per finished cell, and the count of cells done / running / pending."""

    def __init__(self, total: int) -> None:
        self.total = total

    def _count(self, trials: list, ending: Any = None, as_status: str = "TERMINATED") -> str:
        """Tune calls on_trial_complete/error before the trial's status changes: count it as ended."""
        st = [as_status if t is ending else t.status for t in trials]
        done, err, run = st.count("TERMINATED"), st.count("ERROR"), st.count("RUNNING")
        return (f"cells: {done} done, {run} running, {self.total - done - err - run} pending (of {self.total})"
                + (f", {err} failed" if err else ""))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"started  {trial.config['cell']}   {self._count(trials)}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = getattr(getattr(trial, "run_metadata", None), "last_result", None) or {}
        got = ", ".join(f"{k.split('/', 1)[1]} {r[k]:.4f}" for k in ("test/fwd_ssim_mean", "test/bwd_ssim_mean") if k in r)
        print(f"finished {trial.config['cell']}: test {got or '?'} in {r.get('cost/train_wall_s', float('nan')):.0f} s   "
              f"{self._count(trials, trial)}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"FAILED   {trial.config['cell']} (see {trial.local_path}/error.txt)   {self._count(trials, trial, 'ERROR')}",
              flush=True)
