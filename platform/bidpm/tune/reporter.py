"""The live trial table of an experiment, as a Tune callback (Ray 2.60's default output engine ignores
``RunConfig(progress_reporter=...)`` at every ``verbose`` level). Generic: which columns a table has is
the runner's (``search.table``); this module decides when to print and adapts Tune's ``Trial``s.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from ray.tune import Callback

__all__ = ["TrialTableReporter", "progress_settings", "trial_info"]


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


class TrialTableReporter(Callback):
    """Prints the live table when a trial changes status, else at most every ``interval_s`` (if it
    changed); a runner subclasses it to say what the table shows (``format``).

    A new trial appearing as pending is not a change (the searcher creates trials just before they
    start, so that would print every table twice); its start is.

    Picklable (Tune saves RunConfig callbacks in ``tuner.pkl``): ``print_fn``/``clock`` must be
    module-level functions; ``print_fn`` None looks ``print`` up when printing (Ray Tune replaces
    ``builtins.print`` in the driver, and the replaced function does not pickle by reference).
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
        text = self.format(trials)
        self._statuses = statuses
        if text == self._last_text:              # interval passed, nothing new to show
            return False
        (self.print_fn or _print)(text)
        self._last_text, self._last_time = text, now
        return True

    def format(self, trials: Sequence[Mapping[str, Any]]) -> str:
        """The table of ``trial_info`` dicts (a runner's subclass says which columns)."""
        raise NotImplementedError

    def _notes(self) -> Optional[Mapping[str, str]]:
        return getattr(self.watchdog, "notes", None)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.update([trial_info(t, self._notes()) for t in trials])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.update([trial_info(t) for t in trials], done=True)


def progress_settings(cfg: Any, callbacks: Sequence[Callback], reporter: Optional[TrialTableReporter],
                      watchdog: Any = None) -> dict[str, Any]:
    """RunConfig kwargs: ``RunConfig(name=..., storage_path=..., **progress_settings(cfg, callbacks, reporter))``.

    ``tune.verbose`` true: ``verbose=1`` (Ray's own output). False: ``verbose=0`` and ``reporter``
    appended to the callbacks. Why: Ray 2.60's default output engine drops a passed
    ``progress_reporter`` at every level; ``verbose=0`` silences its heartbeat tables and per-trial
    dumps while callbacks still run. ``Tuner.restore`` reuses the pickled RunConfig, so the first
    launch's choice sticks. ``watchdog`` (a ``StallWatchdog``) joins the callbacks and tells the table
    what waiting trials wait for.
    """
    cbs = list(callbacks) + ([watchdog] if watchdog is not None else [])
    if cfg.tune.verbose or reporter is None:
        return {"verbose": 1 if cfg.tune.verbose else 0, "callbacks": cbs}
    reporter.watchdog = watchdog
    return {"verbose": 0, "callbacks": cbs + [reporter]}
