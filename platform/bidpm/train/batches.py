"""Turn a worker's row streams into ``Batch``es of the method, mixing paired and unpaired rows.

Paper 3.2.2: with partially paired data "each batch consists of an equal proportion of paired data
and unpaired data". Each training batch of ``batch_size`` rows therefore holds ``batch_size // 2``
paired rows (first) and ``batch_size - batch_size // 2`` unpaired rows (last) - exactly half each
for an even batch size. Three streams feed it:

- ``unpaired``: sources of the unpaired rows (under ``data.pairing_unit=subject``: of the unpaired
  subjects that give sources); one pass over it is one epoch (it is the stream Ray Train splits across
  workers, so every worker takes the same number of steps);
- ``paired``: paired rows, cycled (the paired subset is usually much smaller, e.g. 1% or 10%);
- ``unpaired_targets``: targets of the unpaired rows, a *separate, independently shuffled* pass,
  cycled: under the subject unit over the *other* unpaired subjects (those that give targets), so no
  unpaired source has its own target - or any slice of its own subject - anywhere in training; under
  the slice unit over the same unpaired rows, so a row's target comes from another position of another
  permutation than its source (its own target can still ride along, rarely, and a slice neighbour of
  the same subject often: the reason the subject unit is the default).

With ``pairing_ratio == 1`` there is one stream and every row is paired (``uniform_batches``).
Batches from Ray arrive as dicts of column tensors; image columns may be flat ``(B, H*W)``
(fixed-size lists) or ``(B, H, W)`` (tensor extension types): ``as_images`` accepts both.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import numpy as np
import torch
from torch import Tensor

from bidpm.method import Batch

RowBatch = Mapping[str, Tensor]
StreamFactory = Callable[[int], Iterable[RowBatch]]  # cycle index -> one pass over a stream

# Dataset names handed to TorchTrainer(datasets=...). Only the epoch-defining stream is split across
# workers (DataConfig(datasets_to_split=...)); the cycled streams and val are read whole by each worker
# that needs them, so a worker can restart them on its own without a cross-worker barrier.
ALL_PAIRED = "train"                         # pairing_ratio == 1: every train row (split)
UNPAIRED = "train_unpaired"                  # unpaired rows, sources used (split; defines the epoch)
PAIRED = "train_paired"                      # paired rows (whole, cycled)
UNPAIRED_TARGETS = "train_unpaired_targets"  # unpaired rows again, targets used (whole, cycled, own shuffle)
VAL = "val"                                  # validation rows (whole; evaluated on rank 0)
STREAM_IDS = {ALL_PAIRED: 0, UNPAIRED: 1, PAIRED: 2, UNPAIRED_TARGETS: 3}


class ShardLike(Protocol):
    """What a worker needs of ``ray.train.get_dataset_shard(name)`` (a Ray Data ``DataIterator``)."""

    def iter_torch_batches(self, **kwargs: Any) -> Iterable[RowBatch]: ...


def stream_seed(seed: int, epoch: int, rank: int, stream: str, cycle_index: int = 0) -> int:
    """Independent shuffle seed per (run seed, epoch, worker rank, stream, pass): reproducible runs,
    different orders per epoch and per worker, and never the same permutation for two streams."""
    return int(np.random.SeedSequence([seed, epoch, rank, STREAM_IDS[stream], cycle_index]).generate_state(1)[0])


def split_sizes(batch_size: int) -> tuple[int, int]:
    """(paired rows, unpaired rows) of a mixed batch: ``B // 2`` and ``B - B // 2``."""
    if batch_size < 2:
        raise ValueError(
            f"train.batch_size={batch_size}: a batch mixing paired and unpaired rows (data.pairing_ratio < 1) "
            "needs at least 2 rows per worker; set train.batch_size >= 2 (even for exactly equal halves)"
        )
    return batch_size // 2, batch_size - batch_size // 2


