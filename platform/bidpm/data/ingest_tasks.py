"""The ingest's unit of work on Ray: a few subjects per task, bounded retries and declared memory, and a
task whose process dies (out of memory, node lost) traced to the subject that killed it.

Why isolate: Ray Data's map tasks default to ``max_retries=-1``, so a volume that OOM-kills its worker
was retried forever, and a dead task says nothing about which of its subjects killed it. Here a task
is retried ``data.task_retries`` times; if one still dies, the ingest's subjects are read again one per
plain Ray task (files already written are rewritten with the same bytes), and a subject whose own task
dies is that subject's one-line error (``worker_died``), skipped under ``data.skip_bad`` like any other.
"""

from __future__ import annotations

import json
import traceback
import warnings
from functools import partial
from typing import Callable, Optional

from ..io import storage
from .layouts import Problem, SubjectFiles
from .volume import SliceSettings, VolumeError, slice_table, write_table

RESULT_KEYS = ("subject", "pseudonym", "split", "file", "rows", "sha256", "meta", "kind", "role", "location", "problem", "fix", "fatal")


def _result(task: dict, **kw) -> dict:
    out = {k: "" for k in RESULT_KEYS}
    out.update(rows=0, fatal=False, subject=task["subject"], pseudonym=task["pseudonym"], split=task["split"])
    out.update(kw)
    return out


def _ingest_one(task: dict, settings: SliceSettings, version_dir: str) -> dict:
    """One subject pair -> one Parquet file. Returns a small result row (never raises for bad input)."""
    problem = json.loads(task["problem"]) if task["problem"] else None
    rec = SubjectFiles(task["subject"], task["source"] or None, task["target"] or None, task["mask"] or None,
                       Problem(**problem) if problem else None)
    try:
        table, meta = slice_table(rec, task["pseudonym"], task["split"], settings)
    except VolumeError as exc:
        p = exc.problem
        return _result(task, kind=p.kind, role=p.role, location=p.location, problem=p.problem, fix=p.fix)
    except MemoryError:
        return _result(task, kind="out_of_memory", role="source", location=task["source"], problem="reading the pair ran out of memory",
                       fix="raise data.task_memory_bytes (and the nodes' memory), or lower data.max_volume_bytes")
    except Exception as exc:  # an unforeseen reader failure is still a per-subject, skippable problem
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return _result(task, kind="unexpected_error", role="source", location=task["source"], problem=last,
                       fix="inspect the files of this subject; report a bug if they are valid")
    rel = f"{task['split']}/{task['pseudonym']}.parquet"
    try:
        rows, sha = write_table(table, storage.join(version_dir, rel), settings.row_group_rows)
    except OSError as exc:
        return _result(task, kind="unwritable_output", role="output", location=storage.join(version_dir, rel),
                       problem=f"cannot write ({exc})", fix="set data.shards_dir to a writable location with free space", fatal=True)
    return _result(task, file=rel, rows=rows, sha256=sha, meta=json.dumps(meta))


def _ingest_group(item: dict, settings: SliceSettings, version_dir: str) -> list[dict]:
    """Several subjects, one after the other (one pair in memory at a time) -> their result rows."""
    return [_ingest_one(task, settings, version_dir) for task in json.loads(item["tasks"])]


def task_groups(tasks: list[dict], subjects_per_task: Optional[int], workers: int) -> list[list[dict]]:
    """Split the subject list into consecutive groups, one Ray Data task each.

    Why groups: a Ray Data task costs ~20 ms of scheduling and object-store traffic, about as much as
    ingesting one small phantom pair, and with one subject per task two workers ran no faster than
    one on 2 cores. Unset ``subjects_per_task`` = about 4 tasks per worker (load balance vs overhead).
    """
    if not tasks:
        return []
    size = subjects_per_task or max(1, -(-len(tasks) // (4 * max(1, workers))))
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def task_options(d) -> dict:
    """What every ingest task asks Ray for: CPUs, memory (``data.task_memory_bytes``; 0 = none) and a
    finite number of retries."""
    out = {"num_cpus": d.cpus_per_task, "max_retries": d.task_retries}
    if d.task_memory_bytes:
        out["memory"] = d.task_memory_bytes
    return out


def run_tasks(tasks: list[dict], settings: SliceSettings, version_dir: str, d,
              group_fn: Optional[Callable[..., list[dict]]] = None) -> list[dict]:
    """Every subject's result row; ``group_fn`` (default ``_ingest_group``, looked up per call) is the
    task body, which a test or benchmark swaps."""
    import ray

    group_fn = group_fn or _ingest_group
    workers = d.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1) // d.cpus_per_task))
    groups = [{"tasks": json.dumps(g)} for g in task_groups(tasks, d.subjects_per_task, workers)]
    ds = ray.data.from_items(groups, override_num_blocks=max(1, len(groups)))
    opts = task_options(d)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates ``**ray_remote_args`` but names no ``max_retries`` parameter in its place
        # (ray-project/ray#65227 promotes label_selector ... runtime_env only), and the default is to retry
        # forever. This one argument goes the old way, its warning silenced here only; pyproject keeps
        # ray < 2.64, where the old way is removed.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        ds = ds.flat_map(  # TaskPoolStrategy: ``concurrency=`` is deprecated since Ray 2.51
            partial(group_fn, settings=settings, version_dir=version_dir),
            compute=ray.data.TaskPoolStrategy(size=d.num_workers),
            num_cpus=opts["num_cpus"], memory=opts.get("memory"), max_retries=opts["max_retries"],
        )
    # This Dataset's own context (a copy; the driver's global DataContext is untouched): no
    # per-operator resource reservation. Ray Data 2.60's reservation allocator starts from zero
    # cluster limits, learns them asynchronously and refreshes them once a second, so it ran one task
    # at a time for the first ~1.1 s of every ingest, then left a worker idle 0.1-0.2 s between tasks
    # whenever two ran (measured: 12 x 0.4 s tasks on 2 workers took 3.8 s with it, 2.6 s without;
    # second worker's first task at 1.1 s vs 0.04 s). The allocator balances CPU and object store
    # between operators; this pipeline is one operator whose outputs are a few hundred bytes per
    # subject, and TaskPoolStrategy still caps it at num_workers tasks.
    ds.context.op_resource_reservation_enabled = False
    try:
        return ds.take_all()
    except ray.exceptions.RayError as exc:  # a task's process died after its retries (OOM kill, lost node)
        print(f"an ingest task died after {d.task_retries} retries ({type(exc).__name__}); reading its subjects one "
              f"per task to find which one kills it", flush=True)
        return _one_per_task(tasks, settings, version_dir, d, group_fn)


def _one_per_task(tasks: list[dict], settings: SliceSettings, version_dir: str, d, group_fn) -> list[dict]:
    import ray

    remote = ray.remote(group_fn).options(**{**task_options(d), "max_retries": 0})
    refs = [remote.remote({"tasks": json.dumps([t])}, settings=settings, version_dir=version_dir) for t in tasks]
    out = []
    for task, ref in zip(tasks, refs):
        try:
            out.extend(ray.get(ref))
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError) as exc:
            out.append(_result(
                task, kind="worker_died", role="source", location=task["source"],
                problem=f"the task reading this pair died ({type(exc).__name__}: out of memory or killed)",
                fix="check the pair's files (a volume declaring more than the node's memory?), raise data.task_memory_bytes, "
                    "or set data.skip_bad=true"))
    return out
