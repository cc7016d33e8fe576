"""Paired phantom volumes (head and pelvis) written as real NIfTI in the BraTS / SynthRAD layouts.

Why phantoms: this platform must demo, test and benchmark without patient data, and a pair of
modalities that are a *monotone* function of each other would make synthesis trivial. Here both
modalities render one tissue label map with per-modality intensity tables that are related
non-linearly and non-monotonically (CSF dark on T1, bright on T2; bone bright on CT, dark on MR; air
and fat both dark-ish on CT at different HU but fat bright on MR), then each gets its own smooth
texture, partial-volume blur, bias field (MR) and noise. Anatomy varies per subject (ellipsoid axes,
rotation, skull thickness, cortical folding, ventricle size, lesions). Everything is deterministic in
(seed, subject index).

Layouts written (the readers in ``bidpm.data.layouts`` parse them like real data):
- brats:    ``<root>/BraTS2021_<00000>/BraTS2021_<00000>_{t1,t1ce,t2,flair}.nii.gz``, skull-stripped
            (background exactly 0, like BraTS), stored in LPS voxel order (as ITK exports do) so the
            RAS reorientation is exercised.
- synthrad: ``<root>/<region>/1<B|P>A<000>/{mr,ct,mask}.nii.gz``: full head (or pelvis) with skull,
            CT in int16 HU, MR float32, body mask uint8, stored RAS.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import ndimage

from bidpm.io.nifti import from_ras, save_nifti

# Tissue labels shared by both regions.
BG, SKIN, BONE, CSF, GM, WM, LESION, MUSCLE, MARROW, FLUID, GAS = range(11)

# Mean intensity per label (index = label). MR in arbitrary units (x1000 when written), CT in HU.
_TABLES: dict[str, dict[int, float]] = {
    "t1": {BG: 0, SKIN: 0.9, BONE: 0.08, CSF: 0.15, GM: 0.55, WM: 0.8, LESION: 0.35, MUSCLE: 0.4, MARROW: 0.75, FLUID: 0.1, GAS: 0.0},
    "t1ce": {BG: 0, SKIN: 0.9, BONE: 0.08, CSF: 0.15, GM: 0.55, WM: 0.8, LESION: 0.95, MUSCLE: 0.4, MARROW: 0.75, FLUID: 0.1, GAS: 0.0},
    "t2": {BG: 0, SKIN: 0.55, BONE: 0.05, CSF: 1.0, GM: 0.6, WM: 0.4, LESION: 0.85, MUSCLE: 0.3, MARROW: 0.6, FLUID: 1.0, GAS: 0.0},
    "flair": {BG: 0, SKIN: 0.6, BONE: 0.05, CSF: 0.1, GM: 0.55, WM: 0.45, LESION: 1.0, MUSCLE: 0.3, MARROW: 0.5, FLUID: 0.1, GAS: 0.0},
    "ct": {BG: -1000, SKIN: -60, BONE: 1300, CSF: 8, GM: 40, WM: 28, LESION: 50, MUSCLE: 45, MARROW: 250, FLUID: 10, GAS: -900},
}
_TABLES["mr"] = _TABLES["t1"]  # SynthRAD MR (brain) is T1-weighted-like; pelvis MR uses t2 below
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel centres in [-1, 1] per axis (RAS order), as broadcastable arrays."""
    axes = [(np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1 for n in shape]
    return np.meshgrid(*axes, indexing="ij", sparse=True)  # type: ignore[return-value]


def _ellipsoid_r(x, y, z, centre, axes, theta: float = 0.0) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface), rotated by ``theta`` about the S axis."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (dz / axes[2]) ** 2)


def head_labels(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """(X, Y, Z) uint8 labels: skin, skull, CSF, cortex (folded), white matter, ventricles, lesions."""
    x, y, z = _grid(shape)
    theta = rng.uniform(-0.15, 0.15)
    centre = rng.uniform(-0.04, 0.04, 3)
    axes = np.array([0.78, 0.9, 0.95]) * rng.uniform(0.9, 1.05, 3)
    r = _ellipsoid_r(x, y, z, centre, axes, theta)
    ph = rng.uniform(0, 2 * np.pi, 3)
    k = rng.uniform(7, 11)
    folds = 0.035 * np.sin(k * x + ph[0]) * np.sin(k * y + ph[1]) * np.cos(0.6 * k * z + ph[2])
    skin, skull = 0.05, rng.uniform(0.06, 0.1)
    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0] = SKIN
    labels[r < 1.0 - skin] = BONE
    inner = 1.0 - skin - skull
    labels[r < inner] = CSF
    labels[r + folds < inner - 0.03] = GM
    labels[r + folds < inner - 0.13] = WM
    vent = rng.uniform(0.7, 1.3)
    for side in (-1, 1):
        rv = _ellipsoid_r(x, y, z, centre + np.array([side * 0.08, 0.05, 0.05]), np.array([0.05, 0.22, 0.14]) * vent, theta)
        labels[rv < 1.0] = CSF
    for _ in range(int(rng.integers(1, 4))):
        pos = centre + rng.uniform(-0.35, 0.35, 3) * np.array([1.0, 1.0, 0.6])
        rl = _ellipsoid_r(x, y, z, pos, np.full(3, rng.uniform(0.07, 0.14)))
        labels[(rl < 1.0) & (labels >= GM)] = LESION
    return labels


