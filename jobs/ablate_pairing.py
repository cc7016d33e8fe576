"""Pairing-ratio ablation: train the same config at 100/50/10/1% paired rows over ONE set of shards
(pairing is decided when shards are read), score each on the test split in both directions, and print
a table + plot; every ratio is an MLflow run nested under one parent.

    python jobs/ablate_pairing.py --config configs/ablate_pairing_brain.yaml [--ratios 1 0.5 0.1 0.01] [key=value ...]

Rows at ratio < 1 mix paired and unpaired samples (Eq. 9 with method.lambda_unpaired); a ratio with no
paired training row on a small data set is reported as skipped rather than failing the whole ablation.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import job_parser, parse_job_args, run_main  # noqa: E402


def _plot(rows: list[dict], path: Path) -> Path:
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> int:
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.1, 0.01])
    cfg, args = parse_job_args(__doc__, parser=parser)
    from bidpm import tracking
    from bidpm.data.shards import load_manifest, prepare_shards
    from bidpm.train import run_training
    from bidpm.tune.launch import connect_ray
    from bidpm.tune.space import apply_to

    client = None
    if cfg.tracking.enabled:
        client, exp_id = tracking.connect(cfg)
    connect_ray()
    if cfg.data.layout == "phantom":
        prepare_shards(cfg)
    manifest = load_manifest(cfg)
    parent = None
    if client is not None:
        tags = {"bidpm.git_commit": tracking.git_commit(Path(__file__).parent), "bidpm.ray_job_id": tracking.ray_job_id(),
                "bidpm.manifest_digest": tracking.manifest_digest(manifest), "bidpm.role": "ablation"}
        parent = client.create_run(exp_id, run_name=f"ablate_pairing-{cfg.name}", tags=tags).info.run_id
        tracking.log_dataset(client, parent, cfg, manifest)
    rows = []
    for ratio in args.ratios:
        pct = f"{100 * ratio:g}"
        rcfg = apply_to(cfg, {"data.pairing_ratio": ratio, "train.run_name": f"{cfg.train.run_name}-pairing{pct}"})
        row: dict = {"ratio": ratio, "lambda_u": rcfg.method.lambda_unpaired if ratio < 1 else 0.0}
        try:
            result = run_training(rcfg, resume=True)
        except ValueError as exc:                       # e.g. no paired training row at this ratio
            row["status"] = f"skipped: {str(exc).splitlines()[0]}"
            rows.append(row)
            continue
        best = result.get_best_checkpoint(metric=rcfg.train.checkpoint_score, mode=rcfg.train.checkpoint_score_mode)
        best = best or result.checkpoint
        row.update(tracking.evaluate_checkpoint(best.path, rcfg, "test"))
        row["status"] = "ok"
        rows.append(row)
        if client is not None:
            run = client.create_run(exp_id, run_name=f"pairing {pct}%", tags={**tags, "mlflow.parentRunId": parent,
                                                                              "bidpm.role": "ablation_arm"})
            tracking.log_params(client, run.info.run_id, tracking.config_params(rcfg))
            tracking.log_metrics(client, run.info.run_id, {**result.metrics, **row}, step=int(result.metrics.get("epoch", 0)))
            client.set_terminated(run.info.run_id)
    head = f"{'paired %':>9} {'lambda_u':>9} {'fwd SSIM':>9} {'bwd SSIM':>9} {'fwd PSNR':>9} {'bwd PSNR':>9}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        f = lambda k: f"{r[k]:9.3f}" if k in r else f"{'-':>9}"  # noqa: E731
        lines.append(f"{100 * r['ratio']:9g} {r['lambda_u']:9.3g} {f('test/fwd_ssim_mean')} {f('test/bwd_ssim_mean')} "
                     f"{f('test/fwd_psnr_mean')} {f('test/bwd_psnr_mean')}  {r['status']}")
    table = "\n".join(lines)
    print(table)
    out_dir = Path(cfg.output_dir).resolve() / "ablate_pairing"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.txt").write_text(table + "\n")
    plot = _plot(rows, out_dir / "ablate_pairing.png")
    print(f"table: {out_dir / 'table.txt'}\nplot:  {plot}")
    if client is not None:
        client.log_text(parent, table, "ablation/table.txt")
        client.log_artifact(parent, str(plot), "ablation")
        client.set_terminated(parent)
        print(tracking.where(cfg))
    return 0


if __name__ == "__main__":
    run_main(main)
