"""Checkpoint round trip (no Ray): same syntheses after loading, same next optimizer step, safe loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bidpm.config import load_config
from bidpm.method import Batch, build_method
from bidpm.model import EMA, build_velocity_field
from bidpm.train.checkpoint import CONFIG_FILE, STATE_FILE, load_checkpoint, load_checkpoint_model, save_checkpoint
from bidpm.train.samples import SAMPLES_FILE, grid_array, save_sample_grid, tiles_array

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


def _grey(x: np.ndarray) -> np.ndarray:
    """Independent reference: [-1, 1] -> 0..255, clipped (module docstring)."""
    return np.round(np.clip((x + 1) / 2, 0, 1) * 255).astype(np.uint8)


def _err_grey(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Independent reference: |a - b| on the documented fixed scale [0, 1] -> 0..255, clipped."""
    return np.round(np.clip(np.abs(a - b), 0, 1) * 255).astype(np.uint8)


def _tiles(k: int, h: int, w: int, seed: int = 0):
    """Four (k, 1, h, w) tensors of multiples of 1/8 in [-1.25, 1.25] (exact in float32; some clip)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-10, 11, (k, 1, h, w), generator=g).float() / 8 for _ in range(4)]


def _expected_rows(tiles) -> list[list[np.ndarray]]:
    """Per slice, the 8 tiles: source | fwd | target | |fwd-target| || target | bwd | source | |bwd-source|."""
    s, f, t, b = (x[:, 0].numpy() for x in tiles)
    return [[_grey(s[i]), _grey(f[i]), _grey(t[i]), _err_grey(f[i], t[i]),
             _grey(t[i]), _grey(b[i]), _grey(s[i]), _err_grey(b[i], s[i])] for i in range(s.shape[0])]


def test_sample_grid_tiles_and_error_columns():
    k, h, w = 2, 4, 5
    tiles = _tiles(k, h, w)
    for x, (f, t) in enumerate([(0.5, 0.5), (1.25, -1.25), (0.25, -0.125)]):  # fwd, target at row 0, pixel (0, x)
        tiles[1][0, 0, 0, x], tiles[2][0, 0, 0, x] = f, t
    arr = tiles_array(*tiles, gap=2)
    # 8 tiles, 2-px gaps, 4 px between the directions; rows 2 px apart
    assert arr.shape == (k * h + (k - 1) * 2, 8 * w + 6 * 2 + 4) and arr.dtype == np.uint8
    starts = [0, 7, 14, 21, 30, 37, 44, 51]
    for i, row in enumerate(_expected_rows(tiles)):
        y = i * (h + 2)
        for x, e in zip(starts, row):
            np.testing.assert_array_equal(arr[y : y + h, x : x + w], e, err_msg=f"row {i} x {x}")
    assert np.all(arr[h : h + 2] == 255)  # separator between rows
    gap_cols = [x - d for x in starts[1:] for d in (1, 2)] + [28]
    assert np.all(arr[:, gap_cols] == 255)  # separators between tiles (incl. the 4-px one)
    # the fixed [0, 1] error scale by hand: |0| -> black, |2.5| -> white (clipped), |0.375| -> 95.6 -> 96
    assert arr[0, 21 : 21 + 3].tolist() == [0, 255, 96]


def test_sample_grid_has_a_title_band_over_enlarged_tiles():
    k, h, w = 3, 32, 32
    tiles = _tiles(k, h, w, seed=1)
    s = 128 // 32  # tiles enlarged to 128 px (MIN_TILE), nearest neighbour
    plain, named = grid_array(*tiles), grid_array(*tiles, modalities=("T1", "T2"))
    body_h = s * (k * h + (k - 1) * 2)
    assert plain.dtype == np.uint8 and plain.shape[1] == s * (8 * w + 16)
    band = plain.shape[0] - body_h
    assert band >= 24  # two title lines above the first row
    assert named.shape == plain.shape
    for arr in (plain, named):
        body = arr[band:]
        ref = tiles_array(*tiles)
        assert np.array_equal(body[::s, ::s], ref) and np.array_equal(body[s - 1 :: s, s - 1 :: s], ref)
        for i, row in enumerate(_expected_rows(tiles)):  # and the tiles hold the independent values
            for j, e in enumerate(row):
                x, y = s * (j * (w + 2) + (2 if j >= 4 else 0)), s * i * (h + 2)
                np.testing.assert_array_equal(body[y : y + s * h : s, x : x + s * w : s], e)
    x0 = [s * (j * (w + 2) + (2 if j >= 4 else 0)) for j in range(8)]
    for arr in (plain, named):
        top = arr[:band]
        for j, x in enumerate(x0):  # every column has a dark title of readable height over it
            ink = top[:, x : x + s * w] < 100
            rows = np.flatnonzero(ink.any(axis=1))
            assert rows.size and rows[-1] - rows[0] >= 6, j  # x-height of a ~16 px font
        for x in x0[1:]:  # nothing drawn over the white separators: titles stay inside their tile
            assert np.all(top[:, x - 2 * s : x] == 255)
        for x in (x0[3], x0[7]):  # the |error| columns carry a black-to-white scale bar
            seg = top[:, x : x + s * w].astype(int)
            ramps = [r for r in seg if _longest_ramp(r) >= s * w // 2]
            assert ramps, "no scale bar"
    # the modality names change only the titles
    assert not np.array_equal(plain[:band], named[:band]) and np.array_equal(plain[band:], named[band:])


def _longest_ramp(r: np.ndarray) -> int:
    """Length of the longest non-decreasing run in ``r`` that climbs from <= 10 to >= 245."""
    best, start = 0, 0
    for i in range(1, len(r) + 1):
        if i == len(r) or r[i] < r[i - 1]:
            if r[start] <= 10 and r[i - 1] >= 245:
                best = max(best, i - start)
            start = i
    return best


def test_save_sample_grid_writes_the_png_atomically(tmp_path):
    from PIL import Image

    tiles = _tiles(2, 8, 8)
    path = save_sample_grid(tmp_path, *tiles)  # the training loop's call: tensors only
    assert path == tmp_path / SAMPLES_FILE and [p.name for p in tmp_path.iterdir()] == [SAMPLES_FILE]
    with Image.open(path) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), grid_array(*tiles))
    save_sample_grid(tmp_path, *tiles, modalities=("T1", "T2"))  # replaces it, still no temp file
    assert [p.name for p in tmp_path.iterdir()] == [SAMPLES_FILE]
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), grid_array(*tiles, modalities=("T1", "T2")))


def test_a_checkpoint_from_before_a_new_model_field_resumes_and_another_shape_does_not():
    """A run started before ``model.step_conditioned`` existed resumes (the field holds its default);
    another network shape, or a changed new field, is refused with the fix named."""
    from bidpm.train.checkpoint import check_resumable

    cfg = load_config(None, OVERRIDES)
    old = {k: v for k, v in cfg.model.model_dump(mode="json").items() if k != "step_conditioned"}
    check_resumable({"manifest_digest": "d", "config": {"model": old}}, cfg, "d")
    for bad in ({**old, "base_channels": old["base_channels"] * 2}, {**old, "step_conditioned": True}):
        with pytest.raises(ValueError, match="pick a new train.run_name"):
            check_resumable({"manifest_digest": "d", "config": {"model": bad}}, cfg, "d")
