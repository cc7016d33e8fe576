"""Nodes over time: how many Ray nodes were alive while a job ran, as a timeline it prints.

On an autoscaling cluster the trials' resource requests add and remove nodes, which ``ray status``
shows only as a snapshot. ``NodeTimeline`` samples ``ray.nodes()`` in a daemon thread of the driver,
prints a line at every change and, at the end, the timeline; a single machine prints nothing.
Formatting is pure (tested without Ray); ``summarise`` reads any node records shaped like ``ray.nodes()``.
"""

from __future__ import annotations

import builtins
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

from ..tables import fixed_width

HEAD_RESOURCE = "node:__internal_head__"   # the resource Ray gives only the head node


@dataclass(frozen=True)
class NodeSample:
    """One observation: ``t`` seconds after the recorder started, alive nodes (head included), alive
    worker nodes, and the alive nodes' total resources (CPU, GPU, custom; Ray's ``node:*`` left out)."""

    t: float
    nodes: int
    workers: int
    resources: Mapping[str, float] = field(default_factory=dict)

    def state(self) -> tuple[int, int, tuple[tuple[str, float], ...]]:
        return self.nodes, self.workers, tuple(sorted(self.resources.items()))


def summarise(records: Iterable[Mapping[str, Any]], t: float) -> NodeSample:
    """A sample from node records shaped like ``ray.nodes()``: ``Alive`` and ``Resources`` (the head has
    ``node:__internal_head__``; ``IsHead`` may say it directly)."""
    alive = [r for r in records if r.get("Alive")]
    head = sum(1 for r in alive if r.get("IsHead") or HEAD_RESOURCE in (r.get("Resources") or {}))
    totals: dict[str, float] = {}
    for r in alive:
        for k, v in (r.get("Resources") or {}).items():
            if not k.startswith("node:") and k not in ("memory", "object_store_memory"):
                totals[k] = totals.get(k, 0.0) + float(v)
    return NodeSample(t, len(alive), len(alive) - head, totals)


def ray_sample(t: float) -> NodeSample:
    """A sample of the cluster this driver is connected to (``ray.nodes()``: a GCS call, no task)."""
    import ray

    return summarise(ray.nodes(), t)


def _clock(t: float) -> str:
    m, s = divmod(int(round(t)), 60)
    return f"+{m:d}:{s:02d}"


def _resources(r: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(r.items())) or "-"


def change_line(prev: Optional[NodeSample], cur: NodeSample) -> str:
    """'[nodes +1:05] worker nodes 0 -> 1 (2 alive; CPU 3, slot 1)'."""
    was = "" if prev is None else f"{prev.workers} -> "
    return f"[nodes {_clock(cur.t)}] worker nodes {was}{cur.workers} ({cur.nodes} alive; {_resources(cur.resources)})"


def format_timeline(samples: Iterable[NodeSample]) -> str:
    """The timeline as a small table: one row per change of the node set."""
    rows = [(_clock(s.t), str(s.nodes), str(s.workers), _resources(s.resources)) for s in samples]
    table = fixed_width(("time", "nodes", "workers", "resources"), rows, rule=False)
    return "nodes over time:\n  " + "\n  ".join(table.splitlines())


class NodeTimeline:
    """Samples the node set every ``interval_s`` in a daemon thread while a ``with`` block runs.

    Keeps only the samples where the set changed (plus the first and the last), so a days-long study
    holds a few rows, not one per tick. ``print_fn`` gets a line at every change after the first
    sample (default: ``print`` looked up when printing, since Ray Tune replaces it in the driver).
    A failing sample (the cluster going away at the end) stops the sampling, never the job.
    """

    def __init__(self, sample_fn: Callable[[float], NodeSample] = ray_sample, interval_s: float = 2.0,
                 print_fn: Optional[Callable[[str], Any]] = None) -> None:
        self._sample_fn, self._interval = sample_fn, interval_s
        self._print = print_fn
        self._changes: list[NodeSample] = []
        self._last: Optional[NodeSample] = None
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def _emit(self, line: str) -> None:
        if self._print is not None:
            self._print(line)
        else:
            builtins.print(line, flush=True)

    def sample(self) -> NodeSample:
        """Take one sample now (also called by the thread); records it when the node set changed."""
        s = self._sample_fn(time.monotonic() - self._t0)
        with self._lock:
            prev = self._changes[-1] if self._changes else None
            if prev is None or s.state() != prev.state():
                self._changes.append(s)
                if prev is not None:
                    self._emit(change_line(prev, s))
            self._last = s
        return s

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the timeline is a report; it must never fail the job
                return

    def start(self) -> "NodeTimeline":
        self.sample()
        self._thread = threading.Thread(target=self._run, name="bidpm-node-timeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.sample()
        except Exception:  # noqa: BLE001 - see _run
            pass

    def __enter__(self) -> "NodeTimeline":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def samples(self) -> list[NodeSample]:
        """The change points, and the last sample when it is not one of them."""
        with self._lock:
            out = list(self._changes)
            if self._last is not None and (not out or self._last is not out[-1]):
                out.append(self._last)
            return out

    @property
    def on_cluster(self) -> bool:
        """True when there was more than the head (or the node set changed): a single machine says no."""
        s = self.samples
        return any(x.workers > 0 or x.nodes > 1 for x in s) or len({x.state() for x in s}) > 1

    def format(self) -> str:
        return format_timeline(self.samples)
