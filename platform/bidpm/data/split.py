"""Subject-level train/val/test split: no subject's slices in two splits (no leakage across slices).

By seed: subjects sorted by id, permuted by ``numpy.random.default_rng(seed)``, then the first
``round(test_fraction * n)`` go to test and the next ``round(val_fraction * n)`` to val (at least one
each when the fraction is > 0 and at least 3 subjects exist). The split is decided on the full
discovered table *before* any volume is read, so a subject skipped as bad never reshuffles the others.
Explicit lists (original ids) win; see ``SplitConfig``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def _count(fraction: float, n: int) -> int:
    k = int(round(fraction * n))
    return max(k, 1) if fraction > 0 and n >= 3 else k


def assign_splits(
    subjects: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    train_subjects: Optional[Sequence[str]] = None,
    val_subjects: Optional[Sequence[str]] = None,
    test_subjects: Optional[Sequence[str]] = None,
) -> dict[str, Optional[str]]:
    """subject -> "train" | "val" | "test" | None (left out: explicit train list given and not in any list)."""
    ids = sorted(set(subjects))
    explicit = {"train": train_subjects, "val": val_subjects, "test": test_subjects}
    if any(v is not None for v in explicit.values()):
        known = set(ids)
        out: dict[str, Optional[str]] = {s: (None if train_subjects is not None else "train") for s in ids}
        for split, listed in explicit.items():
            missing = [s for s in (listed or []) if s not in known]
            if missing:
                raise ValueError(f"data.split.{split}_subjects: {missing[:5]} not found in the dataset ({len(missing)} missing); fix the list")
            for s in listed or []:
                out[s] = split
        return out
    n = len(ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    n_test, n_val = _count(test_fraction, n), _count(val_fraction, n)
    if n_test + n_val >= n:
        raise ValueError(
            f"data.split: {n} subjects cannot give {n_test} test + {n_val} val subjects and still train; "
            "lower val_fraction/test_fraction or add subjects"
        )
    out = {s: "test" for s in order[:n_test]}
    out.update({s: "val" for s in order[n_test:n_test + n_val]})
    out.update({s: "train" for s in order[n_test + n_val:]})
    return out
