"""Ingest privacy on tiny phantoms (Ray Data): the shards and manifest hold no salt, no raw subject id
and no NIfTI header text; a trial's config rebuilt from a dump finds the shards without the salt;
with ``skip_bad`` the console report names each skipped subject's original id and file, which the
manifest never holds, and when every subject is bad the error lists them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import pytest

from bidpm.config import ConfigError, config_from_dict, load_config
from bidpm.config.data import SALT_ENV
from bidpm.data import DataError, load_manifest, prepare_shards
from bidpm.data.phantom import write_phantoms
from bidpm.data.skipped import skipped_report

pytestmark = pytest.mark.integration

SALT = "s3cr3t-salt-7f1e9c2ab4d0"
HEADER_TEXT = b"Jane Doe 1970-01-01"
TINY = ["data.layout=phantom", "data.image_size=[16,16]", "data.num_slices=2", "data.phantom.num_subjects=4",
        "data.phantom.shape=[24,24,8]", "model.channel_mults=[1,2]", "data.split.val_fraction=0.2",
        "data.split.test_fraction=0.2"]


@pytest.fixture(autouse=True)
def _no_salt_env(monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)


def _cfg(out: Path, *extra: str):
    return load_config(None, [f"output_dir={out}", *TINY, *extra])


def _phantoms(cfg) -> Path:
    root = Path(cfg.output_dir) / "phantoms"
    p = cfg.data.phantom
    write_phantoms(root, p.num_subjects, p.shape, p.seed, p.layout, p.region)
    return root


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_shards_hold_no_salt_raw_ids_or_header_text(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv(SALT_ENV, SALT)                         # the salt from the environment, as documented
    cfg = _cfg(tmp_path, "data.split.test_subjects=[BraTS2021_00001]")
    root = _phantoms(cfg)
    for f in (root / "BraTS2021_00001").glob("*.nii.gz"):     # patient text in the headers
        img = nib.load(f)
        img.header["descrip"] = HEADER_TEXT
        nib.save(nib.Nifti1Image(img.get_fdata(dtype="float32"), img.affine, img.header), f)
    path = prepare_shards(cfg)
    m = load_manifest(cfg)
    shards = _files(Path(cfg.shards_path))
    assert any(p.suffix == ".parquet" for p in shards)
    for f in shards:
        data = f.read_bytes()
        for needle in (SALT.encode(), b"BraTS2021", HEADER_TEXT, b"Jane Doe"):
            assert needle not in data, (f, needle)
    # the explicit list did its job, under the salted pseudonym (reference: the pseudonym's definition)
    expected = "sub-" + hashlib.sha256(f"{SALT}|BraTS2021_00001".encode()).hexdigest()[:16]
    assert {f["subject"] for f in m["files"] if f["split"] == "test"} == {expected}
    # a trial's config (rebuilt from the dump, no salt anywhere) finds the same shards and needs nothing else
    monkeypatch.delenv(SALT_ENV)
    again = config_from_dict(cfg.to_dict())
    assert prepare_shards(again) == path and load_manifest(again)["content_digest"] == m["content_digest"]
    # but a fresh ingest from it (the inputs changed) asks for the salt instead of using another one
    victim = next((root / "BraTS2021_00002").glob("*_t1.nii.gz"))
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    with pytest.raises(ConfigError, match=SALT_ENV):
        prepare_shards(again)
    assert len(list(Path(cfg.shards_path).rglob("manifest.json"))) == 1


def _corrupt(root: Path, subject: str) -> str:
    bad = root / subject / f"{subject}_t2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    return str(bad)


def test_skip_bad_report_names_original_ids_and_files_the_manifest_does_not(ray_session, tmp_path, capsys):
    cfg = _cfg(tmp_path, "data.skip_bad=true")
    bad = _corrupt(_phantoms(cfg), "BraTS2021_00002")
    path = prepare_shards(cfg)
    m = load_manifest(cfg)
    (entry,) = m["skipped"]
    assert entry["subject"].startswith("sub-")
    assert b"BraTS2021_00002" not in path.read_bytes() and bad.encode() not in path.read_bytes()
    (line,) = skipped_report(cfg, m)
    assert "BraTS2021_00002" in line and bad in line and entry["subject"] in line and "corrupt_gzip" in line
    # the job prints exactly that
    from bidpm.commands.prepare_data import main

    assert main([f"output_dir={tmp_path}", *TINY, "data.skip_bad=true"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1" in out and "BraTS2021_00002" in out and bad in out


def test_every_subject_bad_lists_them_all(ray_session, tmp_path):
    cfg = _cfg(tmp_path, "data.skip_bad=true", "data.phantom.num_subjects=2", "data.split.val_fraction=0",
               "data.split.test_fraction=0")
    root = _phantoms(cfg)
    bad = [_corrupt(root, s) for s in ("BraTS2021_00000", "BraTS2021_00001")]
    with pytest.raises(DataError) as e:
        prepare_shards(cfg)
    msg = str(e.value)
    assert "no usable training subject" in msg and "2 of 2 subjects were skipped" in msg
    for subject, f in zip(("BraTS2021_00000", "BraTS2021_00001"), bad, strict=True):
        assert subject in msg and f in msg
    assert not list(tmp_path.rglob("manifest.json"))
