"""Promote a registered model version by hand: score it and the current champion on the TEST split
(both directions) and move alias `champion` only if it wins by tracking.promote_metric (ties keep the
champion). The decision and both scores are printed and recorded as version tags.

    python jobs/promote.py --config configs/quickstart.yaml --version 3
    python jobs/promote.py --config configs/quickstart.yaml --alias challenger
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import job_parser, parse_job_args, run_main  # noqa: E402


def main() -> int:
    parser = job_parser(__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="registered model version to consider")
    which.add_argument("--alias", help="or the version carrying this alias (e.g. challenger)")
    cfg, args = parse_job_args(__doc__, parser=parser)
    from bidpm import tracking
    from bidpm.raycluster import connect_ray

    try:
        client, _ = tracking.connect(cfg)
        name = cfg.tracking.registered_model_name
        version = args.version or tracking.alias_version(client, name, args.alias)
        if version is None:
            raise tracking.TrackingError(f"registered model {name!r} has no version with alias {args.alias!r}")
        tracking.check_registry(client, cfg)
        connect_ray()                        # the test split is read with Ray Data
        decision = tracking.promote(client, cfg, version)
    except tracking.TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(decision.describe())
    print(tracking.where(cfg))
    return 0


if __name__ == "__main__":
    run_main(main)
