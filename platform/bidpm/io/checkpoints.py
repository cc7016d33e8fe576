"""Trial checkpoints as the driver sees them: a location with its storage scheme, and a local copy.

Why: ``ray.tune.integration.ray_train.TuneReportCallback`` forwards ``checkpoint.path`` only, and a
Ray Train checkpoint's ``path`` is relative to its pyarrow filesystem: ``bucket/prefix/...`` for
``s3://`` or ``gs://`` storage, the scheme gone. Read as a local path it does not exist, so the
checkpoint would silently not be logged or registered. ``checkpoint_location`` puts the scheme of
``cfg.storage_path`` (where every trial's Train run is stored) back; ``local_checkpoint`` then gives
a local folder (the folder itself for local storage, a temporary download for an object store) for
MLflow, which logs local files only. No Ray here.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from . import storage


def checkpoint_location(path: str, storage_path: str) -> str:
    """``path`` as reported by Ray Train -> a location ``bidpm.io.storage`` resolves (local path or URI).

    A path that already has a scheme, or storage that is local (a plain path or ``file://``), is
    returned unchanged; otherwise ``<scheme>://<path>`` with the storage URI's query (e.g.
    ``?region=...``) kept, since Ray resolved the filesystem from that same URI.
    """
    if storage.is_uri(path) or not storage.is_uri(storage_path):
        return path
    parts = urlsplit(storage_path)
    if parts.scheme in ("", "file", "local"):
        return path
    return f"{parts.scheme}://{path.lstrip('/')}" + (f"?{parts.query}" if parts.query else "")


@contextlib.contextmanager
def local_checkpoint(location: str) -> Iterator[Path]:
    """A local folder holding the checkpoint at ``location`` for the ``with`` block.

    Local storage: the folder itself (nothing copied). Object store: a recursive download into a
    temporary folder, deleted afterwards. Raises FileNotFoundError naming the location when it is not
    a folder (deleted by retention, or the storage is not reachable from this machine).
    """
    fs, path = storage.resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"checkpoint {location} is not a folder (deleted by train.checkpoint_keep retention, "
                                f"or the storage is not reachable from the driver)")
    if isinstance(fs, pafs.LocalFileSystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="bidpm-ckpt-") as tmp:
        dest = Path(tmp) / Path(path.rstrip("/")).name
        storage.download_dir(location, str(dest))        # creates dest (copy_files alone fails on S3 markers)
        yield dest


def state_sha256(checkpoint_dir: str) -> str:
    """sha256 of a checkpoint folder's ``state.pt``: which weights it holds (recorded in the tracking
    database for registered models and study cells, checked on every later load)."""
    import hashlib

    h = hashlib.sha256()
    with open(Path(checkpoint_dir) / "state.pt", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


EPOCH_METRICS_FILE = "metrics.json"        # in each checkpoint_epoch_NNNN folder, beside the weights
EPOCH_FOLDER = "checkpoint_epoch_"
EPOCH_END_KEY = "epoch_end_ms"             # in rank 0's epoch result: when its checkpoint was made (ms)


def write_epoch_metrics(folder: "str | Path", metrics: dict, time_ms: int) -> None:
    """The epoch's reported numbers beside its weights, with when they were made.

    Why: a driver killed after Ray Train registered an epoch's checkpoint but before its Tune callback
    wrote the epoch to MLflow never sees that result again (the resumed run starts after it); the
    resumed driver's callback reads the epoch from here instead (``read_epoch_metrics``). ``time_ms`` is
    also the result's ``EPOCH_END_KEY``, and the MLflow record's time either way, so a run's history
    (ordered by time) stays in epoch order whichever path wrote an epoch."""
    folder = Path(folder)
    values = {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
    tmp = folder / (EPOCH_METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps({"time_ms": int(time_ms), "metrics": values}))
    tmp.replace(folder / EPOCH_METRICS_FILE)


def read_epoch_metrics(run: str) -> dict[int, tuple[int, dict]]:
    """epoch -> (time in ms, metrics) for every checkpoint of Train run folder ``run`` (a local path or
    URI) that holds them; {} when the run has none yet. A checkpoint still uploading (no metrics file, or
    a partial one) is skipped: it is not registered either."""
    try:
        entries = storage.list_dir(run)
    except FileNotFoundError:
        return {}
    out: dict[int, tuple[int, dict]] = {}
    for e in entries:
        if e.type != pafs.FileType.Directory or not e.base_name.startswith(EPOCH_FOLDER):
            continue
        try:
            got = json.loads(storage.read_bytes(storage.join(run, e.base_name, EPOCH_METRICS_FILE)))
            out[int(e.base_name[len(EPOCH_FOLDER):])] = (int(got["time_ms"]), dict(got["metrics"]))
        except (OSError, ValueError, KeyError):     # not uploaded (whole) yet
            continue
    return out
