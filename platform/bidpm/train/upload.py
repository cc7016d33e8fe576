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
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from typing import Any, Iterator

__all__ = ["checkpoint_folder", "upload_options"]


@contextlib.contextmanager
def checkpoint_folder(mode: str) -> Iterator[str]:
    """A fresh local folder for one checkpoint; removed on exit unless Ray owns it (``mode == "async"``)."""
    tmp = tempfile.mkdtemp(prefix="bidpm-ckpt-")
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
