"""A Tune callback (driver side) that mirrors every trial into a nested MLflow run of the experiment's
parent run: params and config at the start, metrics per epoch, the best checkpoint and status at the end.

Driver side on purpose: trials run on nodes that may lack the tracking store's credentials, and
results reach the driver anyway. Plain state only (config dict, URIs, run ids), so Tune pickles it
into the experiment and a restored experiment keeps writing to the same runs. A server that stops
answering raises ``TrackingUnavailable`` out of the hook (the experiment stops at once, exit 75); what
the hook still had to write goes to the journal (``tracking.journal``), which the rerun replays.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any, Iterator, Optional

from ray.tune import Callback

from .. import tracking
from ..config import Config, config_from_dict
from ..data.manifest import manifest_digest
from ..io import storage
from ..io.checkpoints import EPOCH_END_KEY, checkpoint_location, read_epoch_metrics
from ..objective import Objective
from ..tracking.journal import append_journal, apply_op
from .names import train_run_name

__all__ = ["MLflowTrialCallback"]


def _recorded(metrics: dict) -> dict[str, float]:
    """What a trial's run records of a result: its finite numbers named ``group/name`` and ``epoch``, as
    plain floats (journal lines are JSON)."""
    return {k: float(v) for k, v in metrics.items() if ("/" in k or k == "epoch")
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _metrics_op(run_id: str, step: int, made_ms: float, values: dict[str, float]) -> dict[str, Any]:
    """One metrics write, at the epoch's own time (``made_ms``), as ``apply_op`` and the journal take it."""
    return {"op": "metrics", "run": run_id, "step": step, "timestamp_ms": int(made_ms), "metrics": values}


