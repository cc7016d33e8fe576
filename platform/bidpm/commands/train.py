"""Train one model with Ray Train: ``python jobs/train.py --config configs/quickstart.yaml [key=value ...]``.

Rerunning the same command (same ``train.run_name``) continues from the run's latest checkpoint;
``--restart`` starts the run over. Shards are built on first use. Connects to the Ray cluster named by
RAY_ADDRESS (or the job's cluster under `ray job submit`), else starts a local Ray; the bidpm package
is shipped to every worker.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from ..cli import command_parser, parse_job_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "train")
    parser.add_argument("--restart", action="store_true", help="delete the run folder and train from scratch")
    cfg, args = parse_job_args(parser, argv)
    from ..prechecks import check_job, storage_failure

    check_job(cfg, "train")                  # writable locations, a validation split: before Ray or data
    from ..data.manifest import DataError
    from ..data.shards import prepare_shards
    from ..raycluster import connect_ray
    from ..io.checkpoints import checkpoint_location
    from ..raycluster.resources import check_fits, check_gpu_memory
    from ..train.launch import best_checkpoint, checked_datasets, run_training

    connect_ray(log_to_driver=True)          # the training loop's progress lines are the job's output
    check_fits(cfg, with_trial=False)        # on a fixed cluster Ray Train would wait for workers forever
    check_gpu_memory(cfg, "train")           # a step that cannot fit its GPU: refused with the fixes, before data
    prepare_shards(cfg)
    datasets = checked_datasets(cfg)         # too few rows for one step, no paired row: one line, not a traceback
    try:
        result = run_training(cfg, resume=not args.restart, datasets=datasets)
    except Exception as exc:  # noqa: BLE001 - a storage fault becomes one line; anything else is re-raised
        msg = storage_failure(exc, "train.storage_path", cfg.storage_path)
        if msg is None:
            raise
        raise DataError(msg) from None
    best = best_checkpoint(result, cfg)
    print(json.dumps({k: v for k, v in result.metrics.items() if k.startswith(("epoch", "step", "val/", "train/loss"))}, indent=2))
    where = lambda p: checkpoint_location(p, cfg.storage_path)  # noqa: E731 - Ray drops s3:// / gs://
    print(f"run folder:        {where(result.path)}")
    print(f"latest checkpoint: {where(result.checkpoint.path) if result.checkpoint else None}")
    print(f"best checkpoint:   {where(best.path) if best else None}  ({cfg.train.checkpoint_score}, {cfg.train.checkpoint_score_mode})")
    return 0
