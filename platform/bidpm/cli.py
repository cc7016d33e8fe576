"""Shared command-line front for ``jobs/*.py`` and the ``bidpm`` entry point.

Every job takes ``--config FILE`` plus ``key=value`` overrides (``train.epochs=3``,
``method.time_grid=[0,0.5,1]``); values parse as YAML. The config is validated once, here.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from .config import Config, ConfigError, load_config

OVERRIDES_HELP = (
    "key=value overrides applied on top of the YAML, e.g. train.epochs=3 method.time_grid=[0,0.5,1] "
    "data.pairing_ratio=0.1; values parse as YAML"
)


def job_parser(description: str, epilog: Optional[str] = None, overrides_help: str = OVERRIDES_HELP) -> argparse.ArgumentParser:
    """Parser with the options every job shares; a job may add its own before ``parse_job_args``.

    ``overrides_help``: the positional overrides' help, for jobs whose relevant keys are not ``train.*``.
    """
    p = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", default=None, help="experiment YAML under configs/ (default: embedded defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    return p


def parse_job_args(
    description: str,
    argv: Optional[Sequence[str]] = None,
    parser: Optional[argparse.ArgumentParser] = None,
    overrides_help: str = OVERRIDES_HELP,
) -> tuple[Config, argparse.Namespace]:
    """Parse ``--config`` + overrides into a validated Config; config errors exit 2 with the message.

    ``overrides_help`` is used only when no ``parser`` is given (see ``job_parser``).
    """
    parser = parser or job_parser(description, overrides_help=overrides_help)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    return cfg, args


def run_main(main: Callable[[], int | None]) -> None:
    """Run a job's main; turn known user errors into one clear line and exit status 2."""
    try:
        code = main()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


JOBS = ("prepare_data", "train", "tune_steps", "ablate_pairing", "evaluate", "synthesize", "promote")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``bidpm JOB [args]``: the same scripts as ``python jobs/JOB.py`` (run from a checkout)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in JOBS:
        print("usage: bidpm {" + ",".join(JOBS) + "} [--config FILE] [key=value ...]")
        print("each job explains itself with: bidpm JOB --help")
        sys.exit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    script = Path(__file__).resolve().parents[2] / "jobs" / f"{argv[0]}.py"
    if not script.is_file():
        print(f"error: {script} not found; the bidpm command runs jobs from a source checkout", file=sys.stderr)
        sys.exit(2)
    sys.argv = [str(script)] + argv[1:]
    runpy.run_path(str(script), run_name="__main__")
