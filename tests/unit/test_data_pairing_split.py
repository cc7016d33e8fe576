"""Read-time pairing (stable hash, nested ratios; by subject and by slice) and the subject-level split."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bidpm.data.pairing import pair_u, paired_flags, share_count, subject_roles
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


def _sha_order(subjects, seed):
    """The subject order written here from its definition: SHA-256 of "seed|subject|-1", top 53 bits."""
    u = np.array([int.from_bytes(hashlib.sha256(f"{seed}|{s}|-1".encode()).digest()[:8], "big") >> 11 for s in subjects],
                 dtype=np.float64)
    return [subjects[i] for i in np.argsort(u, kind="stable")]


@pytest.mark.parametrize("n", [1, 3, 10, 37, 200])
def test_subject_roles_take_the_first_ceil_r_n_of_the_hash_order(n):
    """Issue 20: at ratio r exactly the first ceil(r * n) subjects of the order are paired, nested across
    ratios; each unpaired subject gives one side, chosen by its place in the order, so it keeps it at
    every ratio; sources and targets alternate (their counts differ by at most one)."""
    subjects = [f"sub-{i:03d}" for i in range(n)]
    order = _sha_order(subjects, 5)
    paired_before, side_of = set(), {}
    for r in (0.01, 0.1, 0.3, 0.5, 0.99, 1.0):
        roles = subject_roles(list(reversed(subjects)), 5, r)          # input order does not matter
        k = max(1, int(np.ceil(np.round(r * n, 9))))
        paired = {s for s, role in roles.items() if role == "paired"}
        assert paired == set(order[:k]) and paired_before <= paired
        unpaired = [s for s in order if roles[s] != "paired"]
        assert all(roles[s] == ("source" if order.index(s) % 2 == 0 else "target") for s in unpaired)
        counts = [sum(roles[s] == side for s in unpaired) for side in ("source", "target")]
        assert abs(counts[0] - counts[1]) <= 1 and sum(counts) == n - k
        for s in unpaired:
            assert side_of.setdefault(s, roles[s]) == roles[s]
        paired_before = paired
    assert share_count(0.3, 10) == 3 and share_count(0.31, 10) == 4 and share_count(1e-6, 5) == 1


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
