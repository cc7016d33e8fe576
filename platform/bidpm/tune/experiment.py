"""The lifecycle every experiment shares (a search or a study: one Ray Tune run of trials), knowing
neither runner: the checks before any trial, the MLflow parent run (found again on resume, the last
outage's journal replayed first), one exit path that ends every run it opened, and Tune's graceful
stop on a signal told apart from a finished experiment.

Every exit after the parent run opens ends the runs: FINISHED, FAILED (an error), KILLED (Ctrl+C,
SIGTERM, a stall). During a tracking outage nothing can tell the server, so the runs stay RUNNING and
the rerun takes them over; the outage leaves as ``TrackingUnavailable`` (the CLI exits 75).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

from .. import tracking
from ..config import Config
from ..data.manifest import manifest_digest
from ..io import storage
from ..tracking.journal import JOURNAL_FILE, replay_journal
from .names import TRAIN_RUNS
from .watchdog import StudyStalled

__all__ = ["ExperimentFailed", "ExperimentInterrupted", "ExperimentRuns", "Preflight", "check_finished", "preflight"]


class ExperimentFailed(RuntimeError):
    """The experiment ran but produced nothing usable (every trial failed); the message says where to look."""


class ExperimentInterrupted(KeyboardInterrupt):
    """Tune stopped on a signal (Ctrl+C, SIGUSR1) with trials unfinished; its state is saved for the rerun."""


def check_finished(results: Any, expected: int, where: str) -> Any:
    """``tuner.fit()``'s results, unless Tune returned on a signal with trials unfinished (its graceful
    stop): then ``ExperimentInterrupted``, so a stop is never read as finished or failed trials."""
    if results.num_terminated + results.num_errors < max(len(results), expected):
        raise ExperimentInterrupted(f"stopped with trials unfinished (state saved in {where})")
    return results


@dataclass
class Preflight:
    """What the checks before any trial found: the tracking store (None when tracking is off) and the
    manifest of the shards every trial reads."""

    client: Any
    experiment_id: Optional[str]
    manifest: dict[str, Any]


def preflight(cfg: Config, *, registry: bool = False, job: str = "tune_steps",
              memory_cases: Optional[list[Any]] = None) -> Preflight:
    """Before any MLflow run or trial: the tracking store answers (and, with ``registry``, its registered
    model name holds this kind of model), one trial fits the cluster (on a fixed cluster Ray Train would
    wait for it forever) and fits its GPUs' memory (``job``'s cases or ``memory_cases``, ``bidpm.plan``), and the shards exist
    (built on first use: idempotent). Needs a connected Ray."""
    from ..data.manifest import load_manifest
    from ..data.shards import prepare_shards
    from ..raycluster.resources import check_fits, check_gpu_memory

    client = exp_id = None
    if cfg.tracking.enabled:
        client, exp_id = tracking.connect(cfg)
        if registry:
            tracking.check_registry(client, cfg)
    check_fits(cfg)
    check_gpu_memory(cfg, job, cases=memory_cases)
    prepare_shards(cfg)
    return Preflight(client, exp_id, load_manifest(cfg))


class ExperimentRuns:
    """The MLflow side of experiment ``name``: its parent run (tag ``bidpm.study`` = ``name``, role
    ``study``) and the journal beside the experiment folder ``folder``. Inert when tracking is off."""

    def __init__(self, cfg: Config, name: str, folder: str, found: Preflight,
                 print_fn: Callable[[str], Any] = print) -> None:
        self.cfg, self.name, self.folder, self.print_fn = cfg, name, folder, print_fn
        self.client, self.experiment_id, self.manifest = found.client, found.experiment_id, found.manifest
        self.parent: Optional[str] = None
        self.tags: dict[str, str] = {}

    @property
    def journal(self) -> str:
        return storage.join(self.folder, JOURNAL_FILE)

    def open(self, kind: Optional[str] = None, replace: bool = False) -> Optional[str]:
        """Find (resume) or create the parent run; ``replace``: a previous parent run of the same name is
        retired first (tagged ``@replaced``, its runs KILLED). Then the journal is replayed, before any
        trial continues. Returns the parent run id (None when tracking is off)."""
        if self.client is None:
            return None
        self.tags = {"bidpm.git_commit": tracking.git_commit(self.cfg), "bidpm.ray_job_id": tracking.ray_job_id(),
                     "bidpm.manifest_digest": manifest_digest(self.manifest), **({"bidpm.kind": kind} if kind else {})}
        if replace:
            prior = tracking.find_run(self.client, self.experiment_id, {tracking.TAG_STUDY: self.name, tracking.TAG_ROLE: "study"})
            if prior:
                self.client.set_tag(prior, tracking.TAG_STUDY, self.name + "@replaced")
                tracking.end_study_runs(self.client, prior, "KILLED")        # replaced: nothing will resume it
        self.parent, resumed = tracking.study_run(self.client, self.experiment_id, self.cfg, self.tags, name=self.name)
        if not resumed:
            tracking.log_dataset(self.client, self.parent, self.cfg, self.manifest)
        replay_journal(self.client, self.journal, self.cfg, self.print_fn)       # what an outage left unwritten
        return self.parent

    def callback(self, cls: type, base_cfg: Mapping[str, Any]) -> Any:
        """The runner's ``MLflowTrialCallback`` subclass ``cls`` writing under the parent run."""
        return cls(dict(base_cfg), self.experiment_id, self.parent, self.tags, self.manifest, journal=self.journal,
                   train_runs=storage.join(self.folder, TRAIN_RUNS))

    def sweep(self, default: str, by_trial: Mapping[str, str]) -> None:
        """End the child runs no callback ended (their driver was killed first): ``by_trial[trial id or
        run name]`` as Tune or the scores saw them, else ``default``."""
        if self.parent is not None:
            tracking.end_open_children(self.client, self.experiment_id, self.parent, default, by_trial)

    def finish(self, status: str = "FINISHED") -> None:
        if self.parent is not None:
            self.client.set_terminated(self.parent, status=status)

    def end(self, exc: BaseException) -> None:
        """An experiment that stops on ``exc``: its open runs end KILLED (signals, stalls) or FAILED. Not
        during an outage (the rerun takes them over), and never masking ``exc``."""
        if self.parent is None:
            return
        if isinstance(exc, tracking.TrackingUnavailable) or tracking.is_outage(exc):
            self.print_fn(f"note: MLflow run {self.parent} of {self.name!r} stays RUNNING until the rerun takes it over")
            return
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit, StudyStalled)) else "FAILED"
        try:
            tracking.end_study_runs(self.client, self.parent, status)
        except Exception as end_exc:  # noqa: BLE001 - the original error is what the user needs
            self.print_fn(f"note: could not mark MLflow run {self.parent} {status} "
                          f"({str(end_exc).splitlines()[0][:200]}); the rerun takes it over")

    @contextlib.contextmanager
    def stopping_safely(self, doing: str) -> Iterator["ExperimentRuns"]:
        """The one exit path: any exception ends the runs (``end``); an outage, also one that Tune wrapped
        in a ``TuneError`` or a raw connection error, leaves as ``TrackingUnavailable``."""
        try:
            yield self
        except BaseException as exc:
            outage = tracking.outage_in(exc)
            self.end(outage or exc)
            if outage is not None and outage is not exc:
                raise outage from None
            if not isinstance(exc, tracking.TrackingUnavailable) and tracking.is_outage(exc):
                raise tracking.unavailable(self.cfg, exc, doing) from exc
            raise
