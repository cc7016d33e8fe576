"""Evaluate a model on a split in both directions at several Euler step counts (paper 3.3, Fig. 7).

    python jobs/evaluate.py --checkpoint outputs/quickstart/ray_results/quickstart/checkpoint_000002 \\
        --steps 1,2,5,10 --json outputs/eval.json --plot outputs/eval.png
    python jobs/evaluate.py --config configs/quickstart.yaml --model-uri models:/bidpm-quickstart@champion

Rows: uniform grids with N = 1, 2, 5, 10 steps (``--steps``) plus the model's own training grid;
columns: SSIM, PSNR and MAE (mean +- std over slices) for forward (source -> target) and backward
(target -> source) synthesis, each compared with the real slice of the other modality inside the mask,
on the [-1, 1] scale (data range 2), exactly like the training validation and the registry promotion.

Choices: the split is read straight from the manifest's Parquet files with pyarrow, one subject file at
a time, in batches (no Ray: evaluation is one process looping over a small split, and Ray's start-up
would cost more than reading). Every row of the split has both modalities (shards are built from
co-registered pairs), so the pairing ratio - a training-time choice - does not apply. The shards are
those of the model's own data config unless ``--config``/``data.*`` overrides name others (then their
image size and modalities must match the model's).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import job_parser, parse_job_args, run_main  # noqa: E402
from bidpm.config import Config, ConfigError  # noqa: E402

DIRECTIONS = (("fwd", "forward"), ("bwd", "backward"))
METRICS = ("ssim", "psnr", "mae")


def iter_split(cfg: Config, split: str, batch_size: int, max_slices: Optional[int]) -> Iterator[tuple]:
    """(source, target, mask) float32 numpy batches (B, 1, H, W) of ``split``, file by file."""
    import numpy as np

    from bidpm.data import load_manifest
    from bidpm.data import storage
    from bidpm.data.shards import read_shard_file
    from bidpm.data.manifest import DataError

    try:
        m = load_manifest(cfg)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    files = [f for f in m["files"] if f["split"] == split]
    if not files:
        raise ConfigError(f"split {split!r} has no subjects in {m['location']}; raise data.split.{split}_fraction "
                          f"and rerun jobs/prepare_data.py, or pick --split val/train")
    seen = 0
    for f in files:
        table = read_shard_file(storage.join(m["location"], f["path"]), ["source", "target", "mask"])
        arrays = [table.column(k).combine_chunks().to_numpy_ndarray().astype(np.float32)[:, None] for k in ("source", "target", "mask")]
        for start in range(0, table.num_rows, batch_size):
            stop = start + batch_size
            if max_slices is not None:
                stop = min(stop, start + max_slices - seen)
            if stop <= start:
                return
            yield tuple(a[start:stop] for a in arrays)
            seen += stop - start


def grids_to_run(steps: Sequence[int], train_grid: Sequence[float]) -> list[dict]:
    """Uniform grids for each N, plus the training grid (merged into its uniform twin when equal)."""
    from bidpm.method import uniform_grid

    rows = []
    for n in steps:
        g = uniform_grid(n)
        rows.append({"label": f"uniform N={n}", "steps": n, "grid": g, "training_grid": False})
    train = [float(t) for t in train_grid]
    for r in rows:
        if len(r["grid"]) == len(train) and all(abs(a - b) < 1e-9 for a, b in zip(r["grid"], train)):
            r["training_grid"] = True
            r["label"] += " (training grid)"
            break
    else:
        rows.append({"label": f"training grid {train}", "steps": len(train) - 1, "grid": train, "training_grid": True})
    return rows


def format_table(rows: list[dict]) -> str:
    head = ["grid", "N"] + [f"{d} {m.upper()}" for d, _ in DIRECTIONS for m in METRICS]
    body = []
    for r in rows:
        cells = [r["label"], str(r["steps"])]
        for d, _ in DIRECTIONS:
            for m in METRICS:
                fmt = "{:.2f}" if m == "psnr" else "{:.4f}"
                cells.append(f"{fmt.format(r[f'{d}/{m}_mean'])}±{fmt.format(r[f'{d}/{m}_std'])}")
        body.append(cells)
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def write_atomic(path: Path, data: bytes) -> None:
    """Unique temp name beside ``path`` + rename (``bidpm.data.storage``): never a partial file."""
    from bidpm.data.storage import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(str(path), data)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Quality vs steps, both directions (Fig. 7 layout: one panel per metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uniform = sorted((r for r in rows if r["label"].startswith("uniform")), key=lambda r: r["steps"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4))
    for ax, m in zip(axes, METRICS):
        for (d, name), colour in zip(DIRECTIONS, ("tab:blue", "tab:orange")):
            xs = [r["steps"] for r in uniform]
            ax.errorbar(xs, [r[f"{d}/{m}_mean"] for r in uniform], yerr=[r[f"{d}/{m}_std"] for r in uniform],
                        marker="o", capsize=3, color=colour, label=f"{name} (uniform)")
            for r in rows:
                if r["training_grid"]:
                    ax.plot([r["steps"]], [r[f"{d}/{m}_mean"]], marker="*", markersize=14, color=colour, linestyle="none",
                            label=f"{name} (training grid)")
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["steps"] for r in rows}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("Euler steps N")
        ax.set_title(m.upper() + (" (lower is better)" if m == "mae" else ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def main() -> int:
    parser = job_parser(__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="training checkpoint folder (holds state.pt)")
    which.add_argument("--model-uri", help="registered/logged model, e.g. models:/bidpm@champion")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="default test")
    parser.add_argument("--steps", default="1,2,5,10", help="comma-separated N for uniform grids (default 1,2,5,10)")
    parser.add_argument("--json", help="write the results as JSON here ('-' = stdout)")
    parser.add_argument("--plot", help="write a PNG of quality vs steps here")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per batch (default tracking.test_batch_size)")
    parser.add_argument("--max-slices", type=int, default=None, help="evaluate only the first N slices (smoke runs)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda ...")
    cfg, args = parse_job_args(__doc__, parser=parser)
    try:
        steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--steps {args.steps!r}: expected comma-separated integers, e.g. 1,2,5,10") from None
    if not steps or min(steps) < 1:
        raise ConfigError(f"--steps {args.steps!r}: step counts must be >= 1")

    from bidpm.model_source import load_model, pick_device
    from bidpm.synthesis import sampling_method

    explicit = args.config is not None or any(o.startswith("data.") for o in args.overrides)
    device = pick_device(args.device)
    net, model_cfg, what = load_model(args.checkpoint, args.model_uri, cfg, explicit, device)
    data_cfg = cfg if explicit else model_cfg
    method = sampling_method(model_cfg.method).to(device)
    rows = grids_to_run(steps, model_cfg.method.time_grid)
    batch_size = args.batch_size or cfg.tracking.test_batch_size
    n = run_rows(net, method, data_cfg, rows, args.split, batch_size, args.max_slices, model_cfg.train.precision)

    src, tgt = model_cfg.data.modalities
    print(f"{what} on the {args.split} split of {data_cfg.shards_path}: {n} slices, "
          f"fwd = {src}->{tgt}, bwd = {tgt}->{src} (metrics on [-1, 1] inside the mask)")
    print(format_table(rows))
    result = {"model": what, "split": args.split, "slices": n, "modalities": [src, tgt],
              "training_grid": list(model_cfg.method.time_grid), "rows": rows}
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        write_atomic(Path(args.json), json.dumps(result, indent=2).encode())
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, Path(args.plot), f"{what} - {args.split} split, {n} slices ({src}<->{tgt})")
        print(f"wrote {args.plot}")
    return 0


def run_rows(net, method, cfg: Config, rows: list[dict], split: str, batch_size: int, max_slices: Optional[int],
             precision: str) -> int:
    """Stream the split once; for every batch run every grid in both directions. Fills ``rows`` in place."""
    import torch
    from tqdm import tqdm

    from bidpm.metrics import MetricAccumulator, image_metrics
    from bidpm.synthesis import synthesize_slices

    h, w = cfg.data.image_size
    accs = [MetricAccumulator() for _ in rows]
    n = 0
    for src, tgt, mask in tqdm(iter_split(cfg, split, batch_size, max_slices), desc=f"{split} batches", unit="batch", file=sys.stderr):
        if src.shape[-2:] != (h, w):
            raise ConfigError(f"the {split} shards hold {src.shape[-2]}x{src.shape[-1]} slices but the model takes {h}x{w}; "
                              "evaluate on shards prepared with the model's data.image_size")
        x_0, x_1, m = torch.from_numpy(src), torch.from_numpy(tgt), torch.from_numpy(mask)
        for row, acc in zip(rows, accs):
            for (d, direction), x, ref in ((DIRECTIONS[0], x_0, x_1), (DIRECTIONS[1], x_1, x_0)):
                pred = synthesize_slices(net, method, x, direction, row["grid"], batch_size, precision)
                acc.update(image_metrics(pred, ref, data_range=2.0, mask=m), prefix=d)
        n += src.shape[0]
    if n == 0:
        raise ConfigError(f"the {split} split is empty (or --max-slices is 0)")
    for row, acc in zip(rows, accs):
        stats = acc.compute()
        for d, _ in DIRECTIONS:
            for k in METRICS:
                row[f"{d}/{k}_mean"] = stats.get(f"{d}/{k}_mean", float("nan"))
                row[f"{d}/{k}_std"] = stats.get(f"{d}/{k}_std", float("nan"))
    return n


if __name__ == "__main__":
    run_main(main)
