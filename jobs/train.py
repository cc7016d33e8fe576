"""Train one model with Ray Train: ``python jobs/train.py --config configs/quickstart.yaml [key=value ...]``.

Rerunning the same command (same ``train.run_name``) continues from the run's latest checkpoint;
``--restart`` starts the run over. Connects to the Ray cluster named by RAY_ADDRESS (or the job's
cluster under `ray job submit`), else starts a local Ray; the bidpm package is shipped to every
worker. Phantom shards are generated on first use.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import job_parser, parse_job_args, run_main  # noqa: E402


def main() -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--restart", action="store_true", help="delete the run folder and train from scratch")
    cfg, args = parse_job_args(__doc__, parser=parser)
    from bidpm.data.shards import prepare_shards
    from bidpm.raycluster import connect_ray
    from bidpm.train import run_training
    from bidpm.tune.checkpoints import checkpoint_location

    connect_ray(log_to_driver=True)          # the training loop's progress lines are the job's output
    if cfg.data.layout == "phantom":
        prepare_shards(cfg)  # idempotent: builds the phantom shards once
    result = run_training(cfg, resume=not args.restart)
    best = result.get_best_checkpoint(metric=cfg.train.checkpoint_score, mode=cfg.train.checkpoint_score_mode)
    print(json.dumps({k: v for k, v in result.metrics.items() if k.startswith(("epoch", "step", "val/", "train/loss"))}, indent=2))
    where = lambda p: checkpoint_location(p, cfg.storage_path)  # noqa: E731 - Ray drops s3:// / gs://
    print(f"run folder:        {where(result.path)}")
    print(f"latest checkpoint: {where(result.checkpoint.path) if result.checkpoint else None}")
    print(f"best checkpoint:   {where(best.path) if best else None}  ({cfg.train.checkpoint_score}, {cfg.train.checkpoint_score_mode})")
    return 0


if __name__ == "__main__":
    run_main(main)
