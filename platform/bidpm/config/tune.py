"""Ray Tune + Optuna settings (``tune:`` section) and the search space."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from .base import SafeName, Section

_RANGES = ("warp_gamma", "end_weight", "interior_weight", "lambda_unpaired", "mmd_bandwidth_scale", "lr")
_LOG_RANGES = ("lambda_unpaired", "lr", "warp_gamma", "mmd_bandwidth_scale")


class SearchSpaceConfig(Section):
    """What Optuna may vary (define-by-run; conditional on N and on the pairing ratio).

    Ranges are ``[low, high]``; ``low == high`` fixes the value (nothing is sampled). See
    ``bidpm.search.space`` for how each entry becomes config overrides.
    """

    n_steps: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], description="candidate N")
    grid_placement: Literal["uniform", "free", "warp"] = Field(
        "free", description="uniform: t_n = n/N; free: interior points sampled then sorted; warp: t_n = (n/N)^gamma"
    )
    min_gap: float = Field(
        0.02, ge=1e-4, lt=0.5,
        description="free and warp placement: smallest allowed t_n - t_{n-1} (>= 1e-4 so 6-decimal grids stay increasing)",
    )
    warp_gamma: list[float] = Field(default_factory=lambda: [0.5, 2.0])
    end_weight: list[float] = Field(default_factory=lambda: [1.0, 1.0], description="[low, high] for w_0 = w_N")
    interior_weight: list[float] = Field(default_factory=lambda: [0.1, 1.0], description="[low, high] for w_1..w_{N-1}")
    lambda_unpaired: list[float] = Field(default_factory=lambda: [0.05, 1.0], description="log-uniform [low, high]")
    mmd_kernels: list[Literal["rbf", "imq", "laplacian"]] = Field(default_factory=lambda: ["rbf", "imq", "laplacian"])
    mmd_bandwidth_scale: list[float] = Field(default_factory=lambda: [0.5, 2.0])
    lr: Optional[list[float]] = Field(None, description="log-uniform [low, high]; unset keeps train.lr")
    paired_distances: Optional[list[Literal["lpips", "l2", "l1", "pseudo_huber"]]] = Field(
        None, description="candidates; unset keeps method.paired_distance"
    )

    @model_validator(mode="after")
    def _ranges(self) -> "SearchSpaceConfig":
        if not self.n_steps or any(n < 1 for n in self.n_steps):
            raise ValueError("tune.space.n_steps: must list step counts >= 1, e.g. [1, 2]")
        if len(set(self.n_steps)) != len(self.n_steps):
            raise ValueError(f"tune.space.n_steps: duplicate entries in {self.n_steps}")
        for name in _RANGES:
            r = getattr(self, name)
            if r is None:
                continue
            if len(r) != 2 or r[0] > r[1] or r[0] < 0:
                raise ValueError(f"tune.space.{name}: must be [low, high] with 0 <= low <= high (got {r})")
        for name in _LOG_RANGES:
            r = getattr(self, name)
            if r is not None and r[0] <= 0:
                raise ValueError(f"tune.space.{name}: sampled log-uniformly, so low must be > 0 (got {r})")
        if self.end_weight[1] <= 0:
            raise ValueError(f"tune.space.end_weight: high must be > 0 so the end points are matched (got {self.end_weight})")
        if not self.mmd_kernels:
            raise ValueError("tune.space.mmd_kernels: list at least one of rbf, imq, laplacian")
        if self.paired_distances is not None and not self.paired_distances:
            raise ValueError("tune.space.paired_distances: list at least one, or leave it unset")
        if self.grid_placement in ("free", "warp") and max(self.n_steps) * self.min_gap > 1.0:
            raise ValueError(
                f"tune.space.min_gap: {self.min_gap} x {max(self.n_steps)} steps does not fit in [0, 1]; lower min_gap or N"
            )
        return self


class ObjectiveSpec(Section):
    """One objective of a multi-objective search: a metric every trial reports and its direction."""

    metric: str = Field(description="a reported metric, e.g. val/ssim_mean, nfe (Euler steps = len(time_grid)-1)")
    mode: Literal["max", "min"] = Field("max", description="max or min")


class TuneConfig(Section):
    """Study size, scheduler, objective, per-trial resources and resume.

    Each trial is one Ray Train run (``train.num_workers`` workers with ``train.cpus_per_worker`` /
    ``train.gpus_per_worker``, fractional GPUs allowed); ``trial_cpus`` is what the trial's own driver
    function holds on top of that.
    """

    experiment_name: SafeName = "bidpm-tune"
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    metric: str = Field("val/ssim_mean", description="reported metric to optimise")
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    scheduler: Literal["asha", "fifo"] = Field("asha", description="asha: early-stop weak trials; fifo: run all to the end")
    asha_grace_period: int = Field(
        1, ge=1, description="epochs every trial runs before it can be stopped; set it where a pilot run's ranking of "
        "configs settles (benchmarks/asha_vs_grid.py: too early and ASHA stops the configs that start slowly but end best)")
    asha_reduction_factor: float = Field(2.0, gt=1.0)
    trial_cpus: float = Field(0.25, gt=0.0, description="CPU held by the trial driver itself (workers ask for their own)")
    resume: bool = Field(True, description="same experiment_name: restore and run only the unfinished part")
    verbose: bool = Field(
        False, description="true: Ray Tune's own console output (status tables, per-trial config and result dumps); "
        "false: only a compact live table of the trials (bidpm.search.table)")
    stall_timeout_s: Optional[float] = Field(
        300.0, ge=5.0,
        description="stop the study (with what it waited for and how to go on) when for this long no trial of it "
        "computes and one waits for resources (Tune trial or Train worker group) that a cluster that cannot grow does "
        "not have free: a leaked reservation or another job holds them (bidpm.tune.watchdog); null = wait forever")
    report_timeout_s: Optional[float] = Field(
        None, ge=5.0,
        description="also stop when a trial whose workers run has reported nothing (no epoch) for this long, i.e. it "
        "hangs; set it above the longest epoch + validation; null = no limit (the default: epochs may take hours)")
    autoscaling: Optional[bool] = Field(
        None,
        description="true: the cluster adds nodes for waiting trials, so waiting for resources is right (the live "
        "table says 'waiting for N GPUs') and stall_timeout_s does not stop it; false: a fixed cluster (a trial larger "
        "than it is refused before it starts); null: a local Ray the job started is fixed, a cluster it joined "
        "(RAY_ADDRESS, ray job submit) is taken to autoscale")
    objectives: list[ObjectiveSpec] = Field(
        default_factory=list,
        description="multi-objective search (>= 2, e.g. [{metric: val/ssim_mean, mode: max}, {metric: nfe, mode: min}]; "
        "also val/synthesis_ms_per_slice, measured per trial on its device): "
        "the first is the main objective (= tune.metric/mode: checkpoints, best trial, champion); empty = single "
        "objective tune.metric/mode. ASHA is off under it (FIFO, bidpm.search.objectives)")
    mo_sampler: Literal["tpe", "nsga2"] = Field("tpe", description="multi-objective sampler: Optuna's TPE or NSGA-II (seeded)")
    nsga2_population: int = Field(8, ge=2, description="NSGA-II population size (trials per generation)")
    importance_evaluator: Literal["fanova", "ped_anova"] = Field(
        "fanova", description="multi-objective report: Optuna's evaluator of parameter importance for the main objective")
    optuna_storage: Optional[str] = Field(
        None, description="Optuna RDB storage URL (sqlite:///..., postgresql://...) for optuna-dashboard; null = "
        "sqlite:///<search folder>/optuna.db under a multi-objective search on a local folder, else in memory")
    warm_start_from: Optional[str] = Field(
        None, description="a previous search folder, or runs:/<its MLflow parent run id>: its finished trials seed "
        "the sampler (added to the Optuna study as finished, never rerun); searched parameters it did not have are "
        "sampled fresh")
    space: SearchSpaceConfig = Field(default_factory=SearchSpaceConfig)

    @model_validator(mode="before")
    @classmethod
    def _main_objective(cls, data: Any) -> Any:
        """tune.metric/mode default to the first objective; set both ways, they must agree (one main objective)."""
        if not isinstance(data, dict) or not data.get("objectives"):
            return data
        objs = data["objectives"]
        first = objs[0] if isinstance(objs, list) and objs and isinstance(objs[0], dict) else None
        if first is None:
            return data
        out = dict(data)
        for key, default in (("metric", None), ("mode", "max")):
            want = first.get(key, default)
            if key in out and out[key] != want:
                raise ValueError(f"tune.{key}: {out[key]!r} but tune.objectives[0].{key} (the main objective) is "
                                 f"{want!r}; drop tune.{key} or make them agree")
            out[key] = want
        return out

    @model_validator(mode="after")
    def _objectives(self) -> "TuneConfig":
        if len(self.objectives) == 1:
            raise ValueError("tune.objectives: list at least two objectives, or leave it empty (tune.metric/mode)")
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"tune.objectives: a metric appears twice in {metrics}")
        return self
