"""Dataset layouts -> a subject table (which files make each subject's pair).

Discovery only lists and stats files (cheap, runs in the driver); voxels are read later, one subject
per Ray task. Problems found here (missing file, missing modality, duplicate subject id) are recorded
on the subject rather than raised, so ``skip_bad`` can skip them like any other bad input.

- brats:    ``<root>/<ID>/<ID>_<modality>.nii.gz`` (or ``.nii``); modalities t1, t1ce, t2, flair;
            no mask file (BraTS is skull-stripped; the mask is ``source != 0 or target != 0``).
- synthrad: ``<root>/<region>/<ID>/{mr,ct,mask}.nii.gz`` (SynthRAD2023 Task 1; root = the Task1 folder).
- csv:      a file with header ``subject,source,target[,mask]``; relative paths are relative to the CSV.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, replace
from typing import Optional

import pyarrow.fs as pafs

from ..io import storage

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def nifti_stem(path: "os.PathLike[str] | str") -> str:
    """A NIfTI file's name without ``.nii.gz`` / ``.nii`` (``Path.stem`` would keep ``.nii``)."""
    name = os.path.basename(os.fspath(path))
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


class LayoutError(ValueError):
    """The dataset root itself is unusable (nothing to skip): names the path and the fix."""


@dataclass(frozen=True)
class Problem:
    """Why a subject cannot be ingested: ``kind`` tag, which file (role + location) and the fix."""

    kind: str
    role: str
    location: str
    problem: str
    fix: str

    def message(self, subject: str, *, with_path: bool = True) -> str:
        where = f"{self.role} file {self.location}" if with_path else f"{self.role} file"
        return f"subject {subject}: {where}: {self.problem}; fix: {self.fix}"


@dataclass(frozen=True)
class SubjectFiles:
    """One subject's pair. ``mask`` None = derived from the images; ``problem`` set = cannot ingest."""

    subject: str
    source: Optional[str]
    target: Optional[str]
    mask: Optional[str] = None
    problem: Optional[Problem] = None


def _nifti_in(folder: str, stem: str, names: set[str]) -> Optional[str]:
    for suffix in NIFTI_SUFFIXES:
        if stem + suffix in names:
            return storage.join(folder, stem + suffix)
    return None


def _require_dir(root: str, what: str, fix: str) -> list[pafs.FileInfo]:
    if not storage.is_dir(root):
        raise LayoutError(f"data.root: {root} is not a folder ({what}); fix: {fix}")
    return storage.list_dir(root)


def discover_brats(root: str, source: str, target: str) -> list[SubjectFiles]:
    out = []
    for d in _require_dir(root, "BraTS 2021 layout", "set data.root to the folder holding BraTS2021_*/ subject folders"):
        if d.type != pafs.FileType.Directory or d.base_name.startswith("."):
            continue
        sid, folder = d.base_name, storage.join(root, d.base_name)
        names = {f.base_name for f in storage.list_dir(folder) if f.type == pafs.FileType.File}
        found = sorted({n[len(sid) + 1:].split(".")[0] for n in names if n.startswith(sid + "_") and n.endswith(NIFTI_SUFFIXES)})
        paths, problem = {}, None
        for role, m in (("source", source), ("target", target)):
            paths[role] = _nifti_in(folder, f"{sid}_{m}", names)
            if paths[role] is None and problem is None:
                problem = Problem(
                    "missing_modality", role, storage.join(folder, f"{sid}_{m}.nii.gz"),
                    f"modality {m!r} missing (found: {', '.join(found) or 'no NIfTI files'})",
                    "restore the file, pick modalities every subject has (data.source_modality/target_modality), or set data.skip_bad=true",
                )
        out.append(SubjectFiles(sid, paths["source"], paths["target"], None, problem))
    return out


def discover_synthrad(root: str, region: str, source: str, target: str) -> list[SubjectFiles]:
    base = storage.join(root, region)
    out = []
    for d in _require_dir(base, f"SynthRAD2023 Task 1 layout, region {region}", "set data.root to the Task1 folder that holds brain/ and pelvis/"):
        if d.type != pafs.FileType.Directory or d.base_name.startswith("."):
            continue
        sid, folder = d.base_name, storage.join(base, d.base_name)
        names = {f.base_name for f in storage.list_dir(folder) if f.type == pafs.FileType.File}
        paths, problem = {}, None
        for role, m in (("source", source), ("target", target), ("mask", "mask")):
            paths[role] = _nifti_in(folder, m, names)
            if paths[role] is None and problem is None:
                kind = "missing_file" if role == "mask" else "missing_modality"
                problem = Problem(kind, role, storage.join(folder, f"{m}.nii.gz"), f"{m}.nii.gz missing", "restore the file or set data.skip_bad=true")
        out.append(SubjectFiles(sid, paths["source"], paths["target"], paths["mask"], problem))
    return out


