"""What "best" means, decided in one place: a reported metric and whether higher or lower wins.

Used wherever a best is chosen - checkpoint retention (``train.launch``), the best epoch of a trial
(``tune.mlflow`` and ``search.table``, which therefore pick the same checkpoint from the same reported
results), the best trial of a study, the best checkpoint of a training run (``commands.train``) and the
challenger-vs-champion promotion (``tracking.registry``). Ties go to the earlier item (the first epoch
that reached the value; the current champion), and NaN / missing values never win. Pure Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Optional, TypeVar

T = TypeVar("T")
Mode = Literal["max", "min"]

__all__ = ["Objective"]


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: Mode = "max"

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"objective mode: {self.mode!r}; use 'max' or 'min'")

    @classmethod
    def of_tune(cls, cfg: Any) -> "Objective":
        return cls(cfg.tune.metric, cfg.tune.mode)

    @classmethod
    def of_checkpoints(cls, cfg: Any) -> "Objective":
        return cls(cfg.train.checkpoint_score, cfg.train.checkpoint_score_mode)

    @classmethod
    def of_promotion(cls, cfg: Any) -> "Objective":
        return cls(cfg.tracking.promote_metric, cfg.tracking.promote_mode)

    @staticmethod
    def valid(value: Any) -> bool:
        """A number that can be compared (bools, None, NaN and strings cannot)."""
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)

    def better(self, a: Any, b: Any) -> bool:
        """Is ``a`` strictly better than ``b``? An invalid ``b`` loses to any valid ``a``; ties are not better."""
        if not self.valid(a):
            return False
        if not self.valid(b):
            return True
        return a > b if self.mode == "max" else a < b

    def value(self, item: Mapping[str, Any]) -> Optional[float]:
        v = item.get(self.metric)
        return float(v) if self.valid(v) else None

    def best(self, items: Iterable[T], key: Optional[Callable[[T], Any]] = None) -> Optional[T]:
        """The best item by ``key(item)`` (default ``item[metric]``); the first of equals; None if none is valid."""
        get = key or (lambda it: it.get(self.metric))  # type: ignore[union-attr]
        best: Optional[T] = None
        best_v: Any = None
        for it in items:
            v = get(it)
            if self.better(v, best_v):
                best, best_v = it, v
        return best
