"""What a run asks of the cluster, and whether it fits: one request per Train worker (``train.*``), one
per trial (the Tune trial's coordinator + its worker group), used by the pre-flight check, the stall
watchdog, a study's concurrency and its scoring tasks, so every part counts resources the same way.

Which clusters grow: ``tune.autoscaling`` when set; unset, a local Ray the driver started itself is
fixed, and a cluster it joined (``RAY_ADDRESS``, ``ray job submit``) is taken to autoscale unless
Ray's autoscaler says otherwise.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

_PG_RESOURCE = re.compile(r"_group_(\d+_)?[0-9a-f]{20,}$")     # Ray's per-placement-group resources (CPU_group_<id>)

__all__ = ["amount", "check_fits", "check_gpu_memory", "gpu_memory_gb", "cluster_can_grow", "concurrency", "describe", "shortfall", "task_options",
           "trial_request", "waiting_note", "worker_request"]


def worker_request(cfg: Any) -> dict[str, float]:
    """What one Ray Train worker reserves: CPU, GPU when ``train.use_gpu``, every custom resource."""
    return {k: float(v) for k, v in cfg.train.worker_resources().items() if v}


def trial_request(cfg: Any, with_trial: bool = True) -> dict[str, float]:
    """What one trial holds while it trains: ``train.num_workers`` workers, plus its Tune trial actor
    (``tune.trial_cpus``) unless ``with_trial`` is False (a plain ``jobs/train.py`` run)."""
    out = {k: v * cfg.train.num_workers for k, v in worker_request(cfg).items()}
    if with_trial:
        out["CPU"] = out.get("CPU", 0.0) + float(cfg.tune.trial_cpus)
    return out


def task_options(cfg: Any) -> dict[str, Any]:
    """``ray.remote(...).options(**)`` for a task that needs one Train worker's resources (a cell's
    scoring on the test split: a GPU on a GPU cluster)."""
    w = worker_request(cfg)
    custom = {k: v for k, v in w.items() if k not in ("CPU", "GPU")}
    return {"num_cpus": w.get("CPU", 0.0), **({"num_gpus": w["GPU"]} if "GPU" in w else {}),
            **({"resources": custom} if custom else {})}


def concurrency(cfg: Any, have: Mapping[str, float], limit: Optional[int] = None) -> int:
    """How many trials run at once: ``limit`` when set, else how many ``trial_request``s the cluster's
    resources ``have`` fit (at least 1)."""
    if limit:
        return limit
    fits = [have.get(k, 0.0) / v for k, v in trial_request(cfg).items() if v > 0]
    return max(1, int(math.floor(min(fits) + 1e-9)))


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


def describe(res: Mapping[str, float]) -> str:
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
    """``tune.autoscaling``, or detected (module docstring); ``tune.autoscaling=false`` makes a joined
    cluster a fixed one."""
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


def gpu_memory_gb(cfg: Any) -> tuple[Optional[float], str]:
    """(GB per GPU, where that came from) for the memory pre-flight: ``train.gpu_memory_gb``, else the
    smallest card among the cluster's ``accelerator_type:*`` resources (running nodes, or the node types an
    autoscaler publishes), else (None, why)."""
    if cfg.train.gpu_memory_gb:
        return cfg.train.gpu_memory_gb, "train.gpu_memory_gb"
    import ray

    from ..plan.gpus import smallest_accelerator_gb

    names = set(ray.cluster_resources()) | set(max_cluster_resources() or {})
    found = smallest_accelerator_gb(names)
    if found is None:
        return None, "no accelerator_type known to Ray; set train.gpu_memory_gb to check"
    return found[1], f"the cluster's accelerator_type:{found[0]}"


def check_gpu_memory(cfg: Any, job: str, print_fn: Any = print, cases: Optional[list[Any]] = None) -> None:
    """Before any trial of a GPU run: refuse (``ConfigError``, with the fixes) a case whose estimated step
    peak exceeds the GPU (``bidpm.plan``; ``cases``: a room's own, e.g. a study's); say in one line what
    was checked, or why nothing was."""
    if not cfg.train.use_gpu:
        return
    from ..plan.preflight import check_plan

    gb, source = gpu_memory_gb(cfg)
    if gb is None:
        print_fn(f"[bidpm] GPU memory pre-flight skipped: {source}")
        return
    plan = check_plan(cfg, job, gb, source, cases)
    if plan is not None:
        worst = max(plan.cases, key=lambda c: c.memory.peak_gib if c.memory else 0.0)
        print_fn(f"[bidpm] GPU memory pre-flight: {len(plan.cases)} cases fit {gb:g} GB ({source}); largest "
                 f"{worst.label} ~{worst.memory.peak_gib:.1f} of {plan.limit_gib:.1f} GiB usable per worker")
