"""Synthesis (Algorithm 2 on slices; paper 3.2.4 on volumes) against closed forms and numpy references.

Models here are analytic velocity fields (no training), so every expected value is computed
independently: Riemann sums of the Euler steps, and numpy percentile/window maps of the raw voxels
read with nibabel in the file's own voxel order.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from bidpm.config import load_config
from bidpm.data.normalise import ct_params
from bidpm.data.phantom import write_phantoms
from bidpm.io.nifti import NiftiError, load_nifti
from bidpm.synthesis import (
    MR_OUTPUT_RANGE, SynthesisError, synthesize_file, synthesize_slices, synthesize_volume,
)

SHAPE = (40, 40, 16)


class Constant(nn.Module):
    """u(x, t) = c everywhere: Euler is exact, X^f_1 = x + c, X^b_0 = z - c for any grid."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x, t):
        return torch.full_like(x, self.c)


class TimeLinear(nn.Module):
    """u(x, t) = a t: Euler gives the left (forward) / right (backward) Riemann sums of a t dt."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        assert t.shape == (x.shape[0],)
        return self.a * t.view(-1, *([1] * (x.dim() - 1))).expand_as(x)


class Pattern(nn.Module):
    """u(x, t) = P (a fixed, non-symmetric (H, W) image): reveals the slices' in-plane orientation."""

    def __init__(self, p: torch.Tensor):
        super().__init__()
        self.register_buffer("p", p)

    def forward(self, x, t):
        return self.p.expand_as(x)


def cfg_for(*extra: str):
    return load_config(None, ["method.paired_distance=l2", "model.base_channels=8", "model.groups=4", *extra])


TRAIN_GRID = [0.0, 0.5, 1.0]


# --- slices -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [None, [0.0, 0.2, 1.0], [0.0, 0.1, 0.35, 0.7, 1.0]])
def test_constant_field_moves_by_c_in_both_directions(grid):
    grid = grid or TRAIN_GRID
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    model = Constant(0.3)
    torch.testing.assert_close(synthesize_slices(model, x, "forward", grid, batch_size=2), x + 0.3)
    torch.testing.assert_close(synthesize_slices(model, x, "backward", grid, batch_size=2), x - 0.3)


@pytest.mark.parametrize("grid", [None, [0.0, 0.2, 1.0], [0.0, 0.25, 0.5, 0.75, 1.0]])
def test_time_dependent_field_gives_the_riemann_sums(grid):
    grid = grid or TRAIN_GRID
    g = np.array(grid)
    a = 1.7
    left = float(sum(a * g[n - 1] * (g[n] - g[n - 1]) for n in range(1, len(g))))   # forward uses t_{n-1}
    right = float(sum(a * g[n] * (g[n] - g[n - 1]) for n in range(1, len(g))))     # backward uses t_n
    x = torch.randn(7, 1, 4, 4)
    model = TimeLinear(a)
    fwd = synthesize_slices(model, x, "forward", grid, batch_size=3)
    assert model.calls == 3 * (len(g) - 1)                     # 3 batches (3+3+1), N steps each
    torch.testing.assert_close(fwd, x + left)
    torch.testing.assert_close(synthesize_slices(model, x, "backward", grid, batch_size=100), x - right)
    assert left != pytest.approx(right)                        # the two directions really differ


class Conv(nn.Module):
    """A learnable (time-independent) field, to check mode / grad handling."""

    def __init__(self):
        super().__init__()
        self.net = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.net(x)


def test_slices_keep_mode_and_need_no_grad():
    wrapped = Conv().train()
    x = torch.randn(3, 1, 8, 8)
    y = synthesize_slices(wrapped, x, "forward", TRAIN_GRID, precision="bf16")   # bf16 autocast on CPU too
    assert wrapped.training and not y.requires_grad and y.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):   # Eq. 5 by hand: two Euler steps of 0.5
        net = wrapped.eval()
        x1 = x + 0.5 * net(x, None)
        expected = x1 + 0.5 * net(x1, None)
    torch.testing.assert_close(y, expected)


def test_bad_direction_and_grid_are_clear_errors():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(SynthesisError, match="direction"):
        synthesize_slices(Constant(0.0), x, "sideways", TRAIN_GRID)
    with pytest.raises(ValueError, match="synthesis grid"):
        synthesize_slices(Constant(0.0), x, "forward", grid=[0.0, 0.7])