class MLflowTrialCallback(Callback):
    """on_trial_start: child run (params, resolved config, lineage tags); on_trial_result: per-epoch
    metrics; on_trial_complete/error: the trial's best checkpoint + its sample grid, run status.
    A runner subclasses it to say which config a trial trains (``trial_cfg``)."""

    def __init__(self, base_cfg: dict[str, Any], experiment_id: str, parent_run_id: str, tags: dict[str, str],
                 manifest: dict[str, Any], journal: Optional[str] = None, train_runs: Optional[str] = None) -> None:
        self.base_cfg = base_cfg
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.manifest = {"content_digest": manifest_digest(manifest)}   # all log_dataset needs (small pickle)
        self.journal = journal                               # where an outage leaves what it could not write
        self.train_runs = train_runs                         # the trials' Ray Train runs (their checkpoints)
        self.runs: dict[str, str] = {}                       # trial_id -> MLflow run id
        self.best: dict[str, tuple[float, Optional[str]]] = {}   # trial_id -> (objective, checkpoint path)
        # best epoch by Objective.best over the reported results in order (what the search table does too)
        self._client: Any = None
        self._cfg: Any = None
        self._logged: dict[str, set[int]] = {}               # resumed trials: epochs their run already holds
        self._from_checkpoint: dict[tuple[str, int], set[str]] = {}   # (trial, epoch) written from its checkpoint: keys

    # Tune pickles callbacks into the experiment state: keep the client and the parsed config out of it.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_cfg", "_logged", "_from_checkpoint")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("journal", None)                    # pickled before the journal existed
        state.setdefault("train_runs", None)                 # ... or before epochs were read back from checkpoints
        self.__dict__.update(state)
        self._client = self._cfg = None
        self._logged, self._from_checkpoint = {}, {}

    def get_state(self) -> Optional[dict]:
        return {"runs": dict(self.runs), "best": dict(self.best)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))
        self.best.update(state.get("best", {}))

    @property
    def cfg(self):
        """The study's Config, validated once (every trial result used to re-validate it)."""
        if self._cfg is None:
            self._cfg = config_from_dict(self.base_cfg, origin="study config")
        return self._cfg

    @property
    def client(self):
        if self._client is None:
            with self._guard("connecting"):
                try:
                    self._client, _ = tracking.connect(self.cfg)
                except tracking.TrackingError as exc:       # down when this driver first writes: an outage too
                    raise tracking.unavailable(self.cfg, exc, "connecting") from None
        return self._client

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """An unreachable server -> ``TrackingUnavailable`` (stops the study); other errors unchanged."""
        try:
            yield
        except tracking.TrackingUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - classified here, re-raised unless an outage
            if tracking.is_outage(exc):
                raise tracking.unavailable(self.cfg, exc, doing) from None
            raise

    def _submit(self, ops: list[dict[str, Any]], doing: str) -> None:
        """Apply ``ops`` in order; on an outage, journal the ones not written and stop the study."""
        for i, op in enumerate(ops):
            try:
                with self._guard(doing):
                    apply_op(self.client, op)
            except tracking.TrackingUnavailable:
                self._keep(ops[i:])
                raise

    def _keep(self, ops: list[dict[str, Any]]) -> None:
        if self.journal:
            append_journal(self.journal, ops)

    def trial_cfg(self, trial: Any) -> Config:
        """The Config a trial trains: each runner says (``search.run``, ``study.run``)."""
        raise NotImplementedError

    def _run_id(self, trial: Any) -> str:
        with self._guard(f"recording trial {trial.trial_id}"):
            return self._open_run(trial)

    def _open_run(self, trial: Any) -> str:
        if trial.trial_id not in self.runs:
            cfg = self.trial_cfg(trial)                                     # exactly what the trial trains
            run_id = tracking.trial_run(self.client, self.experiment_id, self.parent_run_id, cfg.tune.experiment_name,
                                        trial.trial_id, str(trial), cfg, self.tags)
            tracking.log_dataset(self.client, run_id, cfg, self.manifest)
            self.runs[trial.trial_id] = run_id
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        with self._guard(f"resuming the run of trial {trial.trial_id}"):
            # a resumed trial: its run may have been ended (FAILED/KILLED) when the last driver stopped, and holds
            # the epochs logged before; a resumed Train run may report one of them again
            self.client.update_run(run_id, status="RUNNING")
            self._logged[trial.trial_id] = {int(m.step) for m in self.client.get_metric_history(run_id, "epoch")}
        self._submit(self._unlogged_epochs(trial, run_id), f"logging the earlier epochs of trial {trial.trial_id}")

    def _unlogged_epochs(self, trial: Any, run_id: str, below: Optional[int] = None) -> list[dict[str, Any]]:
        """The epochs (all, or those ``below``) the trial's Train run checkpointed that its MLflow run
        lacks, read from the checkpoints' metrics files with the time each was made. Why: a result Ray
        Train registered can miss this callback - the driver killed before it arrived (read when the
        resumed trial starts), or a Train worker killed while the controller forwarded it (read when
        the next epoch arrives with a gap before it) - and the run must hold every epoch once, in order."""
        if not self.train_runs or trial.trial_id not in self._logged:     # history unread: nothing to compare
            return []
        logged = self._logged[trial.trial_id]
        where = storage.join(self.train_runs, train_run_name(str(trial)))
        try:
            found = read_epoch_metrics(where)
        except OSError as exc:            # the storage, not the tracking server: the run keeps what it has
            print(f"warning: trial {trial.trial_id}: the epochs checkpointed in {where} not read back: {exc}", file=sys.stderr)
            return []
        ops = [_metrics_op(run_id, epoch, made, _recorded(metrics)) for epoch, (made, metrics) in sorted(found.items())
               if epoch not in logged and (below is None or epoch < below)]
        logged.update(range(1, below) if below is not None else ())        # looked for once: never read again
        logged.update(op["step"] for op in ops)
        self._from_checkpoint.update({(trial.trial_id, op["step"]): set(op["metrics"]) for op in ops})
        return ops

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._run_id(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ops: list[dict[str, Any]] = []
        logged = self._logged.get(trial.trial_id)
        if "epoch" in result and logged is not None and not logged.issuperset(range(1, step)):
            ops += self._unlogged_epochs(trial, run_id, below=step)          # an earlier epoch's result was lost
        made = result.get(EPOCH_END_KEY) or time.time() * 1000          # the epoch's own time, as a backfill has it
        values = _recorded(result)
        if step not in (logged or ()):
            ops.append(_metrics_op(run_id, step, made, values))
            if logged is not None and "epoch" in result:
                logged.add(step)
        elif (written := self._from_checkpoint.pop((trial.trial_id, step), None)) is not None or "epoch" not in result:
            # the step is one the run holds. Its epoch was written from its checkpoint and its result came after
            # all: what only the result holds (the controller's cost/* entries) is added at the same record time.
            # Or it is not an epoch's result (a study cell's scores): a restored trial counts its iterations from
            # 0 again, so its scores can land on epoch 1's step; what the run holds no value of is added there,
            # nothing twice (scores re-reported by a later driver; cost/* an epoch carried keeps the epoch's value)
            if written is None:
                with self._guard(f"reading the run of trial {trial.trial_id}"):
                    written = set(self.client.get_run(run_id).data.metrics)
            rest = {k: v for k, v in values.items() if k not in written}
            if rest:
                ops.append(_metrics_op(run_id, step, made, rest))
        if isinstance(result.get("checkpoint_sha256"), str):         # the weights a study cell was scored with
            ops.append({"op": "tag", "run": run_id, "key": tracking.TAG_WEIGHTS, "value": result["checkpoint_sha256"]})
        if ops:
            self._submit(ops, f"logging the metrics of trial {trial.trial_id}")
        objective = Objective.of_tune(self.cfg)
        old = self.best.get(trial.trial_id)
        value = result.get(objective.metric)
        if objective.better(value, old[0] if old else None):
            self.best[trial.trial_id] = (float(value), result.get("checkpoint_path"))

    def _finish(self, trial: Any, status: str) -> None:
        run_id = self._run_id(trial)
        best = self.best.get(trial.trial_id)
        ops: list[dict[str, Any]] = []
        if best is not None:
            ops += [{"op": "tag", "run": run_id, "key": "bidpm.best_objective", "value": f"{best[0]:.6f}"},
                    {"op": "tag", "run": run_id, "key": "bidpm.best_checkpoint", "value": str(best[1])}]
            if not best[1]:
                print(f"warning: trial {trial.trial_id}: its best epoch by {self.cfg.tune.metric} reported no checkpoint; "
                      f"nothing logged to MLflow run {run_id}", file=sys.stderr)
            else:
                ops.append({"op": "checkpoint", "run": run_id, "trial": trial.trial_id,
                            "location": checkpoint_location(best[1], self.cfg.storage_path),
                            "log_checkpoints": self.cfg.tracking.log_checkpoints})
        ops.append({"op": "status", "run": run_id, "status": status})
        self._submit(ops, f"ending the run of trial {trial.trial_id}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FAILED")
