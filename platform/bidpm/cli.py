"""The command-line front shared by every job: ``bidpm JOB ...`` and ``python jobs/JOB.py ...``.

Every job takes ``--config FILE`` plus ``key=value`` overrides (``train.epochs=3``,
``method.time_grid=[0,0.5,1]``); values parse as YAML. The config is validated once, here. Each job's
code is ``bidpm.commands.<job>.main``, so the ``bidpm`` console command works from an installed wheel;
``jobs/*.py`` are the same mains for ``ray job submit`` from a checkout.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import signal
import sys
from typing import Any, Callable, Optional, Sequence

from .config import Config, ConfigError, load_config

OVERRIDES_HELP = (
    "key=value overrides applied on top of the YAML, e.g. train.epochs=3 method.time_grid=[0,0.5,1] "
    "data.pairing_ratio=0.1; values parse as YAML"
)
JOBS = {
    "prepare_data": "NIfTI volumes (or phantoms) -> Parquet slice shards + manifest (Ray Data)",
    "train": "train one model with Ray Train (resumes by train.run_name)",
    "tune_steps": "the main job: Ray Tune + Optuna study, MLflow runs, registry promotion",
    "study": "methods x pairing ratios x seeds as parallel Tune trials, with the paper's tables and figures",
    "ablate_pairing": "pairing-ratio ablation (100/50/10/1% paired) of one method: a preset of study",
    "evaluate": "score a model on a split at several step counts (paper Fig. 7), volumes (Table 5)",
    "synthesize": "synthesise NIfTI volumes of the other modality",
    "promote": "challenger vs champion on the test split; move the champion alias",
    "plan": "a training step's GPU memory per worker for a config, and whether it fits (no GPU needed)",
}


def job_parser(description: str, epilog: Optional[str] = None, overrides_help: str = OVERRIDES_HELP,
               prog: Optional[str] = None) -> argparse.ArgumentParser:
    """Parser with the options every job shares; a job adds its own before ``parse_job_args``."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", default=None, help="experiment YAML under configs/ (default: embedded defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    return p


def command_parser(doc: str, job: str, overrides_help: str = OVERRIDES_HELP) -> argparse.ArgumentParser:
    """``job_parser`` from a command module's docstring: first paragraph = description, rest = epilog."""
    description, _, epilog = doc.partition("\n\n")
    return job_parser(description, epilog=epilog or None, overrides_help=overrides_help, prog=f"bidpm {job}")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--model-uri`` or ``--nfe``: the model a job loads (``load_model_arg``)."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="training checkpoint folder (holds state.pt)")
    which.add_argument("--model-uri", help="registered/logged model, e.g. models:/bidpm@champion")
    which.add_argument("--nfe", type=int, metavar="K",
                       help="the registered model serving K Euler steps: models:/<tracking.registered_model_name>@champion-nfeK "
                       "(set by a multi-objective search, tune.objectives)")


def parse_job_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> tuple[Config, argparse.Namespace]:
    """Parse ``--config`` + overrides into a validated Config; config errors exit 2 with the message."""
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    return cfg, args


def load_model_arg(args: argparse.Namespace, cfg: Config, device: str) -> "Any":
    """The ``TrainedModel`` a job's ``--checkpoint`` or ``--model-uri`` names, on ``device``, accelerated by
    ``evaluation.*``. A config or data overrides on the command line must describe the same data as the
    model (``trained.check_compatible``)."""
    from .trained import TrainedModel, check_compatible

    if args.checkpoint:
        model = TrainedModel.from_checkpoint(args.checkpoint, device)
    else:
        from .tracking.pyfunc import load_model

        model = load_model(str(args.model_uri or budget_uri(cfg, args.nfe)), cfg, device)
    if config_given(args):
        check_compatible(model.cfg, cfg, model.origin)
    return model.accelerate(cfg)


def budget_uri(cfg: Config, nfe: int) -> str:
    """``models:/<name>@champion-nfe<K>``: the champion of step budget K (``tracking.budgets``)."""
    if nfe < 1:
        raise ConfigError(f"--nfe {nfe}: a step budget is >= 1 Euler step")
    return f"models:/{cfg.tracking.registered_model_name}@champion-nfe{nfe}"


