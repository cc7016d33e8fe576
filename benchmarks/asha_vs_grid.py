"""ASHA + Optuna (TPE) vs an exhaustive grid over the same discretised Bi-DPM space, on a 2-D toy task.

Question: how many trial-epochs does the adaptive search spend before it has a trial that matches the
grid's best objective (within --tol), compared with the grid's cost (every config x every epoch)?
Target: <= 1/3 of the grid.

Toy task: paired 2-D data, x_1 = a fixed nonlinear map of x_0 ~ N(0, I) (a rotation with a radial
stretch and a shift). Bi-DPM with the L2 paired distance (Eq. 6) trains an MLP u_theta; the objective
is the held-out synthesis error, mean of forward and backward MSE (lower is better). Each trial is an
in-process Tune function trainable (no TorchTrainer: the search is what is measured, not DDP).
Training is seeded per config, so a config gives the same curve in both searches. The learning rate
decays (cosine) to 0 over a trial's full budget, so a finished trial has converged: with a constant
lr (``--lr-schedule constant``, this benchmark's first version, 40 steps/epoch) the final objective
still moved 5-10% per epoch, the grid's "best" was whichever config the last SGD steps favoured, and
no search could find it reliably.

ASHA's premise is that early rankings predict final ones. On this toy they do from epoch 4 on (the
best config ranks 1st from there, 10th of 19 at epoch 1, Spearman 0.58 at epoch 1): ``--grace-period``
(``tune.asha_grace_period`` in the platform's configs) should sit where a pilot run's ranking settles.

Space (discretised): N in {1, 2, 4}; for N > 1 the grid warp t_n = (n/N)^gamma with gamma in
{0.5, 1, 2} and the interior weight w in {0.25, 0.5, 1} (end weights 1): 1 + 2 x 3 x 3 = 19 configs.

    .venv/bin/python benchmarks/asha_vs_grid.py --samples 16 --reduction-factor 2 --grace-period 4   # ~10 min on 2 cores
    .venv/bin/python benchmarks/asha_vs_grid.py --samples 16 --reduction-factor 3                    # grace 1, for contrast
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

N_CHOICES, GAMMAS, WEIGHTS = (1, 2, 4), (0.5, 1.0, 2.0), (0.25, 0.5, 1.0)


def all_points() -> list[dict[str, Any]]:
    pts = [{"n_steps": 1, "gamma": 1.0, "w_int": 1.0}]
    for n, g, w in itertools.product(N_CHOICES[1:], GAMMAS, WEIGHTS):
        pts.append({"n_steps": n, "gamma": g, "w_int": w})
    return pts


def _data(n: int, seed: int):
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, generator=g)
    r = x0.norm(dim=1, keepdim=True)
    c, s = math.cos(1.2), math.sin(1.2)
    rot = x0 @ torch.tensor([[c, -s], [s, c]]).T
    x1 = rot * (1.0 + 0.6 * torch.tanh(r)) + torch.tensor([1.5, -0.5])
    return x0, x1


def trainable(config: dict[str, Any]) -> None:
    """Train Bi-DPM on the toy pairs for config['epochs'] epochs, reporting the held-out MSE per epoch."""
    import torch
    from ray import tune

    from bidpm.config import MethodConfig, ModelConfig
    from bidpm.method import Batch, build_method
    from bidpm.model import build_velocity_field

    torch.set_num_threads(1)
    n = int(config["n_steps"])
    grid = [0.0] + [(i / n) ** config["gamma"] for i in range(1, n)] + [1.0]
    weights = [1.0] + [config["w_int"]] * (n - 1) + [1.0]
    method = build_method(MethodConfig(time_grid=grid, step_weights=weights, paired_distance="l2"))
    torch.manual_seed(0)
    model = build_velocity_field(ModelConfig(kind="mlp", mlp_dim=2, mlp_hidden=64, mlp_layers=3))
    opt = torch.optim.Adam(model.parameters(), lr=config.get("lr", 3e-3))
    # cosine: decays to 0 over the trial's full budget (epochs x steps), so a trial that runs to the end
    # has converged and its objective ranks the config, not the last few SGD steps' noise; an early-
    # stopped trial simply stops on the way (as ASHA runs with a fixed schedule do)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, config["epochs"] * config["steps"])
             if config.get("lr_schedule", "constant") == "cosine" else None)
    x0, x1 = _data(4096, 0)
    v0, v1 = _data(1024, 1)
    g = torch.Generator().manual_seed(0)
    for _ in range(config["epochs"]):
        for _ in range(config["steps"]):
            idx = torch.randint(0, len(x0), (128,), generator=g)
            loss = method.loss(model, Batch.fully_paired(x0[idx], x1[idx])).total
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        with torch.no_grad():
            fwd = ((method.sample(model, v0, direction="forward") - v1) ** 2).sum(1).mean()
            bwd = ((method.sample(model, v1, direction="backward") - v0) ** 2).sum(1).mean()
        tune.report({"mse": float(0.5 * (fwd + bwd))})


def asha_space(trial, epochs: int, steps: int, lr_schedule: str) -> dict[str, Any]:
    """The same discretised space, define-by-run (gamma and w only for N > 1)."""
    n = trial.suggest_categorical("n_steps", list(N_CHOICES))
    fixed = {"epochs": epochs, "steps": steps, "lr_schedule": lr_schedule}
    if n > 1:
        trial.suggest_categorical("gamma", list(GAMMAS))
        trial.suggest_categorical("w_int", list(WEIGHTS))
        return fixed
    return {"gamma": 1.0, "w_int": 1.0, **fixed}


def run_grid(args) -> tuple[list[dict[str, Any]], float]:
    from ray import tune

    space = {"point": tune.grid_search(all_points()), "epochs": args.epochs, "steps": args.steps, "lr_schedule": args.lr_schedule}

    def flat(config):
        return trainable({**config["point"], **{k: config[k] for k in ("epochs", "steps", "lr_schedule")}})

    t0 = time.time()
    res = tune.Tuner(
        tune.with_resources(flat, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="mse", mode="min", max_concurrent_trials=2),
        run_config=tune.RunConfig(name="grid", storage_path=args.storage, verbose=0),
    ).fit()
    rows = [{**r.config["point"], "mse": r.metrics["mse"], "epochs": r.metrics["training_iteration"]} for r in res]
    return rows, time.time() - t0


def run_asha(args, seed: int) -> tuple[list[dict[str, Any]], float]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    space = functools.partial(asha_space, epochs=args.epochs, steps=args.steps, lr_schedule=args.lr_schedule)  # picklable
    t0 = time.time()
    res = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric="mse", mode="min", num_samples=args.samples, max_concurrent_trials=1,   # launch order = cost order
            search_alg=OptunaSearch(space, metric="mse", mode="min", seed=seed),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=args.epochs, grace_period=args.grace_period,
                                    reduction_factor=args.reduction_factor),
        ),
        run_config=tune.RunConfig(name=f"asha_{seed}", storage_path=args.storage, verbose=0),
    ).fit()
    rows = []
    def started(r) -> float:      # sequential trials (max_concurrent 1): first report time orders them
        df = r.metrics_dataframe
        return float(df["timestamp"].iloc[0] - df["time_total_s"].iloc[0])

    for r in sorted(res, key=started):
        c = r.config
        rows.append({"n_steps": c["n_steps"], "gamma": c["gamma"], "w_int": c["w_int"], "mse": r.metrics["mse"],
                     "epochs": r.metrics["training_iteration"]})
    return rows, time.time() - t0


def load_grid_cache(path: Path, epochs: int) -> tuple[list[dict[str, Any]], float] | None:
    """The cached grid result when it is complete and well-formed for ``epochs``, else None (rerun).

    A cache is trusted only if it parses, covers every point of ``all_points()`` once and every row
    ran all ``epochs`` with a finite mse; anything else (interrupted write from an older version,
    edited file, changed space) is ignored with a note, and the grid runs again.
    """
    if not path.is_file():
        return None
    try:
        rows, secs = json.loads(path.read_text())
        keys = sorted((r["n_steps"], r["gamma"], r["w_int"]) for r in rows)
        ok = (keys == sorted((q["n_steps"], q["gamma"], q["w_int"]) for q in all_points())
              and all(int(r["epochs"]) == epochs and math.isfinite(float(r["mse"])) for r in rows))
        if ok:
            return rows, float(secs)
    except (ValueError, TypeError, KeyError) as exc:
        print(f"note: ignoring unreadable grid cache {path} ({exc.__class__.__name__}: {exc}); rerunning the grid")
        return None
    print(f"note: grid cache {path} does not match the current space/epochs; rerunning the grid")
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=9, help="epochs per trial (ASHA max_t; every grid config runs them all)")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per epoch")
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                   help="cosine to 0 over each trial's full budget (converged, low-noise objective) or constant lr")
    p.add_argument("--samples", type=int, default=12, help="ASHA trials per seed")
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--grace-period", type=int, default=1,
                   help="epochs before ASHA may stop a trial (larger N starts slower: see the closing note of issue 5)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="TPE seeds, one ASHA search each")
    p.add_argument("--tol", type=float, default=0.02, help="relative tolerance on the grid's best objective")
    p.add_argument("--storage", default=str(Path("outputs/bench_asha").resolve()),
                   help="Tune storage folder; also holds the grid cache grid_rows_e<epochs>_s<steps>_<schedule>.json")
    args = p.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "platform")}})
    cache = Path(args.storage) / f"grid_rows_e{args.epochs}_s{args.steps}_{args.lr_schedule}.json"  # the grid is deterministic
    cached = load_grid_cache(cache, args.epochs)
    if cached is not None:
        grid_rows, grid_s = cached
    else:
        from bidpm.io.storage import write_bytes_atomic

        grid_rows, grid_s = run_grid(args)
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(str(cache), json.dumps([grid_rows, grid_s]).encode())
    grid_cost = sum(r["epochs"] for r in grid_rows)
    best = min(grid_rows, key=lambda r: r["mse"])
    target = best["mse"] * (1 + args.tol)
    print(f"grid: {len(grid_rows)} configs x {args.epochs} epochs = {grid_cost} trial-epochs ({grid_s:.0f} s); "
          f"best mse {best['mse']:.4f} at N={best['n_steps']} gamma={best['gamma']} w={best['w_int']}; target <= {target:.4f}")
    lines = []
    for seed in args.seeds:
        rows, secs = run_asha(args, seed)
        spent, reached = 0, None
        for r in rows:
            spent += r["epochs"]
            if reached is None and r["epochs"] >= args.epochs and r["mse"] <= target:
                reached = spent
        total = sum(r["epochs"] for r in rows)
        lines.append((seed, len(rows), total, reached, min(r["mse"] for r in rows), secs))
    print()
    print(f"{'search':<14}{'trials':>7}{'trial-epochs':>14}{'to target':>11}{'ratio':>8}{'best mse':>10}{'wall s':>8}")
    print(f"{'grid':<14}{len(grid_rows):>7}{grid_cost:>14}{grid_cost:>11}{1.0:>8.2f}{best['mse']:>10.4f}{grid_s:>8.0f}")
    for seed, n, total, reached, bmse, secs in lines:
        to = "-" if reached is None else str(reached)
        ratio = "-" if reached is None else f"{reached / grid_cost:.2f}"
        print(f"{'asha+tpe s' + str(seed):<14}{n:>7}{total:>14}{to:>11}{ratio:>8}{bmse:>10.4f}{secs:>8.0f}")
    spent_to_target = sorted(math.inf if r[3] is None else r[3] for r in lines)  # a miss counts as never
    med = statistics.median(spent_to_target)
    hits = sum(math.isfinite(v) for v in spent_to_target)
    if math.isfinite(med):
        print(f"\nmedian over seeds of trial-epochs to the grid's best (+{args.tol:.0%}): {med:.0f} = {med / grid_cost:.2f} x grid "
              f"(target <= 0.33); reached in {hits}/{len(lines)} seeds; worst seed "
              + ("never" if not math.isfinite(spent_to_target[-1]) else f"{spent_to_target[-1] / grid_cost:.2f} x grid"))
    else:
        print(f"\nthe median seed never matched the grid's best within {args.tol:.0%} (reached in {hits}/{len(lines)} seeds): "
              "raise --samples or --grace-period (see the docstring)")
    print("rerun: .venv/bin/python benchmarks/asha_vs_grid.py " + " ".join(sys.argv[1:]))
    ray.shutdown()


if __name__ == "__main__":
    main()
