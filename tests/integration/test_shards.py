"""Ray Data ingest end to end on tiny phantoms: manifest, idempotence, versions, read-time pairing,
bad inputs with and without skip_bad, and a run killed before its manifest."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bidpm.config import load_config
from bidpm.data import (TRAIN_COLUMNS, DataError, load_manifest, pair_u, prepare_shards, read_split, verify_shards,
                        volume_geometry)
from bidpm.data import ingest_tasks
from bidpm.data import shards as shards_mod

pytestmark = pytest.mark.integration

TINY = ["data.layout=phantom", "data.image_size=[16,16]", "data.num_slices=4", "data.phantom.num_subjects=6",
        "data.phantom.shape=[24,24,10]", "model.channel_mults=[1,2]", "data.split.val_fraction=0.2",
        "data.split.test_fraction=0.2"]


def tiny_cfg(out: Path, *extra: str):
    return load_config(None, [f"output_dir={out}", *TINY, *extra])


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    cfg = tiny_cfg(tmp_path_factory.mktemp("ingest"))
    return cfg, prepare_shards(cfg)


def test_manifest_contents_and_privacy(prepared):
    cfg, path = prepared
    m = load_manifest(cfg)
    assert path == Path(m["location"]) / "manifest.json" and path.is_file()
    assert m["splits"]["train"]["subjects"] == 4 and m["splits"]["val"]["subjects"] == 1 and m["splits"]["test"]["subjects"] == 1
    assert m["splits"]["train"]["slices"] == 16
    by_split = {s: {f["subject"] for f in m["files"] if f["split"] == s} for s in ("train", "val", "test")}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    g = volume_geometry(m, next(iter(by_split["test"])))
    assert g["shape"] == [24, 24, 10] and g["slices"] == [3, 4, 5, 6] and g["original_axcodes"] == "LPS"
    assert g["normalisation"]["source"]["kind"] == "mr_percentile"
    assert m["config"]["pseudonym_salt"] == "<redacted>"
    # content digest recomputed independently from the files on disk
    lines = []
    for f in sorted(m["files"], key=lambda f: f["path"]):
        sha = hashlib.sha256((Path(m["location"]) / f["path"]).read_bytes()).hexdigest()
        lines.append(f"{f['path']} {sha}")
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == m["content_digest"]
    verify_shards(m)
    # no original subject id anywhere in shards or manifest
    for p in Path(m["location"]).rglob("*"):
        if p.is_file():
            assert b"BraTS2021" not in p.read_bytes(), p


def test_rerun_is_noop(prepared):
    cfg, path = prepared
    before = (path.read_bytes(), path.stat().st_mtime_ns, sorted(p.stat().st_mtime_ns for p in path.parent.rglob("*.parquet")))
    assert prepare_shards(cfg) == path
    after = (path.read_bytes(), path.stat().st_mtime_ns, sorted(p.stat().st_mtime_ns for p in path.parent.rglob("*.parquet")))
    assert before == after


def test_changed_config_writes_new_version(prepared):
    cfg, path = prepared
    cfg2 = tiny_cfg(Path(cfg.output_dir), "data.num_slices=3")
    path2 = prepare_shards(cfg2)
    assert path2.parent.parent != path.parent.parent and path.is_file()
    assert load_manifest(cfg2)["splits"]["train"]["slices"] == 12
    assert load_manifest(cfg)["splits"]["train"]["slices"] == 16  # the old version is untouched


def test_read_split_torch_batches(prepared):
    cfg, _ = prepared
    ds = read_split(cfg, "train")
    assert ds.columns() == ["subject", "slice", "source", "target", "mask", "paired"]
    rows = ds.take(3)
    assert isinstance(rows[0]["subject"], str) and rows[0]["source"].shape == (16, 16)
    batches = list(read_split(cfg, "train", columns=TRAIN_COLUMNS).iter_torch_batches(batch_size=5))
    b = batches[0]
    assert tuple(b["source"].shape) == (5, 16, 16) and str(b["source"].dtype) == "torch.float32"
    assert b["paired"].dtype.is_floating_point is False
    total = sum(len(x["slice"]) for x in batches)
    assert total == 16
    assert all(float(x["source"].abs().max()) <= 1.0 for x in batches)


def _with(cfg, **data):
    c = cfg.model_copy(deep=True)
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def _rows(c, **kw) -> set[tuple[str, int]]:
    return {(r["subject"], int(r["slice"])) for r in read_split(c, "train", **kw).select_columns(["subject", "slice"]).take_all()}


def test_slice_pairing_is_nested_and_matches_pair_u(prepared):
    cfg, _ = prepared
    cfg = _with(cfg, pairing_unit="slice")
    all_rows = _rows(cfg)
    sets = {r: _rows(_with(cfg, pairing_ratio=r), paired=True) for r in (0.1, 0.5, 1.0)}
    assert sets[0.1] <= sets[0.5] <= sets[1.0] == all_rows
    assert sets[0.5] == {k for k in all_rows if pair_u(k[0], k[1], cfg.data.pairing_seed) < 0.5}
    assert _rows(_with(cfg, pairing_ratio=0.5), paired=False) == all_rows - sets[0.5]


def test_subject_pairing_against_a_hash_order_written_here(prepared):
    """Issue 20, the default unit, against numpy: at ratio r the paired subjects are exactly the first
    ceil(r * n) of the SHA-256 order; each unpaired subject is in the source stream or the target stream,
    never both, with all its slices; the paired sets are nested across ratios."""
    cfg, _ = prepared
    all_rows = _rows(cfg)
    subjects = sorted({s for s, _ in all_rows})
    u = np.array([int.from_bytes(hashlib.sha256(f"{cfg.data.pairing_seed}|{s}|-1".encode()).digest()[:8], "big") >> 11
                  for s in subjects], dtype=np.float64)
    order = [subjects[i] for i in np.argsort(u, kind="stable")]
    paired_sets = {}
    for r in (0.25, 0.5, 0.75):
        c = _with(cfg, pairing_ratio=r)
        k = int(np.ceil(r * len(order)))
        paired = _rows(c, paired=True)
        assert {s for s, _ in paired} == set(order[:k]) and paired == {x for x in all_rows if x[0] in order[:k]}
        sides = {}
        for side, want in (("source", order[k::2] if k % 2 == 0 else order[k + 1::2]),   # even places give sources
                           ("target", order[k + 1::2] if k % 2 == 0 else order[k::2])):
            if want:
                sides[side] = _rows(c, paired=False, side=side)
                assert {s for s, _ in sides[side]} == set(want)
            else:                                                    # e.g. 4 subjects at 75%: one unpaired, a target
                with pytest.raises(DataError, match=rf"no subject is unpaired \({side} side\).*pairing_unit=subject"):
                    _rows(c, paired=False, side=side)
                sides[side] = set()
        assert not ({s for s, _ in sides["source"]} & {s for s, _ in sides["target"]})   # never both modalities
        assert sides["source"] | sides["target"] == all_rows - paired   # every unpaired subject's slices, on one side
        paired_sets[r] = paired
        flags = {(r_["subject"], int(r_["slice"])): r_["paired"] for r_ in read_split(c, "train").select_columns(
            ["subject", "slice", "paired"]).take_all()}
        assert {x for x, f in flags.items() if f} == paired
    assert paired_sets[0.25] <= paired_sets[0.5] <= paired_sets[0.75]


def _corrupt_one(cfg) -> str:
    from bidpm.data.phantom import write_phantoms

    root = Path(cfg.output_dir) / "phantoms"
    write_phantoms(root, 6, (24, 24, 10), 0, "brats", "brain")
    bad = root / "BraTS2021_00002" / "BraTS2021_00002_t2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    return str(bad)


def test_bad_input_stops_without_manifest_then_skip_bad(ray_session, tmp_path):
    cfg = tiny_cfg(tmp_path)
    bad = _corrupt_one(cfg)
    with pytest.raises(DataError) as e:
        prepare_shards(cfg)
    msg = str(e.value)
    assert "BraTS2021_00002" in msg and bad in msg and "corrupt or truncated gzip" in msg and "skip_bad" in msg
    assert not list(tmp_path.rglob("manifest.json")) and not list(tmp_path.rglob("*.parquet"))
    with pytest.raises(DataError, match="jobs/prepare_data.py"):
        load_manifest(cfg)
    cfg.data.skip_bad = True
    m = json.loads(prepare_shards(cfg).read_text())
    assert len(m["skipped"]) == 1 and m["skipped"][0]["kind"] == "corrupt_gzip"
    assert m["skipped"][0]["subject"].startswith("sub-") and "location" not in m["skipped"][0]
    assert sum(v["subjects"] for v in m["splits"].values()) == 5


def test_killed_before_manifest_leaves_none(ray_session, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)

    def killed(*args):
        raise KeyboardInterrupt("simulated kill after the shards, before the manifest")

    monkeypatch.setattr(shards_mod, "build_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(cfg)
    assert list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("manifest.json"))
    with pytest.raises(DataError, match="prepare_data.py"):
        read_split(cfg, "train")
    monkeypatch.undo()
    path = prepare_shards(cfg)  # the unfinished folder is discarded and rebuilt, never mixed
    m = json.loads(path.read_text())
    assert len(list(path.parent.rglob("*.parquet"))) == len(m["files"]) == 6
    assert np.isclose(m["splits"]["train"]["slices"], 16)


def test_grouped_tasks_write_the_same_shards_without_deprecated_calls(prepared, tmp_path):
    """Several subjects per task (6 subjects in groups of 4 -> 2 tasks) gives the same shard bytes as
    one subject per task, and the same version (a scheduling knob, not content); and Ray logs no deprecation (Ray Data
    reports deprecated arguments through its loggers, not the warnings module)."""
    import logging
    import warnings

    cfg, path = prepared
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(n) for n in ("ray", "ray.data", "ray.train", "ray.tune")]  # ray.data does not propagate
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            grouped = prepare_shards(tiny_cfg(tmp_path, "data.subjects_per_task=4", "data.num_workers=2"))
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()] == []
    # ingest turns Ray Data's resource reservation off for its own Dataset only, not for the driver
    import ray

    assert ray.data.DataContext.get_current().op_resource_reservation_enabled is True
    a, b = json.loads(path.read_text()), json.loads(grouped.read_text())
    from bidpm.data.manifest import config_digest

    assert config_digest(tiny_cfg(tmp_path, "data.subjects_per_task=4")) == config_digest(tiny_cfg(tmp_path))  # same version
    assert [f["sha256"] for f in b["files"]] == [f["sha256"] for f in a["files"]]
    assert b["content_digest"] == a["content_digest"] and b["volumes"] == a["volumes"]


@pytest.mark.parametrize("n, per_task, workers, groups", [(64, None, 2, 8), (64, None, 1, 4), (5, None, 4, 5), (7, 3, 2, 3), (0, None, 2, 0)])
def test_task_groups_cover_every_subject_once_in_order(n, per_task, workers, groups):
    tasks = [{"subject": f"s{i}"} for i in range(n)]
    out = ingest_tasks.task_groups(tasks, per_task, workers)
    assert len(out) == groups and [t for g in out for t in g] == tasks


def test_shards_are_verified_on_read_and_confined_to_their_folder(ray_session, tmp_path):
    """Issue 22 item 4: a shard changed after the ingest is refused by both readers (hashlib of the
    listed bytes is the reference); a manifest naming a path outside its folder, or whose file list
    does not match its content_digest, is refused."""
    from bidpm.data import iter_split
    from bidpm.data.readers import _VERIFIED

    cfg = tiny_cfg(tmp_path)
    path = prepare_shards(cfg)
    m = json.loads(path.read_text())
    assert sum(b.source.shape[0] for b in iter_split(cfg, "test", 4)) == m["splits"]["test"]["slices"]  # untouched: reads
    (victim,) = [f for f in m["files"] if f["split"] == "test"]
    shard = path.parent / victim["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _VERIFIED.clear()  # this process read it above; a fresh reader process checks again
    with pytest.raises(DataError, match=rf"{re.escape(str(shard))}: content differs from the manifest's sha256"):
        list(iter_split(cfg, "test", 4))
    with pytest.raises(Exception, match="content differs from the manifest's sha256"):
        read_split(cfg, "test").take_all()
    original = path.read_text()
    for edit, match in ((lambda f: f.update(path="/etc/passwd"), "is not <split>/<file>.parquet"),
                        (lambda f: f.update(path="train/../../x.parquet"), "is not <split>/<file>.parquet"),
                        (lambda f: f.update(sha256="0" * 64), "does not match its content_digest")):
        bad = json.loads(original)
        edit(bad["files"][0])
        path.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=match):
            load_manifest(cfg)
    path.write_text(original)


def test_a_subject_whose_task_dies_is_reported_not_retried_forever(ray_session, tmp_path, monkeypatch, capsys):
    """Issue 22 item 1 (Ray side): ingest tasks retry ``data.task_retries`` times, then the subjects are
    read one per task and the one whose task dies (here: its process exits, as an OOM kill does) is
    that subject's ``worker_died`` error - skipped under skip_bad, named otherwise."""
    real = ingest_tasks._ingest_group

    def dies_on_00003(item, settings, version_dir):
        import json as _json
        import os as _os

        if any(t["subject"] == "BraTS2021_00003" for t in _json.loads(item["tasks"])):
            _os._exit(1)
        return real(item, settings, version_dir)

    monkeypatch.setattr(ingest_tasks, "_ingest_group", dies_on_00003)
    with pytest.raises(DataError, match=r"subject BraTS2021_00003: source file .*: the task reading this pair died.*\[worker_died\]"):
        prepare_shards(tiny_cfg(tmp_path / "strict", "data.task_retries=1", "data.subjects_per_task=6"))
    assert "died after 1 retries" in capsys.readouterr().out
    cfg = tiny_cfg(tmp_path / "skip", "data.task_retries=0", "data.subjects_per_task=6", "data.skip_bad=true")
    prepare_shards(cfg)
    m = load_manifest(cfg)
    assert [e["kind"] for e in m["skipped"]] == ["worker_died"]
    assert sum(s["subjects"] for s in m["splits"].values()) == 5