def pelvis_labels(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """(X, Y, Z) uint8 labels: fat, muscle, hip bones with marrow, sacrum, bladder (fluid), rectal gas."""
    x, y, z = _grid(shape)
    theta = rng.uniform(-0.1, 0.1)
    centre = np.array([*rng.uniform(-0.04, 0.04, 2), 0.0])
    body = np.array([0.9, 0.62, 3.0]) * rng.uniform(0.88, 1.05, 3)
    labels = np.zeros(shape, np.uint8)
    r = _ellipsoid_r(x, y, z, centre, body, theta)
    labels[r < 1.0] = SKIN  # subcutaneous fat
    labels[_ellipsoid_r(x, y, z, centre, body * np.array([0.85, 0.8, 1.0]), theta) < 1.0] = MUSCLE
    bone_r = rng.uniform(0.16, 0.22)
    for side in (-1, 1):
        pos = centre + np.array([side * rng.uniform(0.5, 0.6), rng.uniform(-0.05, 0.1), 0.0])
        rb = _ellipsoid_r(x, y, z, pos, np.array([bone_r, bone_r * 1.2, 0.9]), theta)
        labels[rb < 1.0] = BONE
        labels[rb < 0.7] = MARROW
    rs = _ellipsoid_r(x, y, z, centre + np.array([0.0, -0.42, 0.0]), np.array([0.18, 0.1, 1.5]), theta)
    labels[rs < 1.0] = BONE
    labels[rs < 0.6] = MARROW
    bladder = rng.uniform(0.14, 0.24)
    labels[_ellipsoid_r(x, y, z, centre + np.array([0.0, 0.25, 0.1]), np.array([bladder * 1.3, bladder, 0.6]), theta) < 1.0] = FLUID
    labels[_ellipsoid_r(x, y, z, centre + np.array([0.0, -0.2, 0.0]), np.full(3, rng.uniform(0.05, 0.09)) * np.array([1, 1, 6]), theta) < 1.0] = GAS
    return labels


def render(labels: np.ndarray, modality: str, rng: np.random.Generator, *, bias: bool, noise: float) -> np.ndarray:
    """Label map -> one modality: intensity table (+-5% per tissue per subject), smooth texture,
    partial-volume blur, multiplicative bias field (MR only) and noise (Rician for MR, Gaussian for CT).
    Returns float32 (X, Y, Z): CT in HU, MR in [0, ~1] units."""
    table = _TABLES[modality]
    is_ct = modality == "ct"
    lut = np.array([table[i] for i in range(len(table))], np.float32)
    jitter = rng.uniform(0.95, 1.05, lut.shape).astype(np.float32)
    if is_ct:
        lut = np.where(lut > 0, lut * jitter, lut)
    else:
        lut = lut * jitter
    img = lut[labels]
    texture = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 1.5)
    texture /= max(float(np.abs(texture).max()), 1e-6)
    if is_ct:  # cancellous vs cortical bone: a smooth HU modulation inside bone only
        img += np.where(labels == BONE, 400.0 * texture, 12.0 * texture * (labels != BG))
    else:
        img += 0.06 * texture * (labels != BG)
    img = ndimage.gaussian_filter(img, 0.6)
    if is_ct:
        img += rng.normal(0.0, noise * 1000.0, img.shape).astype(np.float32)
        return img.astype(np.float32)
    if bias:
        x, y, z = _grid(labels.shape)
        c = rng.uniform(-0.2, 0.2, 6)
        img *= np.exp(c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * z * z + c[5] * x * x).astype(np.float32)
    n1 = rng.normal(0.0, noise, img.shape).astype(np.float32)
    n2 = rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)


def phantom_subject(seed: int, index: int, shape: tuple[int, int, int], region: str, modalities: Iterable[str]) -> dict[str, np.ndarray]:
    """One subject's volumes in RAS order: ``{"labels", "mask", <modality>: float32 (X, Y, Z)}``."""
    rng = np.random.default_rng([seed, index])
    labels = head_labels(rng, shape) if region == "brain" else pelvis_labels(rng, shape)
    out: dict[str, np.ndarray] = {"labels": labels, "mask": ndimage.binary_dilation(labels != BG, iterations=1).astype(np.uint8)}
    for m in modalities:
        tissue = "t2" if (region == "pelvis" and m == "mr") else m  # pelvic MR in SynthRAD is T2-like
        out[m] = render(labels, tissue, np.random.default_rng([seed, index, hash_name(m)]), bias=True, noise=0.01 if m != "ct" else 0.015)
    return out


