"""Will a job's trials fit their GPUs? The plan a user asks for (``bidpm plan``) and the same check that
``train``, ``tune_steps`` and ``study`` make before any trial starts.

The cases are what the job can train: the config as given; for ``tune_steps`` every N (and paired
distance) its search space can propose, on a uniform grid (where t_n sit does not change memory); a
study's cases come from its own room (``study.memory``: every method row, fully paired and, if the study
has ratios < 1, mixed - half the batch unpaired, MMD on), so training one model never reaches it. A case that does not fit gets the fixes that would, each estimated:
``train.checkpoint_unroll=true``, then a smaller ``train.batch_size`` with a larger ``train.grad_accum``
that keeps the effective batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import Config, ConfigError, with_overrides
from ..timegrid import uniform_grid
from .gpus import usable_gib
from .memory import StepMemory, estimate_step_memory

__all__ = ["Case", "Plan", "check_plan", "job_cases", "make_plan"]


@dataclass
class Case:
    label: str
    cfg: Config
    memory: Optional[StepMemory] = None
    fits: Optional[bool] = None
    fixes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"case": self.label, "peak_memory_gib": round(self.memory.peak_gib, 2) if self.memory else None,
                "fits": self.fits, "fixes": self.fixes}


@dataclass
class Plan:
    job: str
    gpu_memory_gb: Optional[float]
    limit_gib: Optional[float]
    cases: list[Case]

    @property
    def given(self) -> Case:
        return self.cases[0]

    @property
    def fits(self) -> bool:
        return all(c.fits is not False for c in self.cases)

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job, "gpu_memory_gb": self.gpu_memory_gb, "limit_gib": self.limit_gib,
                "peak_memory_gib": round(self.given.memory.peak_gib, 2) if self.given.memory else None,
                "fits": self.fits, "cases": [c.row() for c in self.cases],
                "estimate": "per worker, fake-tensor trace of one training step (bidpm.plan.memory); torch.compile "
                            "estimated as eager (an upper bound in practice)"}


def _grid_overrides(n: int) -> dict[str, Any]:
    return {"method.time_grid": uniform_grid(n), "method.step_weights": None}


def job_cases(cfg: Config, job: str, largest_n_only: bool = False) -> list[Case]:
    """The configs ``job`` can train from ``cfg`` (module doc), the config as given first.

    ``largest_n_only``: of the search space's N only the largest (the pre-flight check: a step's peak grows
    with N - each Euler step adds two evaluations' activations, or checkpointed, two states)."""
    out = [Case("config as given", cfg)]
    if job == "tune_steps":
        space = cfg.tune.space
        for dist in (space.paired_distances or [cfg.method.paired_distance]):
            for n in ([max(space.n_steps)] if largest_n_only else space.n_steps):
                over = {**_grid_overrides(n), "method.paired_distance": dist}
                out.append(Case(f"search: N={n}" + (f", {dist}" if space.paired_distances else ""), with_overrides(cfg, over)))
    return out


def _key(cfg: Config) -> str:
    """What memory depends on: the model, the method's kind, N and terms, the step's shape and switches
    (where t_n sit, w_n, lambda's value, kernels and learning rates do not change a step's peak)."""
    m, tc, d = cfg.method, cfg.train, cfg.data
    mixed = d.pairing_ratio < 1.0 and m.name == "bidpm"   # only Bi-DPM's loss changes with unpaired rows (MMD)
    kind = "flow matching" if m.name in _FLOW_MATCHING else m.name   # one evaluation at an interpolant + MSE: same tensors
    method = (kind, len(m.time_grid), m.paired_distance if m.name == "bidpm" else None, m.lpips_net,
              mixed and m.lambda_unpaired > 0, m.identity_lambda > 0 if m.name == "cyclegan" else None)
    return repr((cfg.to_dict()["model"], method, d.image_size, mixed, tc.batch_size, tc.precision,
                 tc.checkpoint_unroll, tc.num_workers > 1, tc.grad_accum > 1))


_FLOW_MATCHING = ("rf", "icfm", "otcfm", "vpcfm")
_CACHE: dict[tuple[str, str], StepMemory] = {}   # per process: plans repeat cases (fixes, several configs)


def estimate(cfg: Config, device_type: str = "cuda") -> StepMemory:
    """``estimate_step_memory``, cached on what memory depends on (``_key``)."""
    key = (_key(cfg), device_type)
    if key not in _CACHE:
        _CACHE[key] = estimate_step_memory(cfg, device_type)
    return _CACHE[key]


def _fixes(cfg: Config, limit: float) -> list[str]:
    """Overrides that bring ``cfg`` under ``limit`` GiB, each with its estimate (at most three)."""
    tc, out = cfg.train, []
    tries: list[dict[str, Any]] = []
    if not tc.checkpoint_unroll:
        tries.append({"train.checkpoint_unroll": True})
    k = 2
    while tc.batch_size // k >= 1 and len(tries) < 6:
        b = tc.batch_size // k
        if tc.batch_size % b == 0:
            tries.append({"train.checkpoint_unroll": True, "train.batch_size": b, "train.grad_accum": tc.grad_accum * k})
        k *= 2
    for over in tries:
        try:
            peak = estimate(with_overrides(cfg, over)).peak_gib
        except ConfigError:
            continue
        if peak <= limit:
            out.append(" ".join(f"{k}={str(v).lower()}" for k, v in over.items()) + f" ({peak:.1f} GiB)")
            if len(out) == 2:
                break
    return out or [f"none found: a smaller model (model.base_channels), smaller images or a larger card"]


def make_plan(cfg: Config, job: str, gpu_memory_gb: Optional[float], largest_n_only: bool = False,
              cases: Optional[list[Case]] = None) -> Plan:
    """Estimate every case of ``job`` (``cases``: a room's own, e.g. ``study.memory.study_cases``; else
    ``job_cases``); with ``gpu_memory_gb``, whether each fits and the fixes."""
    limit = usable_gib(gpu_memory_gb) if gpu_memory_gb else None
    cases = job_cases(cfg, job, largest_n_only) if cases is None else cases
    for c in cases:
        c.memory = estimate(c.cfg)
        if limit is not None:
            c.fits = c.memory.peak_gib <= limit
            if not c.fits:
                c.fixes = _fixes(c.cfg, limit)
    return Plan(job, gpu_memory_gb, limit, cases)


def check_plan(cfg: Config, job: str, gpu_memory_gb: Optional[float], source: str,
               cases: Optional[list[Case]] = None) -> Optional[Plan]:
    """Raise ``ConfigError`` before any trial when a case cannot fit ``gpu_memory_gb`` (from ``source``);
    None (not checked) for CPU runs or when no GPU memory is known."""
    if not cfg.train.use_gpu or not gpu_memory_gb:
        return None
    plan = make_plan(cfg, job, gpu_memory_gb, largest_n_only=True, cases=cases)
    bad = [c for c in plan.cases if c.fits is False]
    if bad:
        worst = max(bad, key=lambda c: c.memory.peak_gib if c.memory else 0.0)
        raise ConfigError(
            f"{job}: {len(bad)} of {len(plan.cases)} cases do not fit the GPU ({gpu_memory_gb:g} GB from {source}, "
            f"{plan.limit_gib:.1f} GiB usable per worker): " + "; ".join(
                f"{c.label} needs ~{c.memory.peak_gib:.1f} GiB" for c in bad if c.memory)
            + f". Fix ({worst.label}): " + " or ".join(worst.fixes)
            + ". Estimates: python jobs/plan.py --config ... (bidpm plan). Nothing was run")
    return plan
