"""Batch mixing (paper 3.2.2): equal proportion of paired/unpaired rows, unpaired pairs independent.

Rows are constant images whose value encodes the row id, so every row of a produced Batch can be
traced back to the shard row it came from. The fake shard mimics Ray Data's ``iter_torch_batches``
(local shuffle buffer with a seed, ``drop_last``), and the rows are stored sorted by subject, the worst
case for leaks (neighbouring rows share a subject).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bidpm.train import batches as B

H = W = 4


class FakeShard:
    """``DataIterator.iter_torch_batches`` over in-memory rows: shuffle buffer, seed, drop_last, flat columns."""

    def __init__(self, ids: np.ndarray, flat: bool = True):
        self.ids = np.asarray(ids)
        self.flat = flat
        self.calls: list[dict] = []

    def iter_torch_batches(self, *, batch_size, dtypes, drop_last, local_shuffle_buffer_size, local_shuffle_seed,
                           prefetch_batches=1, pin_memory=False):
        self.calls.append(dict(batch_size=batch_size, seed=local_shuffle_seed, drop_last=drop_last,
                               prefetch=prefetch_batches, pin=pin_memory))
        rng = np.random.default_rng(local_shuffle_seed)
        buf: list[int] = []
        out: list[int] = []
        for i in self.ids:  # Ray-style local shuffle: fill a buffer, emit random rows from it
            buf.append(int(i))
            if len(buf) >= local_shuffle_buffer_size:
                out.append(buf.pop(int(rng.integers(len(buf)))))
        while buf:
            out.append(buf.pop(int(rng.integers(len(buf)))))
        n = len(out) // batch_size * batch_size if drop_last else len(out)
        for s in range(0, n, batch_size):
            chunk = torch.tensor(out[s : s + batch_size], dtype=torch.float32)
            img = chunk[:, None, None].expand(-1, H, W).clone()
            img = img.reshape(len(chunk), H * W) if self.flat else img
            # target encodes the same id (offset), so a row's own pairing is recognisable
            yield {"source": img, "target": img + 10_000.0}


def ids_of(x: torch.Tensor) -> np.ndarray:
    return x[:, 0, 0, 0].numpy().astype(np.int64)


def make_shards(n_paired: int, n_unpaired: int, flat: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    paired_ids = np.arange(n_paired)                       # subjects 0.. (sorted by id = by subject)
    unpaired_ids = np.arange(1000, 1000 + n_unpaired)
    shards = {
        B.UNPAIRED: FakeShard(unpaired_ids, flat),
        B.PAIRED: FakeShard(paired_ids, flat),
        B.UNPAIRED_TARGETS: FakeShard(unpaired_ids, not flat),  # other column layout: (B, H, W)
    }
    return shards, paired_ids, unpaired_ids


def test_equal_proportion_and_epoch_coverage():
    shards, paired_ids, unpaired_ids = make_shards(n_paired=6, n_unpaired=96)
    batches = list(B.worker_batches(shards, batch_size=8, image_size=(H, W), seed=0, epoch=0, rank=0, shuffle_buffer_rows=256))
    assert len(batches) == 96 // 4  # the unpaired source stream defines the epoch
    seen_sources = []
    for b in batches:
        assert b.source.shape == (8, 1, H, W) and b.target.shape == (8, 1, H, W)
        assert b.paired.tolist() == [True] * 4 + [False] * 4  # exactly half/half (paper 3.2.2)
        src, tgt = ids_of(b.source), ids_of(b.target) - 10_000
        # paired rows keep their correspondence and come from the paired subset only
        assert np.array_equal(src[:4], tgt[:4]) and set(src[:4]) <= set(paired_ids)
        # unpaired rows: sources and targets both from the unpaired subset only
        assert set(src[4:]) <= set(unpaired_ids) and set(tgt[4:]) <= set(unpaired_ids)
        seen_sources.extend(src[4:])
    assert sorted(seen_sources) == list(unpaired_ids)  # every unpaired source exactly once per epoch
    # the small paired subset (6 rows, 4 per batch) was cycled with a new shuffle seed per pass
    seeds = [c["seed"] for c in shards[B.PAIRED].calls]
    assert len(seeds) > 1 and len(set(seeds)) == len(seeds)
    assert all(c["drop_last"] for s in shards.values() for c in s.calls)


def test_unpaired_sources_and_targets_are_independent():
    n = 200
    shards, _, unpaired_ids = make_shards(n_paired=20, n_unpaired=n)
    src_all, tgt_all = [], []
    for epoch in range(3):
        for b in B.worker_batches(shards, batch_size=8, image_size=(H, W), seed=1, epoch=epoch, rank=0, shuffle_buffer_rows=512):
            src_all.extend(ids_of(b.source)[4:])
            tgt_all.extend(ids_of(b.target)[4:] - 10_000)
    src, tgt = np.array(src_all), np.array(tgt_all)
    # own target: expected fraction 1/n under independence; a leak (same permutation) would give 1.0
    assert np.mean(src == tgt) < 5.0 / n
    # same "subject" (blocks of 10 neighbouring ids): chance is 10/n = 0.05
    assert np.mean(src // 10 == tgt // 10) < 0.12
    # rank correlation of ids (sorted storage order): ~0 for independent draws (sd ~ 1/sqrt(600) = 0.04)
    r = np.corrcoef(np.argsort(np.argsort(src)), np.argsort(np.argsort(tgt)))[0, 1]
    assert abs(r) < 0.15


def test_stream_seeds_differ_by_stream_epoch_rank_and_pass():
    seeds = {
        B.stream_seed(0, e, r, s, k)
        for e in range(3) for r in range(2) for s in (B.UNPAIRED, B.PAIRED, B.UNPAIRED_TARGETS) for k in range(2)
    }
    assert len(seeds) == 3 * 2 * 3 * 2
    assert B.stream_seed(5, 1, 1, B.PAIRED, 3) == B.stream_seed(5, 1, 1, B.PAIRED, 3)  # reproducible


def test_uniform_batches_all_paired():
    shard = FakeShard(np.arange(20), flat=False)
    out = list(B.worker_batches({B.ALL_PAIRED: shard}, batch_size=6, image_size=(H, W), seed=0, epoch=0, rank=0, shuffle_buffer_rows=8))
    assert len(out) == 3  # 20 rows, drop_last
    for b in out:
        assert b.paired.all() and np.array_equal(ids_of(b.source), ids_of(b.target) - 10_000)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="train.batch_size"):
        B.split_sizes(1)
    with pytest.raises(ValueError, match="image_size"):
        B.as_images(torch.zeros(2, 5), (H, W))
    shards, _, _ = make_shards(n_paired=3, n_unpaired=16)  # 3 paired rows < 4 per batch: no full batch ever
    with pytest.raises(ValueError, match="paired stream yielded no full batch"):
        list(B.worker_batches(shards, batch_size=8, image_size=(H, W), seed=0, epoch=0, rank=0, shuffle_buffer_rows=8))


def test_as_images_layouts_agree():
    x = torch.arange(2 * H * W, dtype=torch.float32).reshape(2, H, W)
    a = B.as_images(x.reshape(2, H * W), (H, W))
    assert torch.equal(a, B.as_images(x, (H, W))) and torch.equal(a, B.as_images(x[:, None], (H, W)))
    assert a.shape == (2, 1, H, W)


def test_only_several_workers_split_the_epoch_stream():
    """Several workers share the epoch-defining stream (equal shards, equal step counts for DDP); one worker
    reads it whole, with no split coordinator actor; the cycled streams and val are never split."""
    from bidpm.train.launch import build_data_config

    mixed = dict.fromkeys([B.UNPAIRED, B.PAIRED, B.UNPAIRED_TARGETS, B.VAL])
    assert build_data_config(mixed, 2)._datasets_to_split == [B.UNPAIRED]
    assert build_data_config(dict.fromkeys([B.ALL_PAIRED, B.VAL]), 4)._datasets_to_split == [B.ALL_PAIRED]
    assert build_data_config(mixed, 1)._datasets_to_split == []