def hash_name(name: str) -> int:
    """Stable small int per modality name (Python's hash() is salted per process)."""
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def ras_affine(shape: tuple[int, int, int], region: str) -> np.ndarray:
    """Voxel -> mm for a phantom: field of view ~ a head (200x230x180 mm) or pelvis (400x280x200 mm), centred."""
    fov = np.array([200.0, 230.0, 180.0] if region == "brain" else [400.0, 280.0, 200.0])
    spacing = fov / np.array(shape)
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = -spacing * (np.array(shape) - 1) / 2
    return aff


def subject_ids(layout: str, region: str, n: int) -> list[str]:
    if layout == "brats":
        return [f"BraTS2021_{i:05d}" for i in range(n)]
    return [f"1{'B' if region == 'brain' else 'P'}A{i:03d}" for i in range(n)]


def _write(path: Path, data_ras: np.ndarray, affine_ras: np.ndarray, axcodes: tuple[str, str, str], dtype) -> None:
    data, affine = from_ras(data_ras, affine_ras, axcodes)
    save_nifti(path, data, affine, dtype=dtype)


def write_subject(root: Path, layout: str, region: str, subject: str, vols: dict[str, np.ndarray], affine: np.ndarray) -> list[Path]:
    """Write one subject's volumes in ``layout``; returns the files written."""
    written = []
    if layout == "brats":
        d = root / subject
        brain = np.isin(vols["labels"], (CSF, GM, WM, LESION))  # skull-stripped, background exactly 0
        for m in BRATS_MODALITIES:
            p = d / f"{subject}_{m}.nii.gz"
            _write(p, vols[m] * brain * 1000.0, affine, ("L", "P", "S"), np.float32)
            written.append(p)
    else:
        d = root / region / subject
        for name, arr, dtype in (("mr", vols["mr"] * 1000.0, np.float32), ("ct", np.round(vols["ct"]), np.int16), ("mask", vols["mask"], np.uint8)):
            p = d / f"{name}.nii.gz"
            _write(p, arr, affine, ("R", "A", "S"), dtype)
            written.append(p)
    return written


MARKER = "phantoms.json"


class PhantomFolderError(ValueError):
    """Phantoms were asked for in a folder that holds other data (no phantoms marker): refused, nothing written."""


def write_phantoms(root: str | os.PathLike, num_subjects: int, shape: Iterable[int], seed: int, layout: str, region: str) -> Path:
    """Generate ``num_subjects`` phantoms under ``root`` (idempotent).

    A marker ``phantoms.json`` holding the generator settings is written last; when it matches, the
    call is a no-op (files keep their mtimes, so ingest sees unchanged inputs). When it differs, the
    previous phantom subjects are removed first so the folder never mixes two settings. A folder without
    the marker must be empty (or absent): phantoms never go where other files are (a real data set's
    root named with ``data.layout=phantom`` would be overwritten), ``PhantomFolderError`` otherwise.
    """
    root = Path(root)
    shape = tuple(int(s) for s in shape)
    settings = {"version": 1, "num_subjects": num_subjects, "shape": list(shape), "seed": seed, "layout": layout, "region": region}
    marker = root / MARKER
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except ValueError:
            old = None
        if old == settings:
            return root
        if isinstance(old, dict):
            base = root if old.get("layout") == "brats" else root / str(old.get("region"))
            for s in subject_ids(str(old.get("layout")), str(old.get("region")), int(old.get("num_subjects", 0))):
                shutil.rmtree(base / s, ignore_errors=True)
        marker.unlink()
    elif root.is_dir() and (others := sorted(p.name for p in root.iterdir())):
        raise PhantomFolderError(
            f"data.layout=phantom: {root} is not empty ({len(others)} entries, e.g. {others[:3]}) and holds no {MARKER}, "
            f"so it is not a phantom folder; phantoms are never written over other files. Fix: leave data.root unset "
            f"(phantoms go to <output_dir>/phantoms) or point it at an empty folder")
    root.mkdir(parents=True, exist_ok=True)
    modalities = BRATS_MODALITIES if layout == "brats" else ("mr", "ct")
    affine = ras_affine(shape, region)  # type: ignore[arg-type]
    for i, subject in enumerate(subject_ids(layout, region, num_subjects)):
        vols = phantom_subject(seed, i, shape, region, modalities)  # type: ignore[arg-type]
        write_subject(root, layout, region, subject, vols, affine)
    tmp = root / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(settings, indent=1))
    os.replace(tmp, marker)
    return root
