"""Train one model with Ray Train: ``python jobs/train.py --config configs/quickstart.yaml [key=value ...]``.

Rerunning the same command (same ``train.run_name``) continues from the run's latest checkpoint;
``--restart`` starts the run over. Connects to the Ray cluster named by RAY_ADDRESS (or a running
local head), else starts a local Ray. Phantom shards are generated on first use.
"""

from __future__ import annotations

import json

import ray

from bidpm.cli import job_parser, parse_job_args, run_main
from bidpm.data.shards import prepare_shards
from bidpm.train import run_training


def main() -> int:
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--restart", action="store_true", help="delete the run folder and train from scratch")
    cfg, args = parse_job_args(__doc__, parser=parser)
    if not ray.is_initialized():
        ray.init()
    if cfg.data.layout == "phantom":
        prepare_shards(cfg)  # idempotent: builds the phantom shards once
    result = run_training(cfg, resume=not args.restart)
    best = result.get_best_checkpoint(metric=cfg.train.checkpoint_score, mode=cfg.train.checkpoint_score_mode)
    print(json.dumps({k: v for k, v in result.metrics.items() if k.startswith(("epoch", "step", "val/", "train/loss"))}, indent=2))
    print(f"run folder:        {result.path}")
    print(f"latest checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    print(f"best checkpoint:   {best.path if best else None}  ({cfg.train.checkpoint_score}, {cfg.train.checkpoint_score_mode})")
    return 0


if __name__ == "__main__":
    run_main(main)
