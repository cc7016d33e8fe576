"""Checkpoint round trip (no Ray): same syntheses after loading, same next optimizer step, safe loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bidpm.config import load_config
from bidpm.method import Batch, build_method
from bidpm.model import EMA, build_velocity_field
from bidpm.train.checkpoint import CONFIG_FILE, STATE_FILE, load_checkpoint, load_checkpoint_model, save_checkpoint
from bidpm.train.samples import grid_array, save_sample_grid

OVERRIDES = [
    "data.image_size=[16,16]", "model.base_channels=8", "model.channel_mults=[1,2]", "model.groups=4",
    "method.paired_distance=l2", "method.time_grid=[0,0.5,1]", "train.ema_decay=0.5",
]


def tiny_setup(seed: int = 0):
    cfg = load_config(None, OVERRIDES)
    torch.manual_seed(seed)
    model = build_velocity_field(cfg.model, (16, 16))
    ema = EMA(model, decay=cfg.train.ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return cfg, model, ema, opt


class NotAllowed:
    """Any class outside torch's weights_only allow-list."""


def one_step(model, ema, opt, method, x_0, x_1):
    opt.zero_grad()
    method.loss(model, Batch.fully_paired(x_0, x_1)).total.backward()
    opt.step()
    ema.update(model)


def test_round_trip_synthesises_the_same_and_resumes_the_same_step(tmp_path):
    cfg, model, ema, opt = tiny_setup()
    method = build_method(cfg.method)
    g = torch.Generator().manual_seed(1)
    x_0, x_1 = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1, torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
    for _ in range(3):
        one_step(model, ema, opt, method, x_0, x_1)
    save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=3, epoch=1, cfg=cfg, manifest_digest="abc")
    assert (tmp_path / STATE_FILE).is_file() and (tmp_path / CONFIG_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([STATE_FILE, CONFIG_FILE])  # no temp file left

    model2, ema_model2, cfg2 = load_checkpoint_model(tmp_path)
    assert cfg2 == cfg and not ema_model2.training
    with torch.no_grad():
        for direction, x in (("forward", x_0), ("backward", x_1)):
            assert torch.equal(method.sample(ema.module, x, direction=direction), method.sample(ema_model2, x, direction=direction))
            assert torch.equal(method.sample(model.eval(), x, direction=direction), method.sample(model2, x, direction=direction))
    # the EMA weights really differ from the raw weights (decay 0.5 after 3 steps), so both were stored
    assert not torch.equal(next(ema_model2.parameters()), next(model2.parameters()))

    # resuming: one more step from the checkpoint == one more step of the original run
    state = load_checkpoint(tmp_path)
    assert (state["step"], state["epoch"], state["manifest_digest"]) == (3, 1, "abc")
    _, model3, ema3, opt3 = tiny_setup(seed=123)  # different init: everything must come from the file
    model3.load_state_dict(state["model"])
    ema3.load_state_dict(state["ema"])
    opt3.load_state_dict(state["optimizer"])
    model.train()
    one_step(model, ema, opt, method, x_0, x_1)
    one_step(model3, ema3, opt3, method, x_0, x_1)
    for p, q in zip(model.parameters(), model3.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for p, q in zip(ema.module.parameters(), ema3.module.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_load_is_weights_only_and_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope")
    torch.save({"model": {}}, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="not a bidpm checkpoint"):
        load_checkpoint(tmp_path)
    # an arbitrary pickled object must be refused, not executed
    torch.save({"format": 1, "x": NotAllowed()}, tmp_path / STATE_FILE)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        load_checkpoint(tmp_path)


def test_sample_grid_layout(tmp_path):
    k, h, w = 2, 4, 5
    vals = [-1.0, -0.5, 0.0, 1.0]  # source, fwd, target, bwd -> 0, 64, 128, 255 (rounded)
    tiles = [torch.full((k, 1, h, w), v) for v in vals]
    arr = grid_array(*tiles, gap=2)
    assert arr.shape == (k * h + (k - 1) * 2, 6 * w + 2 + 2 + 4 + 2 + 2) and arr.dtype == np.uint8
    # row 0, tile columns: source | fwd | target || target | bwd | source
    starts = [0, w + 2, 2 * (w + 2), 3 * (w + 2) + 2, 4 * (w + 2) + 2, 5 * (w + 2) + 2]
    expected = [0, 64, 128, 128, 255, 0]
    for x, e in zip(starts, expected):
        assert np.all(arr[:h, x : x + w] == e), (x, e)
    assert np.all(arr[h : h + 2] == 255)  # separator between rows
    path = save_sample_grid(tmp_path, *tiles)
    from PIL import Image

    saved = np.asarray(Image.open(path))
    s = 128 // min(h, w)  # small tiles are enlarged by an integer factor, nearest neighbour
    assert saved.shape == (arr.shape[0] * s, arr.shape[1] * s)
    assert np.array_equal(saved[::s, ::s], arr) and np.array_equal(saved[s - 1 :: s, s - 1 :: s], arr)
