"""Promote a registered model version by hand: score it and the current champion on the TEST split
(both directions) and move alias `champion` only if it wins by tracking.promote_metric (ties keep the
champion). The decision and both scores are printed and recorded as version tags. No Ray: the test
split is read with pyarrow (bidpm.data.readers.iter_split).

    python jobs/promote.py --config configs/quickstart.yaml --version 3
    python jobs/promote.py --config configs/quickstart.yaml --alias challenger
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..cli import command_parser, parse_job_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "promote")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="registered model version to consider")
    which.add_argument("--alias", help="or the version carrying this alias (e.g. challenger)")
    cfg, args = parse_job_args(parser, argv)
    from ..prechecks import check_job

    check_job(cfg, "promote")                # the SQLite store's folder: before MLflow
    from .. import tracking

    client, _ = tracking.connect(cfg)
    name = cfg.tracking.registered_model_name
    version = args.version or tracking.alias_version(client, name, args.alias)
    if version is None:
        raise tracking.TrackingError(f"registered model {name!r} has no version with alias {args.alias!r}")
    tracking.check_registry(client, cfg)
    decision = tracking.promote(client, cfg, version)
    print(decision.describe())
    print(tracking.where(cfg))
    return 0
