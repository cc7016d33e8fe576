"""Paths and URIs through pyarrow filesystems, so ingest reads local folders and object stores alike.

A *location* is a string: a local path (made absolute) or a URI (``s3://bucket/x``, ``gs://...``,
``file:///...``). ``resolve`` turns it into ``(filesystem, path)``; everything else takes locations.
"""

from __future__ import annotations

import os
import posixpath
import uuid

import pyarrow.fs as pafs


def is_uri(location: str) -> bool:
    return "://" in location


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def join(location: str, *parts: str) -> str:
    if is_uri(location):
        return posixpath.join(location.rstrip("/"), *parts)
    return os.path.join(location, *parts)


def info(location: str) -> pafs.FileInfo:
    fs, path = resolve(location)
    return fs.get_file_info(path)


def exists(location: str) -> bool:
    return info(location).type != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    return info(location).type == pafs.FileType.File


def is_dir(location: str) -> bool:
    return info(location).type == pafs.FileType.Directory


def list_dir(location: str) -> list[pafs.FileInfo]:
    """Immediate children (files and folders), sorted by name."""
    fs, path = resolve(location)
    return sorted(fs.get_file_info(pafs.FileSelector(path, recursive=False)), key=lambda i: i.base_name)


def read_bytes(location: str) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path, compression=None) as f:  # raw bytes: .gz is decoded (and checked) by bidpm.io
        return f.read()


def write_bytes_atomic(location: str, data: bytes) -> None:
    """Write to a temp name beside the target, then move it into place (one object appears, whole).
    A missing local parent folder is created (object stores have no folders to create)."""
    fs, path = resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path.rsplit("/", 1)[0] or "/", recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def make_dirs(location: str) -> None:
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)


def remove_tree(location: str) -> None:
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