def _inside(loc: str, base: str) -> bool:
    """Is ``loc`` below ``base``? URIs are compared on their normalised path (``..`` resolved) and may
    carry no query (``?endpoint_override=`` would send the read to another host); local paths after
    symlinks are resolved."""
    if storage.is_uri(loc) or storage.is_uri(base):
        scheme, _, rest = loc.partition("://")
        b_scheme, _, b_rest = base.partition("://")
        if "?" in loc or scheme != b_scheme:
            return False
        return posixpath.normpath(rest).startswith(posixpath.normpath(b_rest).rstrip("/") + "/")
    return os.path.commonpath([os.path.realpath(loc), os.path.realpath(base)]) == os.path.realpath(base)


def discover_csv(path: str, allow_outside_root: bool = True) -> list[SubjectFiles]:
    """``allow_outside_root=False`` (``data.allow_outside_root``' default): a row naming a file outside the
    CSV's own folder (absolute, ``..``, a symlink out) is that subject's ``outside_root`` problem, so a CSV
    cannot make the ingest read arbitrary files the job can reach."""
    if not storage.is_file(path):
        raise LayoutError(f"data.root: CSV manifest {path} does not exist; fix: point data.root to a CSV with header subject,source,target[,mask]")
    text = storage.read_bytes(path).decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    header = set(rows[0].keys()) if rows else set()
    if not {"subject", "source", "target"} <= header:
        raise LayoutError(f"{path}: CSV header must have columns subject,source,target[,mask] (got {sorted(header)})")
    base = path.rsplit("/", 1)[0] if storage.is_uri(path) else os.path.dirname(os.path.abspath(path))
    out = []
    for i, row in enumerate(rows, start=2):
        sid = (row.get("subject") or "").strip()
        if not sid:
            raise LayoutError(f"{path}: line {i} has an empty subject id; every row needs one")
        paths: dict[str, Optional[str]] = {}
        problem = None
        for role in ("source", "target", "mask"):
            p = (row.get(role) or "").strip()
            if not p:
                if role != "mask" and problem is None:
                    problem = Problem("missing_file", role, f"{path} line {i}", f"no {role} path given", f"fill the {role} column")
                paths[role] = None
                continue
            loc = p if (storage.is_uri(p) or os.path.isabs(p)) else storage.join(base, p)
            paths[role] = loc
            if problem is None and not allow_outside_root and not _inside(loc, base):
                problem = Problem("outside_root", role, loc, f"is outside the CSV's folder {base}",
                                  f"move the file below {base}, or set data.allow_outside_root=true if the CSV is yours")
            if problem is None and not storage.is_file(loc):
                problem = Problem("missing_file", role, loc, "file does not exist", f"fix the {role} path in {path} line {i} or set data.skip_bad=true")
        out.append(SubjectFiles(sid, paths["source"], paths["target"], paths["mask"], problem))
    return out


def mark_duplicates(subjects: list[SubjectFiles]) -> list[SubjectFiles]:
    """Every row of a repeated subject id gets a ``duplicate_subject`` problem (which one is right is unknowable)."""
    counts = Counter(s.subject for s in subjects)
    out = []
    for s in subjects:
        if counts[s.subject] > 1 and s.problem is None:
            s = replace(s, problem=Problem(
                "duplicate_subject", "source", s.source or "?", f"subject id appears {counts[s.subject]} times",
                "give every subject a unique id (rows with a repeated id are all skipped with data.skip_bad=true)",
            ))
        out.append(s)
    return out


def discover(layout: str, root: str, source: str, target: str, region: str, *,
             allow_outside_root: bool = True) -> list[SubjectFiles]:
    """Subject table of a dataset; raises ``LayoutError`` when the root is unusable or holds no subjects."""
    if layout == "brats":
        subjects = discover_brats(root, source, target)
    elif layout == "synthrad":
        subjects = discover_synthrad(root, region, source, target)
    elif layout == "csv":
        subjects = discover_csv(root, allow_outside_root)
    else:
        raise LayoutError(f"data.layout: unknown layout {layout!r}; use brats, synthrad, csv or phantom")
    if not subjects:
        raise LayoutError(f"data.root: no subjects found in {root} ({layout} layout); fix: check data.root and data.layout")
    return mark_duplicates(subjects)
