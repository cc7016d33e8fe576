"""EMA of weights against a hand-written numpy recurrence; state_dict round trip; DDP unwrapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from bidpm.model import EMA, unwrap_model


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("counter", torch.zeros(2))


def _params(m: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy().copy() for k, v in m.named_parameters()}


def _random_step(m: nn.Module, k: int) -> None:
    g = torch.Generator().manual_seed(100 + k)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        m.counter.fill_(float(k + 1))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_numpy_recurrence(warmup):
    torch.manual_seed(0)
    model = Tiny().double()
    decay = 0.9
    ema = EMA(model, decay=decay, warmup=warmup)
    ref = _params(model)
    for k in range(3):
        _random_step(model, k)
        ema.update(model)
        d = min(decay, (1 + k) / (10 + k)) if warmup else decay  # k-th update, k = 0, 1, 2
        cur = _params(model)
        ref = {n: d * ref[n] + (1 - d) * cur[n] for n in ref}
    got = _params(ema.module)
    for n in ref:
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-12, atol=1e-12)
    # buffers are copied, not averaged
    assert ema.module.counter.tolist() == [3.0, 3.0]
    assert ema.num_updates == 3
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_dict_round_trip_and_copy_to():
    torch.manual_seed(0)
    model = Tiny()
    ema = EMA(model, decay=0.5, warmup=True)
    for k in range(2):
        _random_step(model, k)
        ema.update(model)
    state = ema.state_dict()

    other = EMA(Tiny(), decay=0.99)
    other.load_state_dict(state)
    assert (other.decay, other.warmup, other.num_updates) == (0.5, True, 2)
    for (n, a), (_, b) in zip(ema.module.state_dict().items(), other.module.state_dict().items()):
        assert torch.equal(a, b), n
    assert other.current_decay() == ema.current_decay() == min(0.5, 3 / 12)

    fresh = Tiny()
    other.copy_to(fresh)
    for (n, a), (_, b) in zip(fresh.state_dict().items(), ema.module.state_dict().items()):
        assert torch.equal(a, b), n


def test_ema_unwraps_data_parallel_wrappers(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    wrapped = nn.DataParallel(model)  # no GPU: a plain wrapper with ``.module``
    ema = EMA(wrapped, decay=0.5)
    assert list(ema.module.state_dict()) == list(model.state_dict())  # no "module." prefix
    _random_step(model, 0)
    before = _params(ema.module)
    ema.update(wrapped)
    after, cur = _params(ema.module), _params(model)
    for n in before:
        np.testing.assert_allclose(after[n], 0.5 * before[n] + 0.5 * cur[n], rtol=1e-6)

    if dist.is_initialized():
        pytest.skip("a process group already exists")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(ddp) is model
        ema2 = EMA(ddp, decay=0.5)
        ema2.update(ddp)
        assert list(ema2.module.state_dict()) == list(model.state_dict())
    finally:
        dist.destroy_process_group()


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(Tiny(), decay=1.0)