def test_trained_model_samples_without_lpips_weights():
    """Synthesis runs the Euler solver only: a Bi-DPM model trained with LPIPS needs no VGG weights."""
    from bidpm.trained import TrainedModel

    cfg = cfg_for("method.paired_distance=lpips", "method.lpips_backbone_weights=/nonexistent.pth",
                  "method.time_grid=[0,0.25,1]")
    x = torch.randn(2, 1, 8, 8)
    model = TrainedModel(Constant(0.4), cfg, "test")
    torch.testing.assert_close(model.sample(x, "forward"), x + 0.4)
    torch.testing.assert_close(model.sample(x, "backward", grid=[0.0, 1.0]), x - 0.4)


# --- volumes ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(root / "synthrad", 1, SHAPE, seed=3, layout="synthrad", region="brain")   # RAS, CT int16 + mask
    write_phantoms(root / "brats", 1, SHAPE, seed=3, layout="brats", region="brain")         # LPS, skull-stripped MR
    return {
        "ct": root / "synthrad" / "brain" / "1BA000" / "ct.nii.gz",
        "mr": root / "synthrad" / "brain" / "1BA000" / "mr.nii.gz",
        "mask": root / "synthrad" / "brain" / "1BA000" / "mask.nii.gz",
        "t1": root / "brats" / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz",
    }


def synthrad_cfg(size: int):
    return cfg_for("data.layout=phantom", "data.phantom.layout=synthrad", f"data.image_size=[{size},{size}]")


def brats_cfg(size: int):
    return cfg_for("data.layout=phantom", "data.phantom.layout=brats", f"data.image_size=[{size},{size}]",
                   "model.channel_mults=[1,2]")


def test_ct_window_round_trip_with_u_zero_returns_the_clipped_hu(phantoms, tmp_path):
    cfg = synthrad_cfg(40)                                     # 40 = in-plane size: resizing is the identity
    raw = np.asarray(nib.load(phantoms["ct"]).dataobj, dtype=np.float32)
    out = tmp_path / "ct_back.nii.gz"
    # input CT (backward = ct -> mr), outputs mapped by the CT window instead of the MR range
    data, affine = synthesize_volume(Constant(0.0), phantoms["ct"], cfg, "backward",
                                     out_params=ct_params(cfg.data.ct_window), output_path=out)
    np.testing.assert_allclose(data, np.clip(raw, -1024.0, 3000.0), atol=0.05)   # float32 round-off only
    np.testing.assert_allclose(affine, nib.load(phantoms["ct"]).affine)
    written = nib.load(out)
    assert written.shape == raw.shape and np.allclose(written.affine, nib.load(phantoms["ct"]).affine)
    assert not list(tmp_path.glob(".*tmp*"))                   # atomic: no temp file left behind
    assert written.header["descrip"].tobytes().strip(b"\x00") == b""              # no header text copied


def test_ct_round_trip_through_a_smaller_slice_size_matches_up_to_resize_error(phantoms):
    cfg = synthrad_cfg(16)
    raw = np.clip(np.asarray(nib.load(phantoms["ct"]).dataobj, dtype=np.float32), -1024, 3000)
    data, _ = synthesize_volume(Constant(0.0), phantoms["ct"], cfg, "backward",
                                out_params=ct_params(cfg.data.ct_window))
    assert data.shape == raw.shape and data.min() >= -1024 - 1e-3 and data.max() <= 3000 + 1e-3
    # 40 -> 16 -> 40 blurs edges; the volume mean is kept (the resampling weights sum to one) and the
    # anatomy stays in place
    assert abs(float(data.mean() - raw.mean())) < 0.02 * 4024
    assert np.corrcoef(data.ravel(), raw.ravel())[0, 1] > 0.9


def test_ct_to_mr_values_in_the_mr_output_range(phantoms):
    cfg = synthrad_cfg(16)
    data, affine = synthesize_volume(Constant(5.0), phantoms["ct"], cfg, "backward")
    assert data.shape == SHAPE
    # u = 5 pushes every voxel far above 1: clipped to the top of the MR range (minus, CT -> MR is backward)
    assert np.all(data >= MR_OUTPUT_RANGE[0]) and np.all(data <= MR_OUTPUT_RANGE[1])
    data_fwd, _ = synthesize_volume(Constant(5.0), phantoms["mr"], cfg, "forward",
                                    mask=phantoms["mask"])
    np.testing.assert_allclose(data_fwd, 3000.0)            # MR -> CT: +5 saturates at the window's top
    np.testing.assert_allclose(data, MR_OUTPUT_RANGE[0])     # CT -> MR: -5 saturates at the range's bottom


