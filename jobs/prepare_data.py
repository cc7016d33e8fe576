"""Turn NIfTI volumes (or generated phantoms) into Parquet slice shards + manifest.json (Ray Data).

    python jobs/prepare_data.py --config configs/quickstart.yaml
    python jobs/prepare_data.py --config configs/brats_t1t2.yaml data.root=/data/BraTS2021 data.skip_bad=true

Idempotent: the same inputs and data settings return the existing manifest; changed settings or
inputs write a new version folder under data.shards_dir. Connects to the Ray cluster named by
RAY_ADDRESS (or the job's cluster under `ray job submit`), otherwise starts a local Ray; the bidpm
package is shipped to every worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import parse_job_args, run_main  # noqa: E402
from bidpm.data.manifest import DataError  # noqa: E402

OVERRIDES_HELP = (
    "key=value overrides applied on top of the YAML, e.g. data.root=/data/BraTS2021 data.skip_bad=true "
    "data.image_size=[128,128]; values parse as YAML"
)


def main() -> int:
    cfg, _ = parse_job_args(__doc__, overrides_help=OVERRIDES_HELP)
    from bidpm.data import load_manifest, prepare_shards
    from bidpm.raycluster import connect_ray

    connect_ray()
    try:
        path = prepare_shards(cfg)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = load_manifest(cfg)
    counts = ", ".join(f"{s} {v['subjects']} subjects / {v['slices']} slices" for s, v in m["splits"].items())
    print(f"manifest: {path}\n{counts}; skipped {len(m['skipped'])}; content digest {m['content_digest'][:12]}")
    for s in m["skipped"]:
        print(f"  skipped {s['subject']}: {s['kind']} ({s['role']}): {s['problem']}")
    return 0


if __name__ == "__main__":
    run_main(main)
