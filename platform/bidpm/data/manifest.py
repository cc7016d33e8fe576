"""Versioned shard locations, the manifest, and digests (no Ray here).

Layout of ``cfg.shards_path`` (local folder or object-store URI)::

    <shards>/<config_digest>/CURRENT.json             -> {"version": <input_digest>}, written last
    <shards>/<config_digest>/<input_digest>/manifest.json   (written after every shard, atomically)
    <shards>/<config_digest>/<input_digest>/{train,val,test}/<subject>.parquet

``config_digest`` covers every data setting that changes shard content; ``input_digest`` covers the
input files (location, size, mtime). A changed config or changed inputs therefore land in a new
folder, never a mix; a folder without ``manifest.json`` is an unfinished run and is never read.
Why the CURRENT pointer: readers (``load_manifest``, called per epoch) need no listing of the inputs.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any, Iterable

from ..io import storage
from .layouts import SubjectFiles
from .split import SPLITS

SCHEMA_VERSION = 2  # 2: image columns stored as fixed-size binary (bidpm.data.tensor_columns)
MANIFEST = "manifest.json"
CURRENT = "CURRENT.json"
PREPARE_HINT = "python jobs/prepare_data.py --config <your config>"

# Data settings that do not change shard content (read-time, scheduling or where the shards live).
# Settings that do not change the rows of a shard. The ingest's resource limits are among them:
# ``max_volume_bytes`` only decides whether a crafted or oversized file is read at all (a subject it
# refused is skipped, never half-read), so shards made before the limit existed keep their folder.
_NOT_CONTENT = {"pairing_ratio", "pairing_seed", "pairing_unit", "train_fraction", "skip_bad", "num_workers", "cpus_per_task", "subjects_per_task",
                "shards_dir", "max_volume_bytes", "task_memory_bytes", "task_retries", "pseudonym_salt_file",
                "allow_outside_root"}


class DataError(RuntimeError):
    """Ingest or reading failed; the message names the file/subject, what is wrong and the fix."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def content_settings(cfg) -> dict:
    """The part of ``cfg.data`` that determines shard content (salt and subject lists as their digests,
    root resolved). Only digests: a config rebuilt from a dump (trials, workers) must find the same
    folder without the secrets. The keys keep the digests of shards made before the lists were dropped
    from dumps (``pseudonym_salt`` = the salt's sha256[:16], lists None)."""
    d = cfg.data.model_dump(mode="json")      # salt and explicit lists are excluded from dumps
    for k in _NOT_CONTENT:
        d.pop(k, None)
    d["pseudonym_salt"] = d.pop("salt_digest")
    split = d["split"]
    lists_digest = split.pop("subjects_digest", None)
    if lists_digest is None:
        split.update(train_subjects=None, val_subjects=None, test_subjects=None)
    else:
        split["subjects_digest"] = lists_digest
    d["root"] = input_root_location(cfg)
    d["source_modality"], d["target_modality"] = cfg.data.modalities
    if cfg.data.layout != "phantom":
        d.pop("phantom")
    d["schema_version"] = SCHEMA_VERSION
    return d


def config_digest(cfg) -> str:
    return _digest(content_settings(cfg))[:16]


def input_root_location(cfg) -> str:
    """Where inputs are read (phantoms: ``data.root`` or ``<output_dir>/phantoms``)."""
    if cfg.data.root:
        return cfg.resolve_path(cfg.data.root)
    if cfg.data.layout == "phantom":
        return cfg.resolve_path("phantoms")
    raise DataError(f"data.root is not set for layout {cfg.data.layout!r}; fix: set data.root=/path/to/dataset")


def input_digest(subjects: Iterable[SubjectFiles]) -> str:
    """Digest of each input file's location, size and mtime (cheap: stats only, no reads)."""
    items = []
    for s in subjects:
        for loc in (s.source, s.target, s.mask):
            if loc is None:
                continue
            i = storage.info(loc)
            items.append([s.subject, loc, i.size, i.mtime_ns])
    return _digest(sorted(items, key=str))[:16]


def pseudonym(subject: str, salt: str, enabled: bool) -> str:
    """Salted SHA-256 pseudonym ``sub-<16 hex>`` (or a filename-safe copy of the id when disabled)."""
    if enabled:
        return "sub-" + hashlib.sha256(f"{salt}|{subject}".encode()).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9._-]", "_", subject)


def version_base(cfg) -> str:
    return storage.join(cfg.shards_path, config_digest(cfg))


def redacted_data_config(cfg) -> dict:
    """``cfg.data`` for the manifest: the dump already leaves out the salt and the subject lists."""
    d = cfg.data.model_dump(mode="json")
    d["pseudonym_salt"] = "<redacted>"
    return d


def content_digest(files: list[dict]) -> str:
    """Digest over (path, sha256) of every shard file, sorted by path."""
    return hashlib.sha256("\n".join(f"{f['path']} {f['sha256']}" for f in sorted(files, key=lambda f: f["path"])).encode()).hexdigest()


def manifest_location(cfg) -> str:
    """The manifest of the current version for this config; raises DataError (with the fix) when absent."""
    base = version_base(cfg)
    pointer = storage.join(base, CURRENT)
    hint = f"run `{PREPARE_HINT}` with the same data settings first"
    if not storage.is_file(pointer):
        raise DataError(f"no prepared shards for this data config: {pointer} does not exist; fix: {hint}")
    version = json.loads(storage.read_bytes(pointer))["version"]
    loc = storage.join(base, version, MANIFEST)
    if not storage.is_file(loc):
        raise DataError(f"manifest missing: {loc} (unfinished or deleted run); fix: {hint}")
    return loc


