"""Read-time pairing: which rows count as *paired* for a pairing ratio (paper 3.2.2: 1%, 10%, 50%).

``pair_u(subject, slice, seed)`` is a stable uniform number in [0, 1) from SHA-256, so it is the
same in every process, machine and Python version (unlike ``hash()``). A row is paired iff
``u < ratio``; hence the paired set at ratio a is a subset of the one at ratio b >= a (nested
ablations), and one set of shards serves every ratio.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np


def pair_u(subject: str, slice: int, seed: int) -> float:
    """Stable u in [0, 1) for one (subject, slice) under ``seed``: the top 53 bits of SHA-256."""
    digest = hashlib.sha256(f"{int(seed)}|{subject}|{int(slice)}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def paired_flags(subjects: Iterable[str], slices: Iterable[int], seed: int, ratio: float) -> np.ndarray:
    """(N,) bool: ``pair_u(subject_i, slice_i, seed) < ratio``."""
    return np.fromiter((pair_u(s, int(k), seed) < ratio for s, k in zip(subjects, slices)), dtype=bool)