def as_images(x: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``(B, H*W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` -> float32 ``(B, 1, H, W)``."""
    h, w = image_size
    b = x.shape[0]
    if x.dim() == 2 and x.shape[1] == h * w:
        x = x.reshape(b, 1, h, w)
    elif x.dim() == 3 and tuple(x.shape[1:]) == (h, w):
        x = x.unsqueeze(1)
    elif not (x.dim() == 4 and tuple(x.shape[1:]) == (1, h, w)):
        raise ValueError(
            f"image column has shape {tuple(x.shape)}; expected (B, {h * w}), (B, {h}, {w}) or (B, 1, {h}, {w}) "
            f"for data.image_size={[h, w]} (shards written with another image_size? rerun jobs/prepare_data.py)"
        )
    return x.float()


def cycle(factory: StreamFactory, name: str) -> Iterator[RowBatch]:
    """Endless iterator over passes ``factory(0), factory(1), ...``; a pass with no batch is an error."""
    k = 0
    while True:
        empty = True
        for rows in factory(k):
            empty = False
            yield rows
        if empty:
            raise ValueError(
                f"the {name} stream yielded no full batch in a whole pass: the subset has fewer rows than the "
                "batch needs; lower train.batch_size, change data.pairing_ratio or use more training subjects"
            )
        k += 1


def uniform_batches(stream: Iterable[RowBatch], image_size: tuple[int, int]) -> Iterator[Batch]:
    """All rows paired (``pairing_ratio == 1``): one stream, ``paired`` all True."""
    for rows in stream:
        x_0 = as_images(rows["source"], image_size)
        x_1 = as_images(rows["target"], image_size)
        yield Batch.fully_paired(x_0, x_1)


def mixed_batches(
    unpaired: Iterable[RowBatch],
    paired: StreamFactory,
    unpaired_targets: StreamFactory,
    image_size: tuple[int, int],
) -> Iterator[Batch]:
    """One epoch of equal-proportion batches: ``[paired rows | unpaired rows]``.

    ``unpaired`` yields the unpaired sources (batches of ``n_u`` rows); ``paired`` and
    ``unpaired_targets`` are restartable (called with the cycle index, so each pass may reshuffle with
    a new seed) and are cycled. Only the ``source`` of ``unpaired`` rows and only the ``target`` of
    ``unpaired_targets`` rows are used. Returns ``Batch`` with ``source``/``target`` ``(B, 1, H, W)``
    and ``paired`` ``(B,)`` = ``[True] * n_p + [False] * n_u``.
    """
    paired_it = cycle(paired, "paired")
    targets_it = cycle(unpaired_targets, "unpaired-targets")
    for rows_u in unpaired:
        rows_p = next(paired_it)
        rows_t = next(targets_it)
        x_0u = as_images(rows_u["source"], image_size)
        x_1u = as_images(rows_t["target"], image_size)
        if x_1u.shape[0] != x_0u.shape[0]:
            raise ValueError(
                f"unpaired source batch has {x_0u.shape[0]} rows but the target batch {x_1u.shape[0]}; "
                "iterate both unpaired streams with the same batch size and drop_last=True"
            )
        x_0p = as_images(rows_p["source"], image_size)
        x_1p = as_images(rows_p["target"], image_size)
        yield Batch.paired_first(torch.cat([x_0p, x_0u]), torch.cat([x_1p, x_1u]), x_0p.shape[0])


def worker_batches(
    shards: Mapping[str, ShardLike],
    *,
    batch_size: int,
    image_size: tuple[int, int],
    seed: int,
    epoch: int,
    rank: int,
    shuffle_buffer_rows: int,
    prefetch_batches: int = 1,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """One epoch of this worker's ``Batch``es from its dataset shards (uniform or mixed by the names present).

    Every stream is iterated with ``drop_last=True`` (a batch is always exactly half/half) and a
    local shuffle buffer seeded by ``stream_seed``; ``dtypes`` float32 and ``device`` left to Ray
    ("auto": the worker's training device). Ray's fetch threads prepare ``prefetch_batches`` batches
    ahead and copy them to the device there (from pinned memory with ``pin_memory``), so the training
    step does not wait for the host-to-device copy.
    """

    def stream(name: str, rows: int, cycle_index: int = 0) -> Iterable[RowBatch]:
        return shards[name].iter_torch_batches(
            batch_size=rows,
            dtypes=torch.float32,
            drop_last=True,
            local_shuffle_buffer_size=shuffle_buffer_rows,
            local_shuffle_seed=stream_seed(seed, epoch, rank, name, cycle_index),
            prefetch_batches=prefetch_batches,
            pin_memory=pin_memory,
        )

    if ALL_PAIRED in shards:
        yield from uniform_batches(stream(ALL_PAIRED, batch_size), image_size)
        return
    n_p, n_u = split_sizes(batch_size)
    yield from mixed_batches(
        stream(UNPAIRED, n_u),
        lambda k: stream(PAIRED, n_p, k),
        lambda k: stream(UNPAIRED_TARGETS, n_u, k),
        image_size,
    )
