"""One writer per output folder (issue 22 item 8), with two real processes: a second writer is refused
naming the holder; a holder that is SIGKILLed leaves a lease that the next writer takes; an ingest's
second writer waits instead. The holder is a fresh interpreter, so the lock is really another process's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from bidpm.io.lease import FolderBusy, folder_lease, lease_file

_HOLD = r"""
import sys, time
from bidpm.io.lease import folder_lease
with folder_lease(sys.argv[1], "study 'x'"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(folder, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_the_holder_named_and_a_killed_holder_frees_it(tmp_path):
    folder = tmp_path / "ray_results" / "study-a"
    proc = _holder(folder, 60)
    try:
        with pytest.raises(FolderBusy, match=rf"study-a is being written by study 'x' \(pid {proc.pid} on .*, since "):
            with folder_lease(str(folder), "study 'y'"):
                pytest.fail("two writers held the lease")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lease_file(str(folder)).exists()      # left behind by the killed holder ...
    with folder_lease(str(folder), "study 'y'") as path:  # ... and free: the kernel dropped its lock
        assert f'"pid": {os.getpid()}' in path.read_text()
    assert path.read_text() == ""                # released: no holder named


def test_deleting_the_folder_does_not_delete_the_lease(tmp_path):
    import shutil

    folder = tmp_path / "exp"
    folder.mkdir()
    with folder_lease(str(folder), "search 'exp'") as path:
        shutil.rmtree(folder)                   # tune.resume=false deletes the folder under its lease
        assert path.exists() and path.parent == tmp_path
        with pytest.raises(FolderBusy):
            with folder_lease(str(folder), "another"):
                pass


def test_an_ingest_waits_for_the_other_one(tmp_path):
    folder = tmp_path / "shards" / "v1"
    proc = _holder(folder, 1.5)
    said: list[str] = []
    t = time.monotonic()
    with folder_lease(str(folder), "ingest", wait=True, print_fn=said.append):
        waited = time.monotonic() - t
    proc.wait()
    assert waited > 0.5 and proc.returncode == 0
    assert said and f"pid {proc.pid}" in said[0] and "v1" in said[0]


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    """Two runs in one process (a notebook) are two writers too: flock is per open file."""
    errors: list[BaseException] = []
    with folder_lease(str(tmp_path / "f"), "first"):
        def second():
            try:
                with folder_lease(str(tmp_path / "f"), "second"):
                    pass
            except FolderBusy as exc:
                errors.append(exc)
        th = threading.Thread(target=second)
        th.start()
        th.join()
    assert len(errors) == 1
    with folder_lease(str(tmp_path / "f"), "after"):
        pass


def test_object_store_folders_have_no_lease():
    with folder_lease("s3://bucket/ray_results/x", "search") as path:
        assert path is None
