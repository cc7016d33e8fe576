"""Read-time pairing: which training rows count as *paired* for a pairing ratio (paper 3.2.2: "varied
the proportion of paired data to 1%, 10% and 50%"). Two readings of that sentence, ``data.pairing_unit``:

- ``subject`` (default; the clinic's reading - a *patient* has both modalities or one): training subjects
  in a stable hash order (``subject_order``: ``pair_u(subject, -1, seed)``, the order ``data.train_fraction``
  takes its prefix from); the first ``share_count(ratio, n)`` are paired and all their slices are pairs.
  Every other subject is unpaired and gives its source slices **or** its target slices, never both (by the
  parity of its place in the order, so a subject keeps its side at every ratio and fraction): no unpaired
  source has its own target anywhere in training. Nested: the 10% paired set is inside the 50% one.
- ``slice`` (the behaviour before the unit existed, for reproducing slice-level numbers): a row
  (subject, slice) is paired iff ``pair_u(subject, slice, seed) < ratio``; neighbouring slices of one
  subject may fall on both sides, so correspondence leaks into the unpaired rows.

``pair_u`` is a stable uniform number in [0, 1) from SHA-256: the same in every process, machine and
Python version (unlike ``hash()``); one set of shards serves every ratio.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Literal

import numpy as np

Role = Literal["paired", "source", "target"]
ROLES: tuple[Role, ...] = ("paired", "source", "target")


def pair_u(subject: str, slice: int, seed: int) -> float:
    """Stable u in [0, 1) for one (subject, slice) under ``seed``: the top 53 bits of SHA-256."""
    digest = hashlib.sha256(f"{int(seed)}|{subject}|{int(slice)}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def paired_flags(subjects: Iterable[str], slices: Iterable[int], seed: int, ratio: float) -> np.ndarray:
    """(N,) bool, the slice unit: ``pair_u(subject_i, slice_i, seed) < ratio``."""
    return np.fromiter((pair_u(s, int(k), seed) < ratio for s, k in zip(subjects, slices)), dtype=bool)


def share_count(share: float, n: int) -> int:
    """ceil(share * n), at least 1 and at most n; the 1e-9 keeps 0.3 * 10 (= 3.0000000000000004) at 3."""
    return min(n, max(1, math.ceil(share * n - 1e-9)))


def subject_order(subjects: Iterable[str], seed: int) -> list[str]:
    """Subjects ranked by ``pair_u(subject, -1, seed)`` (ties, which SHA-256 makes improbable, by id)."""
    return sorted(set(subjects), key=lambda s: (pair_u(s, -1, seed), s))


def subject_roles(subjects: Iterable[str], seed: int, ratio: float) -> dict[str, Role]:
    """The subject unit: each subject's role at ``ratio`` among ``subjects`` (a run's training subjects).

    The first ``share_count(ratio, n)`` of ``subject_order`` are ``paired`` (all of them at ratio 1);
    after them a subject at an even place of the order gives its ``source`` slices, at an odd place its
    ``target`` slices."""
    order = subject_order(subjects, seed)
    k = len(order) if ratio >= 1.0 else share_count(ratio, len(order))
    return {s: "paired" if i < k else ("source" if i % 2 == 0 else "target") for i, s in enumerate(order)}
