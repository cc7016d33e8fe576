"""Ray Data ingest: NIfTI volume pairs -> Parquet slice shards + manifest (``prepare_shards``).

Ingest (``prepare_shards``): the driver discovers the subject table (lists/stats only), assigns
splits, then ``ray.data.from_items(groups).flat_map(_ingest_group)`` runs a few subjects per task
(``task_groups``), one volume pair at a time: read -> RAS -> checks -> slices -> Parquet file
``<split>/<subject>.parquet`` written by the task itself.
Only a small result row per subject (counts, sha256, geometry, or the error) returns to the driver,
so driver memory is independent of dataset size and a task holds one pair at a time. The manifest
is written last, atomically; then the CURRENT pointer. Why tasks write their own files instead of
``Dataset.write_parquet``: the file names are then deterministic (one per subject), so the content
digest is reproducible and the volume metadata arrives with the rows' file, in the same pass.

The tasks themselves (groups, retries, memory, a task that dies) are ``ingest_tasks``; the manifest's
content is ``manifest.build_manifest``; reading the shards back is ``readers``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa

from ..io import storage
from ..io.lease import folder_lease
from .layouts import LayoutError, SubjectFiles, discover
from .manifest import (
    CURRENT, MANIFEST, DataError, build_manifest, input_digest, input_root_location, pseudonym, read_manifest, version_base,
)
from .split import SPLITS, assign_splits
from .ingest_tasks import run_tasks
from .volume import SliceSettings

def _check_writable(location: str) -> None:
    probe = storage.join(location, f".write-probe-{time.time_ns()}")
    try:
        storage.make_dirs(location)
        storage.write_bytes_atomic(probe, b"ok")
        fs, path = storage.resolve(probe)
        fs.delete_file(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"output not writable: {location} ({exc}); fix: set data.shards_dir (or output_dir) to a writable location") from None


def _ensure_phantoms(cfg) -> None:
    from .phantom import PhantomFolderError, write_phantoms  # local: only phantom runs need scipy's filters

    root = input_root_location(cfg)
    if storage.is_uri(root):
        raise DataError(f"data.root={root}: phantoms are generated on a local path; fix: use a local data.root for layout=phantom")
    p = cfg.data.phantom
    try:
        write_phantoms(root, p.num_subjects, p.shape, p.seed, p.layout, p.region)
    except PhantomFolderError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"cannot write the phantom volumes to {root} ({exc.strerror or exc}); fix: free space there, or "
                        f"set data.root (or output_dir) to a writable location") from None


def _write_record(location: str, data: bytes, version_dir: str) -> None:
    """The manifest / CURRENT pointer, atomically. A full or read-only location -> DataError naming it; a
    failed manifest write also drops the version folder, whose shards are never read without a manifest
    (and on a full disk their space is what the next attempt needs)."""
    try:
        storage.write_bytes_atomic(location, data)
    except (OSError, pa.ArrowException) as exc:
        if location.endswith(MANIFEST):
            try:
                storage.remove_tree(version_dir)
            except (OSError, pa.ArrowException):
                pass
        raise DataError(f"cannot write {location} ({exc}); no manifest written, so no shard of this run is used; "
                        f"fix: free space there or set data.shards_dir to a writable location, then rerun") from None


def _format_errors(bad: list[dict]) -> str:
    lines = [
        f"  subject {r['subject']}: {r['role']} file {r['location']}: {r['problem']}; fix: {r['fix']} [{r['kind']}]"
        for r in bad
    ]
    return "\n".join(lines)


def prepare_shards(cfg) -> Path | str:
    """Build this config's shards (idempotent) and return the manifest's location.

    layout=phantom generates the phantom volumes first (``data.root`` or ``<output_dir>/phantoms``).
    Same inputs + same data settings: returns the existing manifest without work. Bad inputs stop the
    run before any manifest (all problems listed at once) unless ``data.skip_bad``, which records them
    under ``skipped``. Returns a ``Path`` for local shards, the URI string for object stores.
    """
    d = cfg.data
    if d.layout == "phantom":
        _ensure_phantoms(cfg)
    root = input_root_location(cfg)
    src_mod, tgt_mod = d.modalities
    try:
        subjects = discover(d.reader_layout, root, src_mod, tgt_mod, d.reader_region, allow_outside_root=d.allow_outside_root)
    except LayoutError as exc:
        raise DataError(str(exc)) from None
    base = version_base(cfg)
    version = input_digest(subjects)
    version_dir = storage.join(base, version)
    manifest_loc = storage.join(version_dir, MANIFEST)
    _check_writable(cfg.shards_path)

    if storage.is_file(manifest_loc):  # same config, same inputs: nothing to do
        return _reuse(cfg, manifest_loc, base, version, version_dir)
    # One ingest per version folder (a second one waits, then uses the first one's shards): the
    # removal of an unfinished folder below would otherwise delete a running ingest's files.
    with folder_lease(version_dir, "ingest (jobs/prepare_data.py or a run's first use)", wait=True):
        if storage.is_file(manifest_loc):
            return _reuse(cfg, manifest_loc, base, version, version_dir)
        return _ingest(cfg, subjects, root, base, version, version_dir, manifest_loc)


def _reuse(cfg, manifest_loc: str, base: str, version: str, version_dir: str) -> Path | str:
    m = read_manifest(manifest_loc)
    if m["skipped"] and not cfg.data.skip_bad:
        raise DataError(f"{manifest_loc} was built with data.skip_bad=true and skipped {len(m['skipped'])} subjects; "
                        "fix: set data.skip_bad=true to use it, or repair the inputs")
    _write_record(storage.join(base, CURRENT), json.dumps({"version": version}).encode(), version_dir)
    return _as_return(manifest_loc)


def _ingest(cfg, subjects: list[SubjectFiles], root: str, base: str, version: str, version_dir: str,
            manifest_loc: str) -> Path | str:
    d = cfg.data
    # A fresh ingest: only here are the salt and the explicit subject lists needed (a config rebuilt
    # from a dump carries their digests only, enough to find existing shards above).
    salt = d.ingest_secrets()
    try:
        assignment = assign_splits(
            [s.subject for s in subjects], val_fraction=d.split.val_fraction, test_fraction=d.split.test_fraction,
            seed=d.split.seed, train_subjects=d.split.train_subjects, val_subjects=d.split.val_subjects,
            test_subjects=d.split.test_subjects,
        )
    except ValueError as exc:
        raise DataError(str(exc)) from None
    try:
        storage.remove_tree(version_dir)  # an unfinished earlier run (no manifest): never trusted, never mixed
        for split in SPLITS:
            storage.make_dirs(storage.join(version_dir, split))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot prepare {version_dir} ({exc}); fix: free space there or set data.shards_dir to a "
                        f"writable location") from None
    pseudonyms = {s.subject: pseudonym(s.subject, salt, d.pseudonymise) for s in subjects}
    if len(set(pseudonyms.values())) != len(set(pseudonyms)):
        raise DataError("two subject ids map to the same file name; fix: make ids unique after replacing characters outside [A-Za-z0-9._-], or set data.pseudonymise=true")
    tasks = [
        {"subject": s.subject, "source": s.source or "", "target": s.target or "", "mask": s.mask or "",
         "problem": json.dumps(s.problem.__dict__) if s.problem else "", "pseudonym": pseudonyms[s.subject],
         "split": assignment[s.subject]}
        for s in subjects if assignment[s.subject] is not None
    ]
    results = run_tasks(tasks, SliceSettings.from_data_config(d), version_dir, d)
    bad = [r for r in results if r["kind"]]
    fatal = [r for r in bad if r["fatal"]]
    if fatal or (bad and not d.skip_bad):
        storage.remove_tree(version_dir)
        what = "cannot write the shards" if fatal else f"{len(bad)} of {len(results)} subjects have bad input"
        raise DataError(f"{what}; no manifest written:\n{_format_errors(fatal or bad)}\n"
                        + ("" if fatal else "set data.skip_bad=true to skip them (they are listed in the manifest)"))
    good = sorted((r for r in results if not r["kind"]), key=lambda r: r["file"])
    if not any(r["split"] == "train" for r in good):
        storage.remove_tree(version_dir)
        listed = (f"; {len(bad)} of {len(results)} subjects were skipped as bad:\n{_format_errors(bad)}\n"
                  "fix: repair these inputs or add subjects") if bad else "; fix: add subjects or lower data.split fractions"
        raise DataError(f"no usable training subject in {root}; no manifest written{listed}")
    manifest = build_manifest(cfg, version, subjects, assignment, good, bad)
    _write_record(manifest_loc, json.dumps(manifest, indent=1).encode(), version_dir)
    _write_record(storage.join(base, CURRENT), json.dumps({"version": version}).encode(), version_dir)
    return _as_return(manifest_loc)


def _as_return(location: str) -> Path | str:
    return location if storage.is_uri(location) else Path(location)
