"""How rank 0 hands an epoch's checkpoint to ``ray.train.report`` (``train.checkpoint_upload``).

Ray 2.60's Train V2 ``ray.train.report`` takes ``checkpoint_upload_mode`` (``ray.train.CheckpointUploadMode``,
alpha): ``SYNC`` (default) copies the folder to the run's storage before returning; ``ASYNC`` submits the copy
to a one-thread pool in the worker and returns at once, so the next epoch trains while it uploads. The
report is still a barrier across ranks (the checkpoint folder name is agreed first); Ray then puts the
result on the worker's queue in report order once the upload is done, so Tune and ``get_checkpoint()``
only ever see uploaded checkpoints, and the worker waits for pending uploads when the loop returns
(``checkpoint_upload_threadpool.shutdown()``). A failed background upload fails the run, as a sync one does.

The folder must outlive ``report`` in ASYNC mode: a ``TemporaryDirectory`` would be deleted before the
copy. ``delete_local_checkpoint_after_upload`` (default True for ASYNC) makes Ray delete it once uploaded,
so ASYNC writes into ``mkdtemp`` and leaves the deletion to Ray; SYNC deletes it here after ``report``.
A folder whose epoch failed before ``report`` is deleted here in both modes.

What nobody deletes: a folder whose background upload failed (Ray fails the run and keeps the folder)
and the folder of a worker killed mid-epoch. So every folder is named after its run and rank
(``folder_owner``: a hash of the run's storage location, so two runs sharing a name do not meet), and
rank 0 removes that owner's leftovers on this node when an attempt starts (``remove_leftovers``). No
upload of the run can still be pending then: Ray Train starts a worker group only after the last one
ended, and a rerun only after its driver's job ended. Leftovers of runs never resumed stay in the temp dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["checkpoint_folder", "folder_owner", "remove_leftovers", "upload_options", "worker_owner"]

PREFIX = "bidpm-upload-"


def folder_owner(run_path: str, rank: int) -> str:
    """The part of a checkpoint folder's name that says whose it is: run (by storage location) and rank."""
    return f"{hashlib.sha256(run_path.encode()).hexdigest()[:16]}-r{rank}"


def worker_owner(ctx: Any) -> str:
    """``folder_owner`` of this Ray Train worker (``ray.train.get_context()``): its run's storage location
    (``experiment_fs_path``, a DeveloperAPI), or the run's name where there is none (Train's local mode)."""
    try:
        run_path = ctx.get_storage().experiment_fs_path
    except NotImplementedError:
        run_path = ctx.get_experiment_name()
    return folder_owner(run_path, ctx.get_world_rank())


def remove_leftovers(owner: str, root: str | None = None) -> list[str]:
    """Delete the checkpoint folders ``owner`` left in ``root`` (the temp dir) by an earlier attempt; their names."""
    gone = sorted(str(p) for p in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}{owner}-*") if p.is_dir())
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


@contextlib.contextmanager
def checkpoint_folder(mode: str, owner: str, root: str | None = None) -> Iterator[str]:
    """A fresh local folder for one checkpoint; removed on exit unless Ray owns it (``mode == "async"``)."""
    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}{owner}-", dir=root)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if mode != "async":
        shutil.rmtree(tmp, ignore_errors=True)


def upload_options(mode: str) -> dict[str, Any]:
    """``ray.train.report`` keyword arguments for ``mode`` ("async": upload in the background, Ray deletes the folder)."""
    from ray.train import CheckpointUploadMode

    if mode == "async":
        return {"checkpoint_upload_mode": CheckpointUploadMode.ASYNC, "delete_local_checkpoint_after_upload": True}
    return {"checkpoint_upload_mode": CheckpointUploadMode.SYNC, "delete_local_checkpoint_after_upload": False}
