"""What a job checks before any work starts: before Ray, data, or an MLflow run.

Config values are validated at load (``bidpm.config``: metric names, batch size vs pairing, tracking
URI schemes). What depends on the machine or on which job runs is checked here, from the config alone,
in milliseconds:

- every local location the job writes (output_dir, data.shards_dir, train.storage_path, the phantom
  folder, the SQLite tracking store) can be created and written: a probe file is written and removed,
  which also catches read-only mounts where the permission bits allow writing (and root, for whom
  ``chmod`` stops nothing). Object-store URIs are checked where they are first written;
- a training job has a validation split (every epoch is scored on it) and, where the test split is
  scored (studies, promotion), a test split.

Each problem is one clause naming the setting and its fix; all of them are raised together as one
``ConfigError`` (one line, exit 2). Without these checks the same mistakes surfaced minutes in, as
tracebacks, with the study's MLflow run left RUNNING.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from .config import Config, ConfigError

TRAINING_JOBS = ("train", "tune_steps", "study", "ablate_pairing")


def _first_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def writable_problem(location: str) -> Optional[str]:
    """Why ``location`` (a local folder, created if missing) cannot be written, or None."""
    p = Path(location)
    anc = _first_existing(p)
    if anc.exists() and not anc.is_dir():
        return f"{anc} is a file, not a folder"
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".bidpm-write-probe-") as f:
            f.write(b"ok")
            f.flush()
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return None


def _local(location: str) -> Optional[str]:
    """The local path of a location (``file://`` included); None for object-store URIs."""
    if location.startswith("file://"):
        return location[len("file://"):]
    return None if "://" in location else location


def locations(cfg: Config, job: str) -> list[tuple[str, str]]:
    """(setting, local folder) pairs the job writes, output_dir first."""
    out: list[tuple[str, str]] = [("output_dir", cfg.output_dir)]
    if job in TRAINING_JOBS or job == "prepare_data":
        out.append(("data.shards_dir", cfg.shards_path))
        root = cfg.resolve_path(cfg.data.root or "phantoms")
        if cfg.data.layout == "phantom" and not (os.path.isdir(root) and os.listdir(root)):   # generated on first use
            out.append(("data.root" if cfg.data.root else "output_dir (phantoms)", root))
    if job in TRAINING_JOBS:
        out.append(("train.storage_path", cfg.storage_path))
    uri = cfg.mlflow_uri
    if cfg.tracking.enabled and job in ("tune_steps", "study", "ablate_pairing", "promote") and uri.startswith("sqlite:///"):
        out.append(("tracking store (tracking.tracking_uri)", str(Path(uri.removeprefix("sqlite:///")).parent)))
    return [(name, path) for name, loc in out if (path := _local(loc)) is not None]


def location_problems(cfg: Config, job: str) -> list[str]:
    """One clause per location that cannot be written (a location under a failed one is not repeated)."""
    problems: list[str] = []
    failed: list[str] = []
    for name, path in locations(cfg, job):
        if any(os.path.commonpath([os.path.abspath(path), f]) == f for f in failed):
            continue
        why = writable_problem(path)
        if why is None:
            continue
        failed.append(os.path.abspath(path))
        fix = ("set output_dir=... to a writable folder (relative data.shards_dir, train.storage_path and the SQLite "
               "store resolve under it)" if name == "output_dir" else f"set {name.split(' ')[0]} to a writable location")
        problems.append(f"{name} {path}: {why}; fix: {fix}")
    return problems


def split_problems(cfg: Config, job: str) -> list[str]:
    """A training job needs a validation split; studies and promotion score the test split."""
    sp = cfg.data.split
    explicit = any(v is not None for v in (sp.train_subjects, sp.val_subjects, sp.test_subjects))
    out = []
    if not sp.val_subjects and (explicit or sp.val_fraction == 0):
        why = "subject lists are given but data.split.val_subjects is not" if explicit else "data.split.val_fraction=0"
        out.append(f"the validation split is empty ({why}); every epoch is scored on it (tune.metric, "
                   f"train.checkpoint_score), so set data.split.val_fraction > 0 (e.g. 0.1) or list data.split.val_subjects")
    scores_test = job in ("study", "ablate_pairing") or (job == "tune_steps" and cfg.tracking.enabled and cfg.tracking.register_best)
    if scores_test and not sp.test_subjects and (explicit or sp.test_fraction == 0):
        why = "subject lists are given but data.split.test_subjects is not" if explicit else "data.split.test_fraction=0"
        out.append(f"the test split is empty ({why}); {'the study scores' if job != 'tune_steps' else 'promotion scores'} "
                   f"every model on it, so set data.split.test_fraction > 0 or list data.split.test_subjects"
                   + (" (or tracking.register_best=false)" if job == "tune_steps" else ""))
    return out


def phantom_root_problem(cfg: Config, job: str) -> list[str]:
    """``data.layout=phantom`` into a folder that holds other files and no phantoms marker: phantoms are
    never written over them (``data.phantom.write_phantoms`` refuses too; here it is said before Ray)."""
    if cfg.data.layout != "phantom" or (job not in TRAINING_JOBS and job != "prepare_data"):
        return []
    root = _local(cfg.resolve_path(cfg.data.root or "phantoms"))
    if root is None or not os.path.isdir(root) or not os.listdir(root) or os.path.exists(os.path.join(root, "phantoms.json")):
        return []
    return [f"data.layout=phantom: data.root {root} holds other files and no phantoms.json, so phantoms would be "
            f"written over them; fix: leave data.root unset (phantoms go to <output_dir>/phantoms) or point it at an "
            f"empty folder"]


def check_job(cfg: Config, job: str) -> None:
    """Raise one ``ConfigError`` listing every problem ``job`` would hit with ``cfg`` (see module docstring)."""
    problems = ((split_problems(cfg, job) if job in TRAINING_JOBS else []) + phantom_root_problem(cfg, job)
                + location_problems(cfg, job))
    if problems:
        raise ConfigError(f"{job}: " + "; ".join(problems) + ". Nothing was run")


# What an OSError of a full, read-only or replaced location says (errno text, pyarrow's wording).
_WRITE_ERRORS = ("No space left on device", "Read-only file system", "Permission denied", "Not a directory",
                 "File exists", "Disk quota exceeded", "Cannot create directory", "Is a directory")


def storage_failure(exc: BaseException, setting: str, location: str) -> Optional[str]:
    """The one-line message for a run that failed because ``location`` (``setting``) could not be written
    mid-run (a full disk, a mount gone read-only, a folder replaced by a file), else None.

    Ray wraps the worker's OSError in its own errors, with the traceback as text: the first line naming a
    write error is what the user needs, with the location and what to do."""
    text = f"{exc!r}\n{exc}"
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        text += f"\n{cause!r}"
        cause = cause.__cause__ or cause.__context__
    lines = [ln.strip() for ln in text.splitlines() if any(w in ln for w in _WRITE_ERRORS)]
    if not lines:
        return None
    return (f"cannot write under {setting} {location} ({lines[-1][:300]}); the last complete checkpoint is kept and "
            f"nothing partial is used. Fix: free space there or make it writable (or set {setting} to another "
            f"location), then rerun the same command to resume from the last complete checkpoint")
