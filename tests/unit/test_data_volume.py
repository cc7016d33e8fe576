"""One subject -> slice table (no Ray): every bad input, geometry + normalisation round trip."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from bidpm.data import phantom as ph
from bidpm.io import storage
from bidpm.data.geometry import rebuild_volume
from bidpm.data.layouts import SubjectFiles, discover
from bidpm.data.manifest import DataError
from bidpm.data.shards import _check_writable
from bidpm.data.volume import SliceSettings, VolumeError, slice_table, write_table

SHAPE = (24, 20, 10)


def settings(**kw) -> SliceSettings:
    base = dict(source_modality="mr", target_modality="ct", image_size=(16, 16), slice_mode="central", num_slices=4,
                mr_percentiles=(0.5, 99.5), ct_window=(-1024.0, 3000.0), ct_modalities=("ct",), geometry_atol=1e-3, row_group_rows=8)
    base.update(kw)
    return SliceSettings(**base)


@pytest.fixture
def subj(tmp_path) -> SubjectFiles:
    root = ph.write_phantoms(tmp_path / "Task1", 1, SHAPE, 0, "synthrad", "brain")
    return discover("synthrad", str(root), "mr", "ct", "brain")[0]


def _fails(rec, kind, s=None, role=None):
    with pytest.raises(VolumeError) as e:
        slice_table(rec, "sub-x", "train", s or settings())
    msg = str(e.value)
    assert e.value.problem.kind == kind, msg
    assert rec.subject in msg and "fix:" in msg
    if role:
        assert e.value.problem.role == role
        loc = getattr(rec, role)
        assert loc and loc in msg  # names the file
    return msg


def test_good_subject_table(subj):
    table, meta = slice_table(subj, "sub-x", "train", settings())
    assert table.num_rows == 4 and table.column_names == ["subject", "slice", "split", "source", "target", "mask"]
    src = table.column("source").combine_chunks().to_numpy_ndarray()
    assert src.shape == (4, 16, 16) and src.dtype == np.float32 and src.min() >= -1 and src.max() <= 1
    assert table.column("slice").to_pylist() == [3, 4, 5, 6] == meta["slices"]
    assert meta["normalisation"]["target"] == {"kind": "ct_window", "low": -1024.0, "high": 3000.0}
    assert meta["normalisation"]["source"]["kind"] == "mr_percentile"


def test_geometry_round_trip_same_size(subj):
    """image_size == (X, Y): rebuild_volume must give back the original CT (HU) on the picked slices."""
    table, meta = slice_table(subj, "sub-x", "train", settings(image_size=SHAPE[:2]))
    tgt = table.column("target").combine_chunks().to_numpy_ndarray()
    vol, affine = rebuild_volume(tgt, meta, role="target")
    img = nib.load(subj.target)
    np.testing.assert_allclose(affine, img.affine, atol=1e-5)
    orig = np.asarray(img.dataobj, dtype=np.float32)
    k = meta["slices"]  # stored RAS; the file is RAS too, so indices agree
    np.testing.assert_allclose(vol[:, :, k], np.clip(orig[:, :, k], -1024, 3000), atol=0.05)
    assert np.all(vol[:, :, 0] == -1024.0)  # unpicked slices hold the background


def test_write_table_is_atomic_and_hashed(tmp_path, subj):
    table, _ = slice_table(subj, "sub-x", "train", settings())
    rows, sha = write_table(table, str(tmp_path / "t.parquet"), 2)
    assert rows == 4 and len(sha) == 64
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.num_row_groups == 2
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


# ---- bad inputs, one per kind -------------------------------------------------------------------
def test_missing_file(subj, tmp_path):
    rec = SubjectFiles(subj.subject, str(tmp_path / "gone.nii.gz"), subj.target, subj.mask)
    _fails(rec, "missing_file", role="source")


def test_missing_modality_problem_is_raised(tmp_path):
    root = ph.write_phantoms(tmp_path / "b", 1, SHAPE, 0, "brats", "brain")
    (root / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz").unlink()
    rec = discover("brats", str(root), "t1", "t2", "brain")[0]
    _fails(rec, "missing_modality", settings(source_modality="t1", target_modality="t2"))


def test_corrupt_gzip(subj):
    raw = open(subj.target, "rb").read()
    open(subj.target, "wb").write(raw[: len(raw) // 2])
    _fails(subj, "corrupt_gzip", role="target")


def test_not_nifti(subj):
    open(subj.source, "wb").write(gzip.compress(b"<html>not an image</html>" * 30))
    _fails(subj, "not_nifti", role="source")


def _rewrite(path, data, affine=None):
    img = nib.load(path)
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


@pytest.mark.parametrize("shape,label", [((24, 20), "2-D"), ((24, 20, 10, 2), "4-D")])
def test_wrong_dimensionality(subj, shape, label):
    _rewrite(subj.source, np.random.rand(*shape).astype(np.float32))
    assert label in _fails(subj, "bad_ndim", role="source")


def test_nan_voxels(subj):
    d = nib.load(subj.source).get_fdata().astype(np.float32)
    d[3, 3, 3] = np.nan
    _rewrite(subj.source, d)
    assert "1 NaN/Inf" in _fails(subj, "non_finite", role="source")


def test_constant_volume(subj):
    _rewrite(subj.target, np.full(SHAPE, 7, np.int16))
    _fails(subj, "constant", role="target")


def test_shape_mismatch(subj):
    _rewrite(subj.target, np.random.rand(24, 20, 12).astype(np.float32))
    assert "shape" in _fails(subj, "geometry_mismatch", role="target")


def test_affine_mismatch(subj):
    aff = nib.load(subj.target).affine.copy()
    aff[0, 3] += 2.5
    _rewrite(subj.target, nib.load(subj.target).get_fdata().astype(np.float32), aff)
    assert "affine" in _fails(subj, "geometry_mismatch", role="target")


def test_empty_mask(subj):
    _rewrite(subj.mask, np.zeros(SHAPE, np.uint8))
    _fails(subj, "empty_mask", role="mask")


def test_odd_scaling(subj):
    raw = bytearray(gzip.decompress(open(subj.source, "rb").read()))
    raw[112:116] = np.float32(np.inf).tobytes()
    open(subj.source, "wb").write(gzip.compress(bytes(raw)))
    _fails(subj, "bad_scaling", role="source")


def test_too_few_slices(subj):
    assert "fewer than the 11 requested" in _fails(subj, "too_few_slices", settings(num_slices=11))
    table, meta = slice_table(subj, "s", "train", settings(slice_mode="mask"))  # mask mode has no minimum
    assert table.num_rows == len(meta["slices"]) > 0


def test_duplicate_subject_problem_is_raised(tmp_path, subj):
    csv = tmp_path / "d.csv"
    csv.write_text(f"subject,source,target,mask\nz,{subj.source},{subj.target},{subj.mask}\nz,{subj.source},{subj.target},{subj.mask}\n")
    rec = discover("csv", str(csv), "source", "target", "brain")[0]
    _fails(rec, "duplicate_subject", settings(source_modality="source", target_modality="target", ct_modalities=("target",)))


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="output not writable: .*a_file.*data.shards_dir"):
        _check_writable(str(blocker / "shards"))


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    class DiesBeforeRename:  # a local filesystem whose final move fails (crash between write and rename)
        def __init__(self):
            self.fs = pafs.LocalFileSystem()

        def open_output_stream(self, path):
            return self.fs.open_output_stream(path)

        def move(self, src, dst):
            raise OSError("killed")

    monkeypatch.setattr(storage, "resolve", lambda loc: (DiesBeforeRename(), loc))
    with pytest.raises(OSError):
        storage.write_bytes_atomic(str(tmp_path / "manifest.json"), b"{}")
    assert not (tmp_path / "manifest.json").exists()
