"""bidpm.io.nifti: RAS reorientation against independent numpy flips, and every file-level failure."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from bidpm.io.nifti import NiftiError, from_ras, load_nifti, read_volume, save_nifti


def _ras_volume(shape=(6, 5, 4)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1.0


def _write(path, data, affine, **hdr) -> str:
    img = nib.Nifti1Image(data, affine)
    for k, v in hdr.items():
        img.header[k] = v
    nib.save(img, str(path))
    return str(path)


def test_lps_file_comes_out_ras_like_numpy_flips(tmp_path):
    ras = _ras_volume()
    # Store in LPS order: flip x and y; the affine's negative diagonal says so.
    lps = ras[::-1, ::-1, :].copy()
    affine = np.diag([-2.0, -3.0, 4.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, -5.0]
    v = load_nifti(_write(tmp_path / "lps.nii.gz", lps, affine))
    assert v.original_axcodes == ("L", "P", "S")
    np.testing.assert_array_equal(v.data, ras)
    assert v.spacing == (2.0, 3.0, 4.0)
    assert nib.aff2axcodes(v.affine) == ("R", "A", "S")
    # voxel (0,0,0) of RAS data is voxel (X-1, Y-1, 0) of the file: same world point
    x, y, _ = ras.shape
    np.testing.assert_allclose(v.affine @ [0, 0, 0, 1], affine @ [x - 1, y - 1, 0, 1])


def test_permuted_axes_come_out_ras(tmp_path):
    ras = _ras_volume()
    # File axes: (S, R, A) -> data is ras transposed to (z, x, y); affine maps i->S, j->R, k->A.
    stored = np.transpose(ras, (2, 0, 1)).copy()
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 1.0, 1.0, 1.0, 1.0
    v = load_nifti(_write(tmp_path / "sra.nii", stored, affine))
    assert v.original_axcodes == ("S", "R", "A")
    np.testing.assert_array_equal(v.data, ras)
    # transverse slice k of RAS = numpy ras[:, :, k]
    np.testing.assert_array_equal(v.data[:, :, 2], stored[2])


def test_from_ras_inverts_reorientation(tmp_path):
    ras = _ras_volume()
    affine = np.diag([-1.0, 1.0, -2.0, 1.0])
    v = load_nifti(_write(tmp_path / "lai.nii.gz", ras[::-1, :, ::-1].copy(), affine))
    back, back_aff = from_ras(v.data, v.affine, v.original_axcodes)
    np.testing.assert_array_equal(back, ras[::-1, :, ::-1])
    np.testing.assert_allclose(back_aff, affine)
    out = save_nifti(tmp_path / "o.nii.gz", back, back_aff)
    again = load_nifti(out)
    np.testing.assert_array_equal(again.data, v.data)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp leftovers


@pytest.fixture
def good_bytes(tmp_path) -> bytes:
    return (tmp_path / "g.nii.gz").read_bytes() if _write(tmp_path / "g.nii.gz", _ras_volume(), np.eye(4)) else b""


def _kind(raw: bytes) -> str:
    with pytest.raises(NiftiError) as e:
        read_volume(raw, "subj/x.nii.gz")
    assert "subj/x.nii.gz" in str(e.value) and "fix:" in str(e.value)
    return e.value.kind


def test_truncated_gzip(good_bytes):
    assert _kind(good_bytes[: len(good_bytes) // 2]) == "corrupt_gzip"


def test_not_nifti():
    assert _kind(b"hello, this is a text file\n" * 40) == "not_nifti"
    assert _kind(gzip.compress(b"\0" * 400)) == "not_nifti"


def test_truncated_uncompressed_data(tmp_path):
    raw = open(_write(tmp_path / "u.nii", _ras_volume((20, 20, 10)), np.eye(4)), "rb").read()
    assert _kind(raw[:-500]) == "truncated"


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1), (6, 5, 4, 3)])
def test_not_3d(tmp_path, shape):
    raw = open(_write(tmp_path / "d.nii", np.random.rand(*shape).astype(np.float32), np.eye(4)), "rb").read()
    assert _kind(raw) == "bad_ndim"


def test_trailing_singleton_4d_is_3d(tmp_path):
    v = load_nifti(_write(tmp_path / "s.nii", _ras_volume()[..., None], np.eye(4)))
    assert v.data.shape == (6, 5, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite(tmp_path, bad):
    d = _ras_volume()
    d[1, 2, 3] = bad
    assert _kind(open(_write(tmp_path / "n.nii", d, np.eye(4)), "rb").read()) == "non_finite"


def test_constant(tmp_path):
    assert _kind(open(_write(tmp_path / "c.nii", np.full((6, 5, 4), 3.0, np.float32), np.eye(4)), "rb").read()) == "constant"
    # masks may be constant (all ones)
    read_volume(open(tmp_path / "c.nii", "rb").read(), "m", check_constant=False)


def test_odd_scaling(tmp_path):
    raw = bytearray(open(_write(tmp_path / "s.nii", _ras_volume().astype(np.int16), np.eye(4)), "rb").read())
    raw[112:116] = np.float32(np.inf).tobytes()  # scl_slope (nibabel resets it on save, so patch the bytes)
    assert _kind(bytes(raw)) == "bad_scaling"
    raw[112:120] = np.array([2.0, np.nan], np.float32).tobytes()  # finite slope, NaN intercept
    assert _kind(bytes(raw)) == "bad_scaling"


def test_integer_scaling_applied(tmp_path):
    p = _write(tmp_path / "s.nii", _ras_volume().astype(np.int16), np.eye(4), scl_slope=0.5, scl_inter=-3.0)
    np.testing.assert_allclose(load_nifti(p).data, _ras_volume() * 0.5 - 3.0)


def test_complex_rejected(tmp_path):
    p = _write(tmp_path / "c.nii", (_ras_volume() + 1j).astype(np.complex64), np.eye(4))
    assert _kind(open(p, "rb").read()) == "bad_scaling"


def test_header_text_never_in_volume(tmp_path):
    p = _write(tmp_path / "h.nii", _ras_volume(), np.eye(4), descrip=b"Jane Doe 1970-01-01")
    v = load_nifti(p)
    assert "Jane" not in repr(v.__dict__)


@pytest.mark.parametrize("dtype", [">f4", "<i2", ">i2", "<f8", "u1"])
def test_unscaled_voxels_any_byte_order_and_type(tmp_path, dtype):
    # The unscaled fast path reads voxels straight from the decompressed bytes; compare with the
    # values written, for other byte orders and integer types too, and behind a header extension.
    d = _ras_volume((7, 6, 5)).astype(dtype)
    img = nib.Nifti1Image(d, np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 100))  # vox_offset > 352
    img.set_data_dtype(np.dtype(dtype))
    nib.save(img, str(tmp_path / "e.nii.gz"))
    v = load_nifti(tmp_path / "e.nii.gz")
    assert v.data.dtype == np.float32
    np.testing.assert_array_equal(v.data, d.astype(np.float64))


def test_constant_check_sees_a_single_differing_voxel(tmp_path):
    # The constant check samples voxels first; a volume equal everywhere but one voxel the sample
    # skips is still not constant.
    d = np.full((40, 40, 30), 5.0, np.float32)
    d[17, 23, 11] = 6.0
    assert load_nifti(_write(tmp_path / "one.nii", d, np.eye(4))).data.max() == 6.0
