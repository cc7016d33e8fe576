"""Layout readers: BraTS, SynthRAD, CSV -> subject table, with discovery-time problems."""

from __future__ import annotations

import shutil

import pytest

from bidpm.data import phantom as ph
from bidpm.data.layouts import LayoutError, discover

SHAPE = (24, 24, 10)


@pytest.fixture
def brats(tmp_path):
    return ph.write_phantoms(tmp_path / "brats", 3, SHAPE, 0, "brats", "brain")


@pytest.fixture
def synthrad(tmp_path):
    return ph.write_phantoms(tmp_path / "Task1", 2, SHAPE, 0, "synthrad", "pelvis")


def test_brats(brats):
    subs = discover("brats", str(brats), "t1", "flair", "brain")
    assert [s.subject for s in subs] == [f"BraTS2021_{i:05d}" for i in range(3)]
    assert subs[0].source.endswith("BraTS2021_00000_t1.nii.gz") and subs[0].target.endswith("_flair.nii.gz")
    assert subs[0].mask is None and all(s.problem is None for s in subs)


def test_brats_missing_modality(brats):
    (brats / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    subs = discover("brats", str(brats), "t1", "t2", "brain")
    p = subs[1].problem
    assert p.kind == "missing_modality" and p.role == "target"
    msg = p.message(subs[1].subject)
    assert "BraTS2021_00001" in msg and "'t2' missing" in msg and "found: flair, t1, t1ce" in msg


def test_synthrad(synthrad):
    subs = discover("synthrad", str(synthrad), "mr", "ct", "pelvis")
    assert [s.subject for s in subs] == ["1PA000", "1PA001"]
    assert subs[0].mask.endswith("mask.nii.gz") and subs[0].target.endswith("ct.nii.gz")
    with pytest.raises(LayoutError, match="Task1 folder"):
        discover("synthrad", str(synthrad), "mr", "ct", "brain")


def test_synthrad_missing_mask(synthrad):
    (synthrad / "pelvis" / "1PA001" / "mask.nii.gz").unlink()
    p = discover("synthrad", str(synthrad), "mr", "ct", "pelvis")[1].problem
    assert p.kind == "missing_file" and p.role == "mask"


def test_csv(tmp_path, brats):
    d = brats / "BraTS2021_00000"
    shutil.copy(d / "BraTS2021_00000_t1.nii.gz", tmp_path / "a_src.nii.gz")
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "subject,source,target,mask\n"
        f"p1,a_src.nii.gz,{d / 'BraTS2021_00000_t2.nii.gz'},\n"
        "p2,nope.nii.gz,a_src.nii.gz,\n"
    )
    subs = discover("csv", str(csv), "source", "target", "brain")
    assert subs[0].source == str(tmp_path / "a_src.nii.gz") and subs[0].problem is None and subs[0].mask is None
    assert subs[1].problem.kind == "missing_file" and "nope.nii.gz" in subs[1].problem.location


def test_csv_duplicate_ids(tmp_path, brats):
    t1 = brats / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz"
    csv = tmp_path / "dup.csv"
    csv.write_text(f"subject,source,target\nx,{t1},{t1}\nx,{t1},{t1}\ny,{t1},{t1}\n")
    subs = discover("csv", str(csv), "source", "target", "brain")
    assert [s.problem.kind if s.problem else None for s in subs] == ["duplicate_subject", "duplicate_subject", None]
    assert "appears 2 times" in subs[0].problem.message("x")


def test_bad_roots(tmp_path):
    with pytest.raises(LayoutError, match="not a folder"):
        discover("brats", str(tmp_path / "missing"), "t1", "t2", "brain")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no subjects"):
        discover("brats", str(tmp_path / "empty"), "t1", "t2", "brain")
    (tmp_path / "h.csv").write_text("id,a\n1,2\n")
    with pytest.raises(LayoutError, match="header"):
        discover("csv", str(tmp_path / "h.csv"), "source", "target", "brain")


def test_csv_rows_outside_the_csvs_folder_are_refused_unless_allowed(tmp_path, brats):
    """Issue 22 (low): a CSV cannot make the ingest read any file the job can reach."""
    from bidpm.config import load_config

    t1 = brats / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz"
    inside = tmp_path / "data"
    inside.mkdir()
    shutil.copy(t1, inside / "a.nii.gz")
    (inside / "link.nii.gz").symlink_to(t1)
    csv = inside / "pairs.csv"
    csv.write_text(f"subject,source,target\nok,a.nii.gz,a.nii.gz\nabs,{t1},a.nii.gz\nup,../x.nii.gz,a.nii.gz\n"
                   "link,link.nii.gz,a.nii.gz\n")
    subs = {s.subject: s for s in discover("csv", str(csv), "source", "target", "brain", allow_outside_root=False)}
    assert subs["ok"].problem is None
    for sid in ("abs", "up", "link"):
        assert subs[sid].problem.kind == "outside_root" and "data.allow_outside_root=true" in subs[sid].problem.fix
    allowed = {s.subject: s for s in discover("csv", str(csv), "source", "target", "brain", allow_outside_root=True)}
    assert allowed["abs"].problem is None and allowed["link"].problem is None
    assert load_config(None, []).data.allow_outside_root is False  # the ingest's default
    from bidpm.data.layouts import _inside

    assert _inside("s3://b/data/sub1/t1.nii.gz", "s3://b/data")
    for loc in ("s3://b/data/../other/t1.nii.gz", "s3://b/data/x.nii.gz?endpoint_override=evil:9000", "gs://b/data/x.nii.gz",
                "file:///data/proj/../../other/t1.nii.gz"):
        assert not _inside(loc, "file:///data/proj" if loc.startswith("file") else "s3://b/data"), loc
