"""Pairing-ratio ablation: train the same config at 100/50/10/1% paired rows over ONE set of shards
(pairing is decided when shards are read), score each on the test split in both directions, and print
a table + plot; every ratio is an MLflow run nested under one parent.

    python jobs/ablate_pairing.py --config configs/ablate_pairing_brain.yaml [key=value ...] [--ratios 1 0.5 0.1 0.01]

(overrides go before --ratios, which takes every number after it)

Rows at ratio < 1 mix paired and unpaired samples (Eq. 9 with method.lambda_unpaired). A ratio at which
no training row is paired (possible on a small data set: pairing is a per-slice draw, see
bidpm.data.pairing) is reported as skipped, decided from the manifest before training; any other error
stops the ablation and marks its MLflow parent run FAILED.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import job_parser, parse_job_args, run_main  # noqa: E402

if TYPE_CHECKING:
    from bidpm.config import Config


def paired_train_rows(manifest: dict, ratio: float, seed: int) -> int:
    """Training rows that count as paired at ``ratio`` (the same rule as ``read_split``: pair_u < ratio),
    computed from the manifest's per-volume slice indices, without reading any shard."""
    from bidpm.data.pairing import paired_flags

    n = 0
    for f in manifest["files"]:
        if f["split"] == "train":
            slices = manifest["volumes"][f["subject"]]["slices"]
            n += int(paired_flags([f["subject"]] * len(slices), slices, seed, ratio).sum())
    return n


def _plot_png(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("test/ssim_mean") is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("test/fwd_ssim_mean", "forward"), ("test/bwd_ssim_mean", "backward")):
        ax.plot([100 * r["ratio"] for r in ok], [r[key] for r in ok], "o-", label=label)
    ax.set(xscale="log", xlabel="paired rows (%)", ylabel="test SSIM", title="pairing-ratio ablation")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def format_table(rows: list[dict]) -> str:
    head = f"{'paired %':>9} {'lambda_u':>9} {'fwd SSIM':>9} {'bwd SSIM':>9} {'fwd PSNR':>9} {'bwd PSNR':>9}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        f = lambda k: f"{r[k]:9.3f}" if k in r else f"{'-':>9}"  # noqa: E731
        lines.append(f"{100 * r['ratio']:9g} {r['lambda_u']:9.3g} {f('test/fwd_ssim_mean')} {f('test/bwd_ssim_mean')} "
                     f"{f('test/fwd_psnr_mean')} {f('test/bwd_psnr_mean')}  {r['status']}")
    return "\n".join(lines)


def main() -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.1, 0.01], metavar="R",
                        help="pairing ratios to train, fractions of paired training rows in (0, 1] "
                             "(default: 1 0.5 0.1 0.01 = the paper's 100/50/10/1%%)")
    cfg, args = parse_job_args(__doc__, parser=parser)
    bad = [r for r in args.ratios if not 0.0 < r <= 1.0]
    if bad:
        parser.error(f"--ratios: {bad} outside (0, 1]; give fractions, e.g. --ratios 1 0.1")
    from bidpm import tracking
    from bidpm.data.manifest import manifest_digest
    from bidpm.data.shards import load_manifest, prepare_shards
    from bidpm.raycluster import connect_ray

    client = exp_id = None
    if cfg.tracking.enabled:
        client, exp_id = tracking.connect(cfg)
    connect_ray()
    if cfg.data.layout == "phantom":
        prepare_shards(cfg)
    manifest = load_manifest(cfg)
    parent = None
    tags: dict[str, str] = {}
    if client is not None:
        tags = {"bidpm.git_commit": tracking.git_commit(cfg), "bidpm.ray_job_id": tracking.ray_job_id(),
                "bidpm.manifest_digest": manifest_digest(manifest), "bidpm.role": "ablation"}
        parent = client.create_run(exp_id, run_name=f"ablate_pairing-{cfg.name}", tags=tags).info.run_id
        tracking.log_dataset(client, parent, cfg, manifest)
    try:
        rows = [_arm(cfg, manifest, ratio, client, exp_id, parent, tags) for ratio in args.ratios]
        table = format_table(rows)
        print(table)
        _write_outputs(cfg, table, rows, client, parent)
    except BaseException as exc:
        if parent is not None:
            client.set_terminated(parent, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if client is not None:
        client.set_terminated(parent)
        print(tracking.where(cfg))
    return 0


def _arm(cfg: Config, manifest: dict, ratio: float, client: Any, exp_id: Optional[str], parent: Optional[str],
         tags: dict[str, str]) -> dict:
    """Train + test-score one ratio (resumable by its run name); a child MLflow run when tracking."""
    from bidpm import tracking
    from bidpm.train import run_training
    from bidpm.tune.space import apply_to

    pct = f"{100 * ratio:g}"
    rcfg = apply_to(cfg, {"data.pairing_ratio": ratio, "train.run_name": f"{cfg.train.run_name}-pairing{pct}"})
    row: dict = {"ratio": ratio, "lambda_u": rcfg.method.lambda_unpaired if ratio < 1 else 0.0}
    if paired_train_rows(manifest, ratio, rcfg.data.pairing_seed) == 0:
        row["status"] = (f"skipped: no training row is paired at {pct}% (data.pairing_seed={rcfg.data.pairing_seed}); "
                         f"use more data or a higher ratio")
        return row
    result = run_training(rcfg, resume=True)
    best = result.get_best_checkpoint(metric=rcfg.train.checkpoint_score, mode=rcfg.train.checkpoint_score_mode)
    best = best or result.checkpoint
    with best.as_directory() as folder:          # object-store checkpoints are downloaded (path alone has no scheme)
        row.update(tracking.evaluate_checkpoint(folder, rcfg, "test"))
    row["status"] = "ok"
    if client is not None:
        run = client.create_run(exp_id, run_name=f"pairing {pct}%", tags={**tags, "mlflow.parentRunId": parent,
                                                                          "bidpm.role": "ablation_arm"})
        tracking.log_params(client, run.info.run_id, tracking.config_params(rcfg))
        tracking.log_metrics(client, run.info.run_id, {**result.metrics, **row}, step=int(result.metrics.get("epoch", 0)))
        client.set_terminated(run.info.run_id)
    return row


def _write_outputs(cfg: Config, table: str, rows: list[dict], client: Any, parent: Optional[str]) -> None:
    """table.txt and the plot under output_dir/ablate_pairing (atomic writes), and on the parent run."""
    from bidpm.data.storage import write_bytes_atomic

    out_dir = Path(cfg.output_dir).resolve() / "ablate_pairing"
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path, plot_path = out_dir / "table.txt", out_dir / "ablate_pairing.png"
    write_bytes_atomic(str(table_path), (table + "\n").encode())
    write_bytes_atomic(str(plot_path), _plot_png(rows))
    print(f"table: {table_path}\nplot:  {plot_path}")
    if client is not None:
        client.log_text(parent, table, "ablation/table.txt")
        client.log_artifact(parent, str(plot_path), "ablation")


if __name__ == "__main__":
    run_main(main)
