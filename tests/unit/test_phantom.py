"""Phantoms: real NIfTI in both layouts, deterministic, anatomy-driven non-monotonic contrasts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bidpm.data import phantom as ph
from bidpm.io.nifti import load_nifti

SHAPE = (40, 40, 16)


def test_brats_layout_files_and_skull_stripping(tmp_path):
    ph.write_phantoms(tmp_path, 2, SHAPE, 0, "brats", "brain")
    for sid in ("BraTS2021_00000", "BraTS2021_00001"):
        for m in ("t1", "t1ce", "t2", "flair"):
            v = load_nifti(tmp_path / sid / f"{sid}_{m}.nii.gz")
            assert v.data.shape == SHAPE and v.original_axcodes == ("L", "P", "S")
            assert v.data[0, 0, 0] == 0.0 and (v.data == 0).mean() > 0.3  # background exactly 0
    assert json.loads((tmp_path / "phantoms.json").read_text())["num_subjects"] == 2


def test_synthrad_layout_brain_and_pelvis(tmp_path):
    for region, code in (("brain", "B"), ("pelvis", "P")):
        ph.write_phantoms(tmp_path / region, 1, (32, 24, 12), 0, "synthrad", region)
        d = tmp_path / region / region / f"1{code}A000"
        ct, mr, mask = (load_nifti(d / f"{n}.nii.gz") for n in ("ct", "mr", "mask"))
        assert ct.data.shape == mr.data.shape == mask.data.shape == (32, 24, 12)
        assert ct.data.min() < -900 and ct.data.max() > 700  # air and bone in HU
        assert set(np.unique(mask.data)) == {0.0, 1.0}
        np.testing.assert_allclose(ct.affine, mr.affine)


def test_deterministic_by_seed_and_subject():
    a = ph.phantom_subject(3, 1, SHAPE, "brain", ("t1", "t2"))
    b = ph.phantom_subject(3, 1, SHAPE, "brain", ("t1", "t2"))
    c = ph.phantom_subject(3, 2, SHAPE, "brain", ("t1", "t2"))
    np.testing.assert_array_equal(a["t1"], b["t1"])
    assert (a["labels"] != c["labels"]).mean() > 0.01  # per-subject shape variation


def _median(v, labels, label):
    return float(np.median(v[labels == label]))


@pytest.mark.parametrize("seed", [0, 1])
def test_contrasts_are_non_monotonic(seed):
    s = ph.phantom_subject(seed, 0, SHAPE, "brain", ("t1", "t2", "ct", "mr"))
    lab = s["labels"]
    t1 = {k: _median(s["t1"], lab, k) for k in (ph.CSF, ph.GM, ph.WM)}
    t2 = {k: _median(s["t2"], lab, k) for k in (ph.CSF, ph.GM, ph.WM)}
    assert t1[ph.CSF] < t1[ph.GM] < t1[ph.WM]  # CSF dark on T1
    assert t2[ph.CSF] > t2[ph.GM] > t2[ph.WM]  # CSF bright on T2
    ct_bone, ct_wm, ct_bg = (_median(s["ct"], lab, k) for k in (ph.BONE, ph.WM, ph.BG))
    mr_bone, mr_wm, mr_bg = (_median(s["mr"], lab, k) for k in (ph.BONE, ph.WM, ph.BG))
    assert ct_bone > ct_wm > ct_bg and mr_wm > mr_bone  # bone bright on CT, dark on MR
    # non-monotonic: CT order bg < wm < bone, MR order bone, bg both dark while wm bright
    assert mr_bg < mr_wm and mr_bone < mr_wm


def test_bias_field_and_noise_present():
    s = ph.phantom_subject(0, 0, SHAPE, "brain", ("t1",))
    wm = s["labels"] == ph.WM
    assert s["t1"][wm].std() > 0.01
    x = np.nonzero(wm)[0]
    left, right = s["t1"][wm][x < 20].mean(), s["t1"][wm][x >= 20].mean()
    assert abs(left - right) > 1e-3  # smooth bias field, not exactly symmetric


def test_write_phantoms_idempotent_and_replaces_on_change(tmp_path):
    ph.write_phantoms(tmp_path, 2, (24, 24, 10), 0, "brats", "brain")
    f = tmp_path / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz"
    mtime = f.stat().st_mtime_ns
    ph.write_phantoms(tmp_path, 2, (24, 24, 10), 0, "brats", "brain")
    assert f.stat().st_mtime_ns == mtime
    ph.write_phantoms(tmp_path, 1, (24, 24, 10), 1, "brats", "brain")
    assert not f.parent.exists()  # the old set is removed, never mixed


def test_phantoms_are_never_written_over_other_files(tmp_path):
    """A real data set's root named with data.layout=phantom (no phantoms.json): refused, the files untouched;
    through the ingest the refusal is a one-line DataError naming the folder and the fix."""
    from bidpm.config import load_config
    from bidpm.data.manifest import DataError
    from bidpm.data.shards import prepare_shards

    real = tmp_path / "BraTS2021" / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a real patient's volume")
    with pytest.raises(ph.PhantomFolderError, match=r"not empty .* no phantoms.json"):
        ph.write_phantoms(tmp_path / "BraTS2021", 2, (24, 24, 10), 0, "brats", "brain")
    assert real.read_bytes() == b"a real patient's volume" and sorted(p.name for p in real.parent.parent.iterdir()) == \
        ["BraTS2021_00000"]
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", "data.layout=phantom", f"data.root={tmp_path / 'BraTS2021'}"])
    with pytest.raises(DataError, match="leave data.root unset"):
        prepare_shards(cfg)                                     # refused before any Ray work
    assert real.read_bytes() == b"a real patient's volume"
    ph.write_phantoms(tmp_path / "empty", 1, (24, 24, 10), 0, "brats", "brain")   # an empty or new folder: fine
    assert (tmp_path / "empty" / ph.MARKER).is_file()


def test_a_job_with_phantoms_into_other_files_stops_before_ray(tmp_path):
    from bidpm.config import ConfigError, load_config
    from bidpm.prechecks import check_job

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "patient.nii.gz").write_bytes(b"real")
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", "data.layout=phantom", f"data.root={tmp_path / 'data'}"])
    with pytest.raises(ConfigError, match="phantoms would be written over them"):
        check_job(cfg, "tune_steps")
    check_job(load_config(None, [f"output_dir={tmp_path / 'out'}", "data.layout=phantom"]), "tune_steps")   # the default folder
