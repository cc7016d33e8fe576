"""Toy benchmark (paper Fig. 2-3): does a method keep the pairing given by a few paired points?

Source: 8 Gaussians on a circle (radius 4). Target: 8 Gaussians on a square (corners and edge
midpoints, half-side 3). The 8 means are paired by a *relation* (source Gaussian i <-> target
Gaussian pair[i]); every other point is unpaired. Relations (``--relation``):

  nearest  pair[i] = i: each source mean goes to the target mean at the same angle (the map a
           marginal-only method finds by itself: the control case)
  rotate   pair[i] = i + SHIFT (mod 8): a quarter turn for SHIFT = 2 (Fig. 2's kind of non-trivial map)
  permute  a fixed scrambled permutation (Fig. 3's "different paired data relationships")

Every method trains on the same batches: half paired means, half unpaired points (source and target
drawn independently), as paper 3.2.2 builds its batches. Bi-DPM uses d = l2 on the paired rows and
MMD (lambda_u) on the unpaired ones; RF / I-CFM regress their straight-line targets on every row
(paired rows as pairs, unpaired rows as independent pairs). All synthesise with the config's grid
(10 Euler steps, as Fig. 2), an MLP velocity field (bidpm.model), on CPU.

Reported per relation and method:
  acc_fwd   share of samples from source Gaussian i whose synthetic target lies nearest target mean pair[i]
  acc_bwd   share of samples from target Gaussian j whose synthetic source lies nearest source mean pair^-1[j]
  sw_fwd    sliced Wasserstein-2 between synthetic targets and fresh target samples (sw_bwd: sources)
  sw_floor  the same distance between two fresh target samples: the sampling noise floor
  mean_err  RMS distance from each source mean's synthetic target to its paired target mean
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bidpm.cli import job_parser, parse_job_args
from bidpm.config import Config, MethodConfig
from bidpm.method import Batch, Method, build_method
from bidpm.model import build_velocity_field

REPO = Path(__file__).resolve().parents[1]
N_MODES = 8
SOURCE_RADIUS = 4.0
TARGET_HALF_SIDE = 3.0
MODE_STD = 0.3
PERMUTATION = [3, 7, 0, 5, 1, 6, 2, 4]  # fixed, neither a rotation nor a reflection of the ordering
RELATIONS = ("nearest", "rotate", "permute")
EVAL_PER_MODE = 200
SW_PROJECTIONS = 256


# --- data ----------------------------------------------------------------------------------------
def source_means() -> torch.Tensor:
    """(8, 2): circle of radius 4, counter-clockwise from angle 0."""
    a = 2 * np.pi * np.arange(N_MODES) / N_MODES
    return torch.tensor(np.stack([np.cos(a), np.sin(a)], 1) * SOURCE_RADIUS, dtype=torch.float32)


def target_means() -> torch.Tensor:
    """(8, 2): square boundary (edge midpoints and corners), counter-clockwise from (s, 0)."""
    s = TARGET_HALF_SIDE
    pts = [(s, 0), (s, s), (0, s), (-s, s), (-s, 0), (-s, -s), (0, -s), (s, -s)]
    return torch.tensor(pts, dtype=torch.float32)


def relation_pairs(relation: str, shift: int) -> np.ndarray:
    """pair[i] = index of the target Gaussian paired with source Gaussian i."""
    if relation == "nearest":
        return np.arange(N_MODES)
    if relation == "rotate":
        return (np.arange(N_MODES) + shift) % N_MODES
    if relation == "permute":
        return np.array(PERMUTATION)
    raise ValueError(f"--relation: unknown {relation!r}; choose one of {RELATIONS} or all")


def mixture(means: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return means[labels] + MODE_STD * torch.randn(len(labels), 2, generator=gen)


def draw_batch(batch_size: int, pair: np.ndarray, gen: torch.Generator) -> Batch:
    """Half paired means (x = mu_i, z = nu_pair[i]), half unpaired points drawn independently."""
    n_p = batch_size // 2
    n_u = batch_size - n_p
    mu, nu, pair_t = source_means(), target_means(), torch.as_tensor(pair)
    i = torch.randint(N_MODES, (n_p,), generator=gen)
    x_u = mixture(mu, torch.randint(N_MODES, (n_u,), generator=gen), gen)
    z_u = mixture(nu, torch.randint(N_MODES, (n_u,), generator=gen), gen)
    paired = torch.cat([torch.ones(n_p, dtype=torch.bool), torch.zeros(n_u, dtype=torch.bool)])
    return Batch(torch.cat([mu[i], x_u]), torch.cat([nu[pair_t[i]], z_u]), paired)


# --- training and evaluation ---------------------------------------------------------------------
def train(cfg: Config, method: Method, pair: np.ndarray, iters: int) -> tuple[torch.nn.Module, float]:
    """Adam on ``method.loss``; the batch stream is seeded the same for every method."""
    torch.manual_seed(cfg.train.seed)
    model = build_velocity_field(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    start = time.perf_counter()
    for _ in range(iters):
        out = method.loss(model, draw_batch(cfg.train.batch_size, pair, gen))
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        if cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
    return model.eval(), time.perf_counter() - start


def sliced_w2(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> float:
    """Sliced Wasserstein-2 between equal-size point clouds (N, 2): sqrt(mean over directions of W2^2)."""
    theta = rng.uniform(0, np.pi, SW_PROJECTIONS)
    dirs = np.stack([np.cos(theta), np.sin(theta)], 1)
    pa, pb = np.sort(a @ dirs.T, axis=0), np.sort(b @ dirs.T, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


def nearest(points: torch.Tensor, means: torch.Tensor) -> np.ndarray:
    return torch.cdist(points, means).argmin(1).numpy()


def evaluate(method: Method, model: torch.nn.Module, pair: np.ndarray, seed: int) -> dict[str, float]:
    gen, rng = torch.Generator().manual_seed(10_000 + seed), np.random.default_rng(seed)
    mu, nu = source_means(), target_means()
    labels = torch.arange(N_MODES).repeat_interleave(EVAL_PER_MODE)
    x, z = mixture(mu, labels, gen), mixture(nu, labels, gen)
    z_ref, x_ref, z_ref2 = mixture(nu, labels, gen), mixture(mu, labels, gen), mixture(nu, labels, gen)
    fake_z = method.sample(model, x, direction="forward")
    fake_x = method.sample(model, z, direction="backward")
    inverse = np.argsort(pair)
    lab = labels.numpy()
    mean_fwd = method.sample(model, mu, direction="forward")
    return {
        "acc_fwd": float(np.mean(nearest(fake_z, nu) == pair[lab])),
        "acc_bwd": float(np.mean(nearest(fake_x, mu) == inverse[lab])),
        "sw_fwd": sliced_w2(fake_z.numpy(), z_ref.numpy(), rng),
        "sw_bwd": sliced_w2(fake_x.numpy(), x_ref.numpy(), rng),
        "sw_floor": sliced_w2(z_ref2.numpy(), z_ref.numpy(), rng),
        "mean_err": float((mean_fwd - nu[torch.as_tensor(pair)]).norm(dim=1).pow(2).mean().sqrt()),
    }


# --- output --------------------------------------------------------------------------------------
def atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder, then rename: never a partial file that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def print_table(rows: list[dict]) -> None:
    head = f"{'relation':<9} {'method':<7} {'acc_fwd':>7} {'acc_bwd':>7} {'sw_fwd':>7} {'sw_bwd':>7} {'sw/floor':>8} {'mean_err':>8} {'acc_fwd vs bidpm':>16} {'train_s':>7}"
    print(head)
    print("-" * len(head))
    ref = {r["relation"]: r for r in rows if r["method"] == "bidpm"}
    for r in rows:
        b = ref.get(r["relation"])
        ratio = f"{r['acc_fwd'] / b['acc_fwd']:.2f}x" if b and b["acc_fwd"] > 0 else "-"
        print(
            f"{r['relation']:<9} {r['method']:<7} {r['acc_fwd']:>7.1%} {r['acc_bwd']:>7.1%} {r['sw_fwd']:>7.3f} "
            f"{r['sw_bwd']:>7.3f} {r['sw_fwd'] / r['sw_floor']:>7.1f}x {r['mean_err']:>8.3f} {ratio:>16} {r['train_s']:>7.1f}"
        )


def plot(path: Path, results: list[dict], samples: dict, pairs: dict, methods: list[str]) -> None:
    """Fig. 2 style: input with pair lines, then each method's forward synthesis coloured by source Gaussian."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    relations = list(pairs)
    mu, nu = source_means().numpy(), target_means().numpy()
    fig, axes = plt.subplots(len(relations), 1 + len(methods), figsize=(3.2 * (1 + len(methods)), 3.2 * len(relations)), squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(N_MODES))
    acc = {(r["relation"], r["method"]): r["acc_fwd"] for r in results}
    for row, rel in enumerate(relations):
        x, lab = samples[rel]["x"], samples[rel]["labels"]
        ax = axes[row, 0]
        ax.scatter(x[:, 0], x[:, 1], s=2, c=colours[lab], alpha=0.4)
        ax.scatter(samples[rel]["z"][:, 0], samples[rel]["z"][:, 1], s=2, c="0.6", alpha=0.4)
        for i, j in enumerate(pairs[rel]):
            ax.plot([mu[i, 0], nu[j, 0]], [mu[i, 1], nu[j, 1]], c="g", lw=1)
        ax.scatter(mu[:, 0], mu[:, 1], marker="*", s=120, c=colours, edgecolors="k")
        ax.scatter(nu[:, 0], nu[:, 1], marker="*", s=120, c=colours[np.argsort(pairs[rel])], edgecolors="k")
        ax.set_title(f"Input ({rel})")
        for col, name in enumerate(methods, start=1):
            ax = axes[row, col]
            y = samples[rel][name]
            ax.scatter(y[:, 0], y[:, 1], s=2, c=colours[lab], alpha=0.5)
            ax.scatter(nu[:, 0], nu[:, 1], marker="*", s=120, c=colours[np.argsort(pairs[rel])], edgecolors="k")
            ax.set_title(f"{name}: acc {acc[(rel, name)]:.0%}")
        for ax in axes[row]:
            ax.set_xlim(-6, 6)
            ax.set_ylim(-6, 6)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Target stars coloured like their paired source Gaussian; synthetic points coloured by origin")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__.split("\n")[0], epilog=__doc__)
    parser.set_defaults(config=str(REPO / "configs" / "toy_gaussians.yaml"))
    for action in parser._actions:  # the shared parser's help names embedded defaults; this job has a file
        if action.dest == "config":
            action.help = "experiment YAML (default: configs/toy_gaussians.yaml)"
    parser.add_argument("--relation", default="rotate", choices=RELATIONS + ("all",), help="pairing of the 8 means (default rotate)")
    parser.add_argument("--shift", type=int, default=2, help="rotate: pair[i] = i + shift mod 8 (default 2, a quarter turn)")
    parser.add_argument("--methods", default="bidpm,rf,icfm", help="comma list from bidpm,rf,icfm,otcfm,vpcfm (default bidpm,rf,icfm)")
    parser.add_argument("--iters", type=int, default=600, help="Adam steps per method (default 600)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write a Fig. 2-style scatter plot PNG here")
    cfg, args = parse_job_args(parser, argv)
    if cfg.model.kind != "mlp" or cfg.model.mlp_dim != 2:
        parser.error(f"{args.config}: model.kind must be mlp with model.mlp_dim 2 for 2-D toy data (got {cfg.model.kind}, {cfg.model.mlp_dim})")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in ("bidpm", "rf", "icfm", "otcfm", "vpcfm"):
            parser.error(f"--methods: unknown method {m!r}")
    torch.set_num_threads(args.threads)
    relations = list(RELATIONS) if args.relation == "all" else [args.relation]

    results, samples, pairs = [], {}, {}
    for rel in relations:
        pair = relation_pairs(rel, args.shift)
        pairs[rel] = pair
        gen = torch.Generator().manual_seed(999)
        labels = torch.arange(N_MODES).repeat_interleave(60)
        x_show = mixture(source_means(), labels, gen)
        samples[rel] = {"x": x_show.numpy(), "z": mixture(target_means(), labels, gen).numpy(), "labels": labels.numpy()}
        for name in methods:
            mcfg = MethodConfig.model_validate({**cfg.method.model_dump(), "name": name})
            method = build_method(mcfg)
            model, seconds = train(cfg, method, pair, args.iters)
            row = {"relation": rel, "method": name, "train_s": seconds, **evaluate(method, model, pair, cfg.train.seed)}
            results.append(row)
            samples[rel][name] = method.sample(model, x_show).numpy()
            print(f"  {rel:<8} {name:<6} acc_fwd {row['acc_fwd']:.1%}  acc_bwd {row['acc_bwd']:.1%}  ({seconds:.0f}s)", flush=True)

    print()
    print_table(results)
    setup = {
        "config": str(args.config), "overrides": args.overrides, "iters": args.iters, "time_grid": cfg.method.time_grid,
        "lambda_unpaired": cfg.method.lambda_unpaired, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr, "shift": args.shift,
    }
    if args.json:
        text = json.dumps({"setup": setup, "results": results}, indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
        print(f"\njson: {args.json}")
    if args.plot:
        plot(args.plot, results, samples, pairs, methods)
        print(f"plot: {args.plot}")
    print("\nrerun: .venv/bin/python benchmarks/toy_gaussians.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