def test_lps_input_keeps_shape_affine_and_voxel_order(phantoms, tmp_path):
    """t1 -> t2 on an LPS-stored file with u = P: the expected output is built in numpy from the raw
    file: RAS = flip x and y; MR percentiles inside the nonzero mask; + P on every transverse slice."""
    cfg = brats_cfg(40)
    img = nib.load(phantoms["t1"])
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    raw = np.asarray(img.dataobj, dtype=np.float32)
    pattern = torch.linspace(-0.5, 0.5, 40 * 40).reshape(40, 40) ** 3            # not symmetric
    out = tmp_path / "t2.nii.gz"
    path = synthesize_file(Pattern(pattern), phantoms["t1"], out, cfg, "forward")
    got = nib.load(path)
    assert got.shape == raw.shape
    np.testing.assert_allclose(got.affine, img.affine, atol=1e-6)

    ras = raw[::-1, ::-1, :]                                 # LPS -> RAS
    lo, hi = np.percentile(raw[raw != 0], cfg.data.mr_percentiles)
    norm = 2 * (np.clip(ras, lo, hi) - lo) / (hi - lo) - 1
    y = np.clip(norm + pattern.numpy()[:, :, None], -1, 1)
    expected_ras = (y + 1) / 2 * (MR_OUTPUT_RANGE[1] - MR_OUTPUT_RANGE[0]) + MR_OUTPUT_RANGE[0]
    np.testing.assert_allclose(np.asarray(got.dataobj), expected_ras[::-1, ::-1, :], atol=0.05)


def test_volume_object_input_and_bad_inputs(phantoms, tmp_path):
    cfg = brats_cfg(16)
    vol = load_nifti(phantoms["t1"])
    data, affine = synthesize_volume(Constant(0.0), vol, cfg, "forward")
    assert data.shape == vol.original_shape and np.allclose(affine, vol.original_affine)
    # u = 0, MR -> MR: background (0 < 0.5th percentile inside the mask) maps to -1 -> exactly 0
    assert data.min() == pytest.approx(0.0) and data.max() <= 1000.0
    with pytest.raises(NiftiError, match="does not exist"):
        synthesize_volume(Constant(0.0), tmp_path / "missing.nii.gz", cfg)
    with pytest.raises(SynthesisError, match="direction"):
        synthesize_volume(Constant(0.0), vol, cfg, "up")
    with pytest.raises(SynthesisError, match="mask"):
        synthesize_volume(Constant(0.0), vol, cfg, mask=np.zeros(SHAPE))


class NaNField(nn.Module):
    """u(x, t) = NaN on the first slice of each batch: what an fp16 overflow or a broken checkpoint gives."""

    def forward(self, x, t):
        out = torch.zeros_like(x)
        out[0] = float("nan")
        return out


def test_a_synthesis_with_non_finite_voxels_is_an_error_and_writes_nothing(phantoms, tmp_path):
    cfg = synthrad_cfg(40)
    out = tmp_path / "nan.nii.gz"
    with pytest.raises(SynthesisError, match=r"ct\.nii\.gz.*non-finite voxel.*nothing was written"):
        synthesize_volume(NaNField(), phantoms["ct"], cfg, "backward", output_path=out)
    assert not out.exists() and not list(tmp_path.iterdir())     # no output, no temp file


def test_outputs_never_collide_or_replace_silently(tmp_path):
    """Issue 22 (low): x_t1.nii and x_t1.nii.gz mapped to one output, and existing outputs were
    overwritten without a word."""
    from bidpm.config import ConfigError
    from bidpm.data.inputs import output_paths

    a, b = tmp_path / "in" / "x_t1.nii", tmp_path / "in" / "x_t1.nii.gz"
    with pytest.raises(ConfigError, match=r"x_t1.nii and .*x_t1.nii.gz would both be written to .*x_t1_synth-t2.nii.gz"):
        output_paths([a, b], tmp_path / "out", "t2")
    (out,) = output_paths([b], tmp_path / "out", "t2")
    assert out == tmp_path / "out" / "x_t1_synth-t2.nii.gz"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"earlier result")
    with pytest.raises(ConfigError, match=r"exist already; fix: pass --overwrite"):
        output_paths([b], tmp_path / "out", "t2")
    assert output_paths([b], tmp_path / "out", "t2", overwrite=True) == [out]


def test_save_nifti_leaves_no_temp_file_when_the_disk_is_full(tmp_path, monkeypatch):
    import errno

    import nibabel as nib

    from bidpm.io.nifti import save_nifti

    def full(img, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full)
    with pytest.raises(OSError, match="No space left"):
        save_nifti(tmp_path / "o.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))
    assert list(tmp_path.iterdir()) == []
