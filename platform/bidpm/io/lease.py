"""One writer per output folder: an exclusive lease beside the folder, held for the whole run.

Why: two studies of one name, a study and a search on one data config, or two ingests at once deleted
each other's in-flight files (``tune.resume=false``, an unfinished ingest's removal) and opened duplicate
MLflow parent runs. The lease is an ``flock`` on ``<parent>/.<folder name>.lease`` (beside the folder, so
deleting the folder never deletes the lock), with the holder's name, host, pid and start time written
inside for the message that refuses a second writer.

A stale lease breaks itself safely: the kernel drops an ``flock`` when its process ends, however it ends
(SIGKILL and OOM kills included), so a lease file left behind is free to take; nothing is ever judged
stale by its age. Shared volumes: NFSv4, CephFS and Lustre (``-o flock``) carry ``flock`` between hosts;
on a file system without it the lease guards one host only. Object-store folders (``s3://``) have no
lease: they have no lock primitive that pyarrow exposes (say so in the README's security section).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import storage


class FolderBusy(RuntimeError):
    """Another process holds the lease of an output folder; the message names it and the fix."""


def lease_file(folder: str) -> Path:
    p = Path(folder)
    return p.parent / f".{p.name}.lease"


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        h = {}
    if not h:
        return "another process (it is just starting)"
    return f"{h.get('holder', '?')} (pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('since', '?')})"


@contextlib.contextmanager
def folder_lease(folder: str, holder: str, *, wait: bool = False,
                 print_fn: Callable[[str], object] = print) -> Iterator[Optional[Path]]:
    """Hold the lease of ``folder`` for the ``with`` block (yields the lease file; None for URIs).

    ``wait=False``: a second writer gets ``FolderBusy`` naming the holder. ``wait=True`` (the ingest,
    whose second writer can use the first one's result): block until it is free, saying who it waits for.
    """
    if storage.is_uri(folder):
        yield None
        return
    path = lease_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise FolderBusy(
                    f"{folder} is being written by {_holder(path)}; fix: wait for it to finish, stop it, or choose "
                    f"another name. (The lease {path} is released when that process ends, however it ends.)") from None
            print_fn(f"waiting for {_holder(path)}, which is writing {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        me = {"holder": holder, "host": socket.gethostname(), "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)            # released: no holder named any more
    finally:
        os.close(fd)                       # closing drops the flock
