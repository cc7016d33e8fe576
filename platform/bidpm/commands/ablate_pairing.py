"""Pairing-ratio ablation: the config's own method trained at 100/50/10/1% paired rows over ONE set of
shards (pairing is decided when shards are read), each scored on the test split in both directions.
A preset of ``bidpm study`` (one method row, the config's train.seed, the given ratios), so ratios run
as parallel Ray Tune trials, resume, and produce the study's tables, figures and MLflow runs.

    python jobs/ablate_pairing.py --config configs/ablate_pairing_brain.yaml [key=value ...] [--ratios 1 0.5 0.1 0.01]

(overrides go before --ratios, which takes every number after it)

Rows at ratio < 1 mix paired and unpaired samples (Eq. 9 with method.lambda_unpaired). A ratio at which
no training row is paired (possible on a small data set: pairing is a per-slice draw, see
bidpm.data.pairing) is refused before any training, naming the ratio. For baselines, seeds and
training fractions, write a study: section and run jobs/study.py.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..cli import command_parser, parse_job_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "ablate_pairing")
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.1, 0.01], metavar="R",
                        help="pairing ratios to train, fractions of paired training rows in (0, 1] "
                             "(default: 1 0.5 0.1 0.01 = the paper's 100/50/10/1%%)")
    cfg, args = parse_job_args(parser, argv)
    bad = [r for r in args.ratios if not 0.0 < r <= 1.0]
    if bad:
        parser.error(f"--ratios: {bad} outside (0, 1]; give fractions, e.g. --ratios 1 0.1")
    from . import study

    return study.run(ablation_config(cfg, args.ratios), job="ablate_pairing")


def ablation_config(cfg: Any, ratios: Sequence[float]) -> Any:
    """The study the ablation is: the config's method as the only row, its seed, ``ratios``."""
    from ..config import with_overrides

    m = cfg.method
    label = f"{m.name} N={m.n_steps}" if m.name == "bidpm" else m.name
    row = {"label": label, "name": m.name}
    if m.name == "bidpm":
        row.update(time_grid=list(m.time_grid), step_weights=list(m.step_weights))
    return with_overrides(cfg, {"study.name": f"ablate_pairing-{cfg.name}", "study.methods": [row],
                          "study.pairing_ratios": sorted(set(float(r) for r in ratios), reverse=True),
                          "study.seeds": [cfg.train.seed], "study.train_fractions": [1.0],
                          "study.train_subjects": None})
