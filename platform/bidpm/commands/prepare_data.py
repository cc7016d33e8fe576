"""Turn NIfTI volumes (or generated phantoms) into Parquet slice shards + manifest.json (Ray Data).

    python jobs/prepare_data.py --config configs/quickstart.yaml
    python jobs/prepare_data.py --config configs/brats_t1t2.yaml data.root=/data/BraTS2021 data.skip_bad=true

Idempotent: the same inputs and data settings return the existing manifest; changed settings or
inputs write a new version folder under data.shards_dir. Training and the study jobs do this
themselves on first use; run it alone to check a data set before any training. Connects to the Ray
cluster named by RAY_ADDRESS (or the job's cluster under `ray job submit`), otherwise starts a local
Ray; the bidpm package is shipped to every worker.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..cli import command_parser, parse_job_args

OVERRIDES_HELP = (
    "key=value overrides applied on top of the YAML, e.g. data.root=/data/BraTS2021 data.skip_bad=true "
    "data.image_size=[128,128]; values parse as YAML"
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "prepare_data", OVERRIDES_HELP)
    cfg, _ = parse_job_args(parser, argv)
    from ..prechecks import check_job

    check_job(cfg, "prepare_data")           # writable locations: before Ray or any volume is read
    from ..data import load_manifest, prepare_shards
    from ..raycluster import connect_ray

    connect_ray()
    path = prepare_shards(cfg)
    m = load_manifest(cfg)
    counts = ", ".join(f"{s} {v['subjects']} subjects / {v['slices']} slices" for s, v in m["splits"].items())
    print(f"manifest: {path}\n{counts}; skipped {len(m['skipped'])}; content digest {m['content_digest'][:12]}")
    from ..data.skipped import skipped_report

    for line in skipped_report(cfg, m):     # original ids and paths: console only, never in the manifest
        print(line)
    return 0