_SHARD_PATH = re.compile(r"(train|val|test)/[A-Za-z0-9._-]+\.parquet")


def read_manifest(location: str) -> dict:
    """The manifest at ``location``, refused when it is of another schema, names a shard outside its
    version folder (an absolute path or ``..``) or lists files other than its ``content_digest`` says.

    What a reader is guaranteed (with ``readers``' per-file check): every row comes from a file inside
    the version folder whose sha256 is the one listed here, and the list is the one ``content_digest``
    (recorded in checkpoints and MLflow lineage) names. A writer able to rewrite the shards AND the
    manifest consistently makes a new ``content_digest``: a resumed run then refuses the shards."""
    m = json.loads(storage.read_bytes(location))
    if m.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{location}: shard schema version {m.get('schema_version')} != {SCHEMA_VERSION} of this code; fix: rerun jobs/prepare_data.py")
    fix = "the manifest was edited or damaged; rebuild the shards into a fresh data.shards_dir"
    for f in m.get("files", []):
        if not _SHARD_PATH.fullmatch(str(f.get("path"))):
            raise DataError(f"{location}: shard path {f.get('path')!r} is not <split>/<file>.parquet inside its version folder; fix: {fix}")
    if m.get("content_digest") and m["content_digest"] != content_digest(m.get("files", [])):
        raise DataError(f"{location}: its file list does not match its content_digest; fix: {fix}")
    return m


def load_manifest(cfg) -> dict:
    """The manifest dict of this config's prepared shards (adds ``location``: the version folder)."""
    loc = manifest_location(cfg)
    m = read_manifest(loc)
    m["location"] = loc[: -len(MANIFEST) - 1]
    return m


def manifest_digest(manifest: dict) -> str:
    """The shards' content digest (``content_digest``, over every shard file's sha256): the one identity
    of a shard set, recorded in checkpoints (resume refuses other shards) and MLflow lineage."""
    digest = manifest.get("content_digest")
    if not digest:
        where = manifest.get("location", "the shard manifest")
        raise DataError(f"{where}: manifest has no 'content_digest' field (written by an older or unfinished ingest); "
                        f"fix: rebuild the shards with `{PREPARE_HINT}`")
    return str(digest)


def volume_geometry(manifest: dict, subject: str) -> dict:
    """Per-volume metadata for ``subject`` (pseudonym as in the ``subject`` column): RAS ``shape``,
    ``affine``, ``spacing``, ``slices`` (RAS z indices of the rows), ``original_axcodes``/``_shape``/
    ``_affine``, ``image_size`` and ``normalisation`` {source, target} parameters."""
    try:
        return manifest["volumes"][subject]
    except KeyError:
        raise KeyError(f"subject {subject!r} is not in the manifest ({len(manifest['volumes'])} volumes); use the pseudonymous id from the shards' subject column") from None

def build_manifest(cfg, version: str, subjects: list[SubjectFiles], assignment: dict, good: list[dict],
                   bad: list[dict]) -> dict:
    """The manifest of one ingest: schema, counts per split, every shard file with its sha256, per-volume
    geometry, the skipped subjects (pseudonyms and a category of problem only) and the content digest.
    ``good``/``bad``: the ingest tasks' result rows; ``assignment``: subject -> split (None: unassigned)."""
    d = cfg.data
    src_mod, tgt_mod = d.modalities
    files = [{"path": r["file"], "split": r["split"], "subject": r["pseudonym"], "rows": int(r["rows"]), "sha256": r["sha256"]} for r in good]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_digest": config_digest(cfg),
        "input_digest": version,
        "config": redacted_data_config(cfg),
        "layout": d.reader_layout,
        "source_modality": src_mod,
        "target_modality": tgt_mod,
        "image_size": list(d.image_size),
        "pseudonymised": d.pseudonymise,
        "columns": {
            "subject": "string (pseudonym when pseudonymised)", "slice": "int32 (RAS z index)", "split": "string",
            "source": f"float32 {list(d.image_size)} in [-1, 1]; on disk fixed-size binary (little-endian, row-major; "
                      "field metadata bidpm.tensor gives dtype and shape), read_split yields fixed-shape tensors",
            "target": "same as source", "mask": f"float32 {list(d.image_size)} in {{0, 1}}, stored like source",
        },
        "splits": {
            s: {"subjects": sum(1 for r in good if r["split"] == s), "slices": sum(int(r["rows"]) for r in good if r["split"] == s)}
            for s in SPLITS
        },
        "unassigned_subjects": sum(1 for s in subjects if assignment[s.subject] is None),
        "files": files,
        "volumes": {r["pseudonym"]: json.loads(r["meta"]) for r in good},
        # Pseudonymised: a category, the role and the pseudonym only. The problem's text is the console's:
        # readers' and object stores' messages quote the full path (``.../Smith_John.nii.gz``).
        "skipped": [
            {"subject": r["pseudonym"], "kind": r["kind"], "role": r["role"],
             **({} if d.pseudonymise else {"problem": r["problem"], "location": r["location"]})}
            for r in sorted(bad, key=lambda r: r["pseudonym"])
        ],
        "content_digest": content_digest(files),
    }
    return manifest


def verify_shards(manifest: dict) -> None:
    """Recompute every shard file's sha256 against the manifest; raises DataError on a mismatch."""
    for f in manifest["files"]:
        loc = storage.join(manifest["location"], f["path"])
        if hashlib.sha256(storage.read_bytes(loc)).hexdigest() != f["sha256"]:
            raise DataError(f"{loc}: content differs from the manifest's sha256; fix: rerun jobs/prepare_data.py into a fresh data.shards_dir")
