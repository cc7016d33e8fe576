"""Pairing-ratio ablation: train the same config at 100/50/10/1% paired rows over ONE set of shards
(pairing is decided when shards are read), score each on the test split in both directions, and print
a table + plot; every ratio is an MLflow run nested under one parent.

    python jobs/ablate_pairing.py --config configs/ablate_pairing_brain.yaml [key=value ...] [--ratios 1 0.5 0.1 0.01]

(overrides go before --ratios, which takes every number after it)

Rows at ratio < 1 mix paired and unpaired samples (Eq. 9 with method.lambda_unpaired). A ratio at which
no training row is paired (possible on a small data set: pairing is a per-slice draw, see
bidpm.data.pairing) is reported as skipped, decided from the manifest before training; any other error
stops the ablation and marks its MLflow parent run FAILED. Scores: bidpm.evaluation on the test split
(evaluation.scale), from the best checkpoint of each run by train.checkpoint_score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ..cli import command_parser, parse_job_args
from ..config import Config


def paired_train_rows(manifest: dict, ratio: float, seed: int) -> int:
    """Training rows that count as paired at ``ratio`` (the same rule as ``read_split``: pair_u < ratio),
    computed from the manifest's per-volume slice indices, without reading any shard."""
    from ..data.pairing import paired_flags

    n = 0
    for f in manifest["files"]:
        if f["split"] == "train":
            slices = manifest["volumes"][f["subject"]]["slices"]
            n += int(paired_flags([f["subject"]] * len(slices), slices, seed, ratio).sum())
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "ablate_pairing")
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.1, 0.01], metavar="R",
                        help="pairing ratios to train, fractions of paired training rows in (0, 1] "
                             "(default: 1 0.5 0.1 0.01 = the paper's 100/50/10/1%%)")
    cfg, args = parse_job_args(parser, argv)
    bad = [r for r in args.ratios if not 0.0 < r <= 1.0]
    if bad:
        parser.error(f"--ratios: {bad} outside (0, 1]; give fractions, e.g. --ratios 1 0.1")
    return run_ablation(cfg, args.ratios)


def run_ablation(cfg: Config, ratios: Sequence[float]) -> int:
    """Every ratio trained (resumable by run name) and test-scored; table, plot and MLflow runs."""
    from .. import tracking
    from ..data.manifest import load_manifest, manifest_digest
    from ..data.shards import prepare_shards
    from ..raycluster import connect_ray

    client = exp_id = parent = None
    if cfg.tracking.enabled:
        client, exp_id = tracking.connect(cfg)
    connect_ray()
    prepare_shards(cfg)
    manifest = load_manifest(cfg)
    tags: dict[str, str] = {}
    if client is not None:
        tags = {"bidpm.git_commit": tracking.git_commit(cfg), "bidpm.ray_job_id": tracking.ray_job_id(),
                "bidpm.manifest_digest": manifest_digest(manifest), "bidpm.role": "ablation"}
        parent = client.create_run(exp_id, run_name=f"ablate_pairing-{cfg.name}", tags=tags).info.run_id
        tracking.log_dataset(client, parent, cfg, manifest)
    try:
        rows = [_arm(cfg, manifest, ratio, client, exp_id, parent, tags) for ratio in ratios]
        _write_outputs(cfg, rows, client, parent)
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
    """Train + test-score one ratio; a child MLflow run when tracking."""
    from .. import tracking
    from ..evaluation import evaluate_split
    from ..train.launch import best_checkpoint, run_training
    from ..trained import TrainedModel, pick_device
    from ..tune.space import apply_to

    pct = f"{100 * ratio:g}"
    rcfg = apply_to(cfg, {"data.pairing_ratio": ratio, "train.run_name": f"{cfg.train.run_name}-pairing{pct}"})
    row: dict = {"ratio": ratio, "lambda_u": rcfg.method.lambda_unpaired if ratio < 1 else 0.0}
    if paired_train_rows(manifest, ratio, rcfg.data.pairing_seed) == 0:
        row["status"] = (f"skipped: no training row is paired at {pct}% (data.pairing_seed={rcfg.data.pairing_seed}); "
                         f"use more data or a higher ratio")
        return row
    result = run_training(rcfg, resume=True)
    with best_checkpoint(result, rcfg).as_directory() as folder:   # object-store checkpoints are downloaded
        model = TrainedModel.from_checkpoint(folder, pick_device(rcfg.evaluation.device))
    row.update(evaluate_split(model, rcfg, "test").summary())
    row["status"] = "ok"
    print(f"pairing {pct}%: test SSIM fwd {row['test/fwd_ssim_mean']:.4f} bwd {row['test/bwd_ssim_mean']:.4f}", flush=True)
    if client is not None:
        run = client.create_run(exp_id, run_name=f"pairing {pct}%", tags={**tags, tracking.TAG_PARENT: parent,
                                                                          "bidpm.role": "ablation_arm"})
        tracking.log_params(client, run.info.run_id, tracking.config_params(rcfg))
        tracking.log_metrics(client, run.info.run_id, {**result.metrics, **row}, step=int(result.metrics.get("epoch", 0)))
        client.set_terminated(run.info.run_id)
    return row


def _write_outputs(cfg: Config, rows: list[dict], client: Any, parent: Optional[str]) -> None:
    """table.txt and the plot under output_dir/ablate_pairing (atomic writes), and on the parent run."""
    from ..report import format_ablation_table, plot_ablation, write_atomic

    table = format_ablation_table(rows, "test", cfg.evaluation.scale)
    print(table)
    out_dir = Path(cfg.output_dir).resolve() / "ablate_pairing"
    table_path = write_atomic(out_dir / "table.txt", (table + "\n").encode())
    plot_path = write_atomic(out_dir / "ablate_pairing.png", plot_ablation(rows, "test", cfg.evaluation.scale))
    print(f"table: {table_path}\nplot:  {plot_path}")
    if client is not None:
        client.log_text(parent, table, "ablation/table.txt")
        client.log_artifact(parent, str(plot_path), "ablation")
