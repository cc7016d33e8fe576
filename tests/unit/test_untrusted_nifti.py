"""Untrusted NIfTI files (issue 22, item 1): what a crafted file may make the reader allocate.

The three files of the review, written here: a 1 KB header declaring 1024x1024x512 int16 with
scl_slope=2, a ~0.6 MB gzip that inflates to 1.2 GB, and a ~14 MB gzip that inflates to ~14 GB. Each
is refused with a message naming the file, and the reading process's peak RSS (``ru_maxrss`` of a
fresh interpreter, an independent measure) stays within its imports + the file + 2 x the cap + 48 MiB
slack. Before the fix the first reached ~1 GB, the second 1.2 GB, the third a MemoryError.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bidpm.io.nifti import NiftiError, load_nifti, read_volume
from bidpm.io.nifti_guard import DEFAULT_MAX_BYTES

MiB = 1024**2
ZEROS = 16 * MiB  # one gzip member of zeros; members repeat so a GB-sized stream costs ~10 ms to make

_PROBE = r"""
import json, resource, sys
from bidpm.io.nifti import NiftiError, read_volume
raw = open(sys.argv[1], "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    read_volume(raw, sys.argv[1], max_bytes=int(sys.argv[2]))
    out = {"kind": None, "message": ""}
except NiftiError as exc:
    out = {"kind": exc.kind, "message": str(exc)}
out.update(base=base, peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, raw=len(raw))
print(json.dumps(out))
"""


def _header(shape, dtype, slope=1.0) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["scl_slope"], hdr["scl_inter"] = slope, 0.0
    hdr.set_data_offset(352)
    return hdr.binaryblock + b"\x00" * 4


def _bomb(shape, dtype, total: int) -> bytes:
    """A multi-member gzip whose first member holds the header; ``total`` bytes of zeros in all."""
    member = gzip.compress(b"\x00" * ZEROS, compresslevel=9)
    head = gzip.compress(_header(shape, dtype) + b"\x01" * 4096, compresslevel=9)
    return head + member * (total // ZEROS)


def _probe(path, cap: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(cap)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _assert_bounded(r: dict, cap: int) -> None:
    bound = r["base"] + r["raw"] + 2 * cap + 48 * MiB
    assert r["peak"] <= bound, f"peak RSS {r['peak'] / MiB:.0f} MiB over the bound {bound / MiB:.0f} MiB"


def test_a_1kb_header_declaring_1gib_is_refused_before_anything_is_allocated(tmp_path):
    path = tmp_path / "crafted.nii"
    path.write_bytes(_header((1024, 1024, 512), np.int16, slope=2.0) + b"\x07" * 600)
    assert path.stat().st_size < 1024
    r = _probe(path, DEFAULT_MAX_BYTES)  # within the default cap as declared, but the file holds 600 bytes
    assert r["kind"] == "truncated" and "crafted.nii" in r["message"] and "1.0 GiB" in r["message"]
    _assert_bounded(r, 0)  # nothing of the declared size: imports + the file + slack
    r = _probe(path, 256 * MiB)  # a smaller cap: refused for its declared size first
    assert r["kind"] == "too_large" and "data.max_volume_bytes" in r["message"]


def test_a_gzip_bomb_stops_at_the_cap(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(_bomb((1024, 1024, 1200), np.uint8, 1200 * MiB))
    assert path.stat().st_size < 1.5 * MiB
    cap = 64 * MiB
    r = _probe(path, cap)
    assert r["kind"] == "too_large" and "inflates to more than 64.0 MiB" in r["message"], r
    _assert_bounded(r, cap)


def test_a_14mb_gzip_of_14gb_is_refused_not_a_memory_error(tmp_path):
    path = tmp_path / "big.nii.gz"
    path.write_bytes(_bomb((2048, 2048, 3500), np.uint8, 14000 * MiB))
    assert 10 * MiB < path.stat().st_size < 20 * MiB
    cap = 64 * MiB
    r = _probe(path, cap)
    assert r["kind"] == "too_large", r
    _assert_bounded(r, cap)


def test_the_declared_float32_size_counts_and_the_file_size_is_checked_before_reading(tmp_path, monkeypatch):
    data = np.ones((64, 64, 64), np.int16)  # 512 KiB stored, 1 MiB as float32
    data[0, 0, 0] = 2
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "v.nii"))
    raw = (tmp_path / "v.nii").read_bytes()
    assert read_volume(raw, "v.nii", max_bytes=1 * MiB).data.shape == (64, 64, 64)
    with pytest.raises(NiftiError, match=r"as float32\), over data.max_volume_bytes") as e:
        read_volume(raw, "v.nii", max_bytes=MiB - 1)
    assert e.value.kind == "too_large"
    # load_nifti refuses by the file's size without reading it
    monkeypatch.setattr("pathlib.Path.read_bytes", lambda self: pytest.fail("the file was read"))
    with pytest.raises(NiftiError, match="the file is 512.3 KiB"):
        load_nifti(tmp_path / "v.nii", max_bytes=400 * 1024)


def test_multi_member_gzip_and_zero_padding_still_read(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "v.nii"))
    raw = (tmp_path / "v.nii").read_bytes()
    split = gzip.compress(raw[:200]) + gzip.compress(raw[200:]) + b"\x00" * 16
    np.testing.assert_array_equal(read_volume(split, "v.nii.gz").data, data)
    with pytest.raises(NiftiError, match="trailing bytes") as e:
        read_volume(gzip.compress(raw) + b"junk", "v.nii.gz")
    assert e.value.kind == "corrupt_gzip"
    with pytest.raises(NiftiError, match="corrupt or truncated") as e:
        read_volume(gzip.compress(raw)[:-20], "v.nii.gz")
    assert e.value.kind == "corrupt_gzip"


def test_a_memory_error_is_the_files_error(monkeypatch):
    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr("bidpm.io.nifti._read_volume", oom)
    with pytest.raises(NiftiError, match="ran out of memory") as e:
        read_volume(b"\x00" * 400, "x.nii")
    assert e.value.kind == "out_of_memory" and "data.task_memory_bytes" in str(e.value)


def test_the_ingest_applies_data_max_volume_bytes(tmp_path):
    from bidpm.config import load_config
    from bidpm.data.layouts import SubjectFiles
    from bidpm.data.volume import SliceSettings, VolumeError, load_pair

    for name in ("s", "t"):
        data = np.random.default_rng(0).random((64, 64, 64)).astype(np.float32)  # 1 MiB
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / f"{name}.nii"))
    rec = SubjectFiles("p1", str(tmp_path / "s.nii"), str(tmp_path / "t.nii"))
    cfg = load_config(None, ["data.max_volume_bytes=1048576"])
    with pytest.raises(VolumeError, match="p1: source file .*s.nii: the file is 1.0 MiB, over data.max_volume_bytes") as e:
        load_pair(rec, SliceSettings.from_data_config(cfg.data))
    assert e.value.problem.kind == "too_large"
    src, _, _, _ = load_pair(rec, SliceSettings.from_data_config(load_config(None, ["data.max_volume_bytes=2097152"]).data))
    assert src.data.shape == (64, 64, 64)
