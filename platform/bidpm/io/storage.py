"""Paths and URIs through pyarrow filesystems, so ingest reads local folders and object stores alike.

A *location* is a string: a local path (made absolute) or a URI (``s3://bucket/x``, ``gs://...``,
``file:///...``). ``resolve`` turns it into ``(filesystem, path)``; everything else takes locations.

Credentials never travel in a location (a config value, so they would land in YAML, MLflow params and
checkpoints): pyarrow would accept ``s3://KEY:SECRET@bucket`` or ``?secret_key=...``, so ``resolve``
refuses them. They come from the environment of the driver and of every node - ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``), an instance/IRSA role, or
``GOOGLE_APPLICATION_CREDENTIALS`` - and an S3-compatible endpoint from ``AWS_ENDPOINT_URL``, which
pyarrow, boto3 (MLflow) and Ray all read.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

# URI query options of pyarrow's S3 / GCS filesystems that carry a secret (endpoint_override, region,
# scheme ... are fine in a URI)
SECRET_OPTIONS = frozenset({"access_key", "secret_key", "session_token", "access_token", "credentials"})


def is_uri(location: str) -> bool:
    return "://" in location


def check_no_credentials(location: str) -> None:
    """Raise ValueError (the secret redacted) when a location URI embeds credentials."""
    if not is_uri(location):
        return
    parts = urlsplit(location)
    secret_keys = sorted(k for k, _ in parse_qsl(parts.query) if k.lower() in SECRET_OPTIONS)
    if parts.username is None and parts.password is None and not secret_keys:
        return
    shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"
    what = "user:password@ in the URI" if parts.username is not None else f"query option(s) {secret_keys}"
    raise ValueError(
        f"storage location {shown}: credentials in a location ({what}) would be written into configs, MLflow "
        f"params and checkpoints; remove them and give them to the driver and every node through the environment "
        f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or an instance role; "
        f"GOOGLE_APPLICATION_CREDENTIALS for gs://; AWS_ENDPOINT_URL for an S3-compatible server)")


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(location):
        check_no_credentials(location)
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
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        if isinstance(fs, pafs.LocalFileSystem):
            _fsync(tmp)                # the bytes are on disk before the rename publishes them
        fs.move(tmp, path)
    except BaseException:          # a full disk mid-write: no temp left behind (the target never appeared)
        try:
            fs.delete_file(tmp)
        except Exception:  # noqa: BLE001 - it may not exist; the original error is what matters
            pass
        raise


def _fsync(path: str) -> None:
    """Flush a local file to disk. Why: a manifest, checkpoint record or report renamed into place
    before its bytes reach the disk can appear empty after a power loss, looking complete."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def download_dir(location: str, dest: str) -> None:
    """Copy the folder at ``location`` (any filesystem) into the local folder ``dest`` (created).

    Why not ``pyarrow.fs.copy_files`` alone: on S3 a folder that was uploaded with a directory marker
    (what pyarrow's own upload - and so Ray Train's checkpoint upload - leaves) lists itself, and
    copy_files then writes into ``dest`` without creating it: FileNotFoundError on the first file.
    """
    fs, path = resolve(location)
    os.makedirs(dest, exist_ok=True)
    pafs.copy_files(path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def make_dirs(location: str) -> None:
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)


def remove_tree(location: str) -> None:
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
