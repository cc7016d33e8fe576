"""Read-time pairing (stable hash, nested ratios) and the subject-level split."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bidpm.data.pairing import pair_u, paired_flags
from bidpm.data.split import assign_splits


def test_pair_u_is_sha256_of_seed_subject_slice():
    d = hashlib.sha256(b"7|sub-abc|12").digest()
    assert pair_u("sub-abc", 12, 7) == (int.from_bytes(d[:8], "big") >> 11) / 2**53
    assert pair_u("sub-abc", 12, 7) == pair_u("sub-abc", np.int32(12), 7)
    assert pair_u("sub-abc", 12, 7) != pair_u("sub-abc", 12, 8)


def test_pair_u_roughly_uniform():
    u = np.array([pair_u(f"s{i}", k, 0) for i in range(50) for k in range(40)])
    assert 0 <= u.min() and u.max() < 1
    hist, _ = np.histogram(u, bins=10, range=(0, 1))
    assert hist.min() > 150 and hist.max() < 250  # 2000 draws, 200 expected per bin


def test_pairing_sets_are_nested():
    subjects = [f"s{i // 30}" for i in range(600)]
    slices = [i % 30 for i in range(600)]
    sets = {r: set(np.flatnonzero(paired_flags(subjects, slices, 3, r))) for r in (0.01, 0.1, 0.5, 1.0)}
    assert sets[0.01] <= sets[0.1] <= sets[0.5] <= sets[1.0]
    assert len(sets[1.0]) == 600
    assert 30 <= len(sets[0.1]) <= 90 and 250 <= len(sets[0.5]) <= 350


def test_split_by_seed_is_subject_level_and_deterministic():
    ids = [f"BraTS2021_{i:05d}" for i in range(20)]
    a = assign_splits(ids, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert a == assign_splits(list(reversed(ids)), val_fraction=0.1, test_fraction=0.2, seed=0)
    assert sorted(a) == sorted(ids)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 2, "test": 4}
    assert a != assign_splits(ids, val_fraction=0.1, test_fraction=0.2, seed=1)


def test_split_small_dataset_keeps_one_each():
    a = assign_splits([f"s{i}" for i in range(4)], val_fraction=0.1, test_fraction=0.1, seed=0)
    assert sorted(a.values()) == ["test", "train", "train", "val"]
    with pytest.raises(ValueError, match="still train"):
        assign_splits(["a", "b"], val_fraction=0.5, test_fraction=0.4, seed=0)


def test_split_explicit_lists():
    ids = ["a", "b", "c", "d"]
    a = assign_splits(ids, val_fraction=0.1, test_fraction=0.1, seed=0, val_subjects=["b"], test_subjects=["c"])
    assert a == {"a": "train", "b": "val", "c": "test", "d": "train"}
    a = assign_splits(ids, val_fraction=0, test_fraction=0, seed=0, train_subjects=["a"], test_subjects=["d"])
    assert a == {"a": "train", "b": None, "c": None, "d": "test"}
    with pytest.raises(ValueError, match="not found"):
        assign_splits(ids, val_fraction=0, test_fraction=0, seed=0, val_subjects=["zz"])
