"""Metrics a search trial adds to every result it reports, for Optuna's objectives: ``nfe`` (the trial's
Euler steps, ``len(method.time_grid) - 1``: its synthesis cost in network evaluations). Light imports: the
trial actor loads this module."""

from __future__ import annotations

from typing import Any, Mapping

from ray.train.v2.api.callback import UserCallback

from ..config.metrics import NFE_KEY

__all__ = ["NFE", "WithMetrics"]

NFE = NFE_KEY      # reported by every trial: its number of Euler steps, len(method.time_grid) - 1


class WithMetrics(UserCallback):
    """Wraps the trial's report callback (``TuneReportCallback`` or a subclass): every report also carries
    ``extra``. A wrapper, not a subclass, so it works whatever callback the trial already uses."""

    def __init__(self, inner: Any, extra: Mapping[str, float]) -> None:
        self.inner, self.extra = inner, dict(extra)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        head = [{**metrics[0], **self.extra}] if metrics else []
        self.inner.after_report(run_context, head + list(metrics[1:]), checkpoint)
