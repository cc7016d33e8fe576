"""Search Bi-DPM's time grid, step weights, lambda_u and MMD kernel with Ray Tune + Optuna; track every
trial in MLflow; register the best model and promote it if it beats the champion on the test split.

    python jobs/tune_steps.py --config configs/quickstart.yaml [key=value ...]         # local Ray, SQLite MLflow
    ray job submit --working-dir . -- python jobs/tune_steps.py --config configs/<x>.yaml   # on a cluster

Rerunning the same command (same tune.experiment_name) resumes an interrupted study and reports a
finished one without rerunning it. Shards (phantoms too, for data.layout=phantom) are built on first
use. The console shows a compact live table of the trials; tune.verbose=true shows Ray Tune's own
per-trial output instead. Connects to the Ray cluster named by RAY_ADDRESS (or the job's cluster),
else starts a local Ray; the bidpm package is shipped to every worker in the runtime env (by the
job's runtime env under `ray job submit`, see bidpm/raycluster/connect.py). Under `ray job submit` the upload
has no .git: pass tracking.git_commit=$(git rev-parse HEAD) to tag the runs with the commit.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..cli import command_parser, parse_job_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "tune_steps")
    cfg, _ = parse_job_args(parser, argv)
    from ..prechecks import check_job

    check_job(cfg, "tune_steps")             # writable locations, splits: before MLflow, Ray or data
    from .. import tracking
    from ..raycluster import connect_ray
    from ..raycluster.nodes import NodeTimeline
    from ..search.run import run_search

    if cfg.tracking.enabled:
        tracking.connect(cfg)                # fail fast: before Ray, data or any trial
    connect_ray()
    with NodeTimeline() as nodes:            # on an autoscaling cluster: the nodes the trials brought up
        result = run_search(cfg)
    if nodes.on_cluster:
        print(nodes.format())
    print()
    print(f"study folder:  {result.experiment_dir}")
    if result.best_config_path:
        print(f"best config:   {result.best_config_path}   (python jobs/train.py --config {result.best_config_path})")
    if result.model_version:
        print(f"registered:    {cfg.tracking.registered_model_name} v{result.model_version} (alias challenger"
              f"{', champion' if (result.promotion or {}).get('promoted') else ''})")
    for k, b in ((result.pareto or {}).get("budgets") or {}).items():
        print(f"step budget:   {cfg.tracking.registered_model_name} v{b['version']} = {k} step(s) (alias "
              f"challenger-nfe{k}{', ' + b['alias'] if b['promoted'] else ''}; jobs/synthesize.py --nfe {k})")
    if result.pareto:
        print(f"pareto report: {result.pareto['folder']}")
    if cfg.tracking.enabled:
        print(tracking.where(cfg))
    return 0