def config_given(args: argparse.Namespace) -> bool:
    """Did the user name a config or data settings (which must then match a loaded model's)?"""
    return args.config is not None or any(o.startswith("data.") for o in args.overrides)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (one line, exit 2); modules are looked up only if loaded (one that
    raised is loaded; importing them here would pull torch into every job's start, --help included)."""
    errs: list[type[BaseException]] = [ConfigError]
    for mod, name in (("bidpm.data.manifest", "DataError"), ("bidpm.tracking.store", "TrackingError"),
                      ("bidpm.synthesis", "SynthesisError"), ("bidpm.io.nifti_guard", "NiftiError"),
                      ("bidpm.io.lease", "FolderBusy")):
        if mod in sys.modules:
            errs.append(getattr(sys.modules[mod], name))
    return tuple(errs)


# EX_TEMPFAIL (sysexits.h): the job stopped for a reason outside it (the tracking server went away, the
# cluster has no resources free) and kept its state; the same command, rerun later, resumes.
EXIT_RESUMABLE = 75


def _resumable_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = []
    for mod, name in (("bidpm.tracking.store", "TrackingUnavailable"), ("bidpm.tune.watchdog", "StudyStalled")):
        if mod in sys.modules:
            errs.append(getattr(sys.modules[mod], name))
    return tuple(errs)


def rerun_command(argv: Optional[Sequence[str]] = None) -> str:
    """The command line that started this job (what resumes it), shell-quoted, secret overrides redacted
    (``config.loader.SECRET_KEYS``: give them again, through the environment)."""
    from .config.loader import redact

    args = list(sys.argv if argv is None else argv)
    prog = args[0] if args else "bidpm"
    head = ["python", prog] if prog.endswith(".py") else [prog]
    return shlex.join(head + [redact(a) for a in args[1:]])


def run_main(main: Callable[..., Optional[int]], argv: Optional[Sequence[str]] = None) -> None:
    """Run a job's main. Known user errors: one line ``error: ...``, exit 2. Resumable stops (tracking
    server gone, study stalled): the message and the command that resumes, exit 75. Ctrl+C / SIGTERM: exit
    130 with the same command. Anything else is a bug: its traceback, exit 1. The MLflow runs a job opened
    are ended (FAILED / KILLED) by the job itself on every path (``tune.experiment.ExperimentRuns``)."""
    try:
        code = main(argv)
    except KeyboardInterrupt as exc:
        print(f"interrupted{': ' + str(exc) if str(exc) else ''}; rerun the same command to resume: {rerun_command()}",
              file=sys.stderr)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == signal.SIGTERM:         # Ray's driver handler turns SIGTERM (`ray job stop`) into sys.exit(15)
            print(f"terminated (SIGTERM); rerun the same command to resume: {rerun_command()}", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)
        raise
    except Exception as exc:  # noqa: BLE001 - filtered to user errors just below
        if isinstance(exc, _resumable_errors()):
            print(f"error: {str(exc).strip()}. To resume, rerun the same command: {rerun_command()}", file=sys.stderr)
            sys.exit(EXIT_RESUMABLE)
        failed = sys.modules.get("bidpm.tune.experiment")
        if failed is not None and isinstance(exc, failed.ExperimentFailed):   # ran, nothing usable: where to look
            print(f"error: {str(exc).strip()}", file=sys.stderr)
            sys.exit(1)
        if not isinstance(exc, _user_errors()):
            raise
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``bidpm JOB [args]``: the job's ``bidpm.commands.<job>.main`` (no checkout needed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in JOBS:
        width = max(map(len, JOBS))
        print("usage: bidpm JOB [--config FILE] [key=value ...]\n\njobs:")
        for job, what in JOBS.items():
            print(f"  {job.ljust(width)}  {what}")
        print("\neach job explains itself with: bidpm JOB --help")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown job {argv[0]!r}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    run_main(importlib.import_module(f"bidpm.commands.{argv[0]}").main, argv[1:])
