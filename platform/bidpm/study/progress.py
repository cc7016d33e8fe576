"""The console lines of a study: one per started / finished / failed cell, with the count of cells done,
running and pending (a study's cells are many and long; a table per change would scroll away)."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

__all__ = ["CellProgress"]


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
        print(f"FAILED   {trial.config['cell']}: {_last_error(trial)} (see {trial.local_path}/error.txt)   "
              f"{self._count(trials, trial, 'ERROR')}", flush=True)


def _last_error(trial: Any) -> str:
    """The exception line that ends the trial's error.txt (what failed, in one line), or '?'."""
    import os

    try:
        with open(os.path.join(str(trial.local_path), "error.txt"), errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return "?"
    last = next((ln for ln in reversed(lines) if ": " in ln and not ln.startswith(("File ", "^", "ray::"))), lines[-1] if lines else "?")
    return last[:500]
