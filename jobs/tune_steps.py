"""Search Bi-DPM's time grid, step weights, lambda_u and MMD kernel with Ray Tune + Optuna; track every
trial in MLflow; register the best model and promote it if it beats the champion on the test split.

    python jobs/tune_steps.py --config configs/quickstart.yaml [key=value ...]         # local Ray, SQLite MLflow
    ray job submit --working-dir . -- python jobs/tune_steps.py --config configs/<x>.yaml   # on a cluster

Rerunning the same command (same tune.experiment_name) resumes an interrupted study and reports a
finished one without rerunning it. Phantom data (data.layout=phantom) is generated and sharded on
first use. Connects to the Ray cluster named by RAY_ADDRESS (or the job's cluster), else starts a
local Ray; the bidpm package is shipped to every worker in the runtime env (by the job's runtime env
under `ray job submit`, see bidpm/raycluster.py). Under `ray job submit` the upload has no .git: pass
tracking.git_commit=$(git rev-parse HEAD) to tag the runs with the commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import parse_job_args, run_main  # noqa: E402


def main() -> int:
    cfg, _ = parse_job_args(__doc__)
    from bidpm import tracking
    from bidpm.data.manifest import DataError
    from bidpm.raycluster import connect_ray
    from bidpm.tune.launch import run_study

    if cfg.tracking.enabled:
        try:
            tracking.connect(cfg)            # fail fast: before Ray, data or any trial
        except tracking.TrackingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    connect_ray()
    if cfg.data.layout == "phantom":
        from bidpm.data.shards import prepare_shards

        prepare_shards(cfg)                  # idempotent: phantoms + shards built once
    try:
        result = run_study(cfg)
    except (tracking.TrackingError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(f"study folder:  {result.experiment_dir}")
    if result.best_config_path:
        print(f"best config:   {result.best_config_path}   (python jobs/train.py --config {result.best_config_path})")
    if result.model_version:
        print(f"registered:    {cfg.tracking.registered_model_name} v{result.model_version} (alias challenger"
              f"{', champion' if (result.promotion or {}).get('promoted') else ''})")
    if cfg.tracking.enabled:
        print(tracking.where(cfg))
    return 0


if __name__ == "__main__":
    run_main(main)
