"""Scores on the original volumes (bidpm.evaluation.original) against a synthesis written here in numpy.

A subject's MR, CT and mask are NIfTI files in LPS voxel order (not the RAS the platform works in) at the
model's image size; the "model" is the field u = c, so one Euler step adds c to the normalised input and
the expected synthesis has a closed form: the MR normalised by numpy's percentiles in the mask, + c,
clipped, back to HU through the CT window (forward); the CT's window - c, to MR_OUTPUT_RANGE (backward).
The platform's per-subject metrics must equal the metric functions applied to that numpy synthesis in the
file's own voxel order - so synthesis at the file's geometry, the reorientation, the masks and the
normalisations are all checked, and a synthesis left in the wrong voxel order would not match.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from bidpm.config import load_config
from bidpm.data.layouts import SubjectFiles
from bidpm.evaluation.original import OriginalScores, score_subject
from bidpm.metrics.clinical import synthrad_metrics, volume_metrics
from bidpm.metrics.consistency import inter_slice_consistency
from bidpm.metrics.synthrad2025 import synthrad2025_metrics

C = 0.15


class Shift(torch.nn.Module):
    def forward(self, x, t):
        return torch.full_like(x, C)


def _subject(tmp_path):
    """MR, CT, mask (X, Y, Z) = (32, 32, 12) in LPS order, with structure that differs along every axis."""
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(np.arange(32), np.arange(32), np.arange(12), indexing="ij")
    body = ((x - 13) ** 2 / 12 ** 2 + (y - 17) ** 2 / 10 ** 2 + (z - 5) ** 2 / 7 ** 2) < 1
    body[:, :, 0] = False
    mr = np.where(body, 400 + 8 * x + 3 * y + 20 * z + 30 * rng.standard_normal(body.shape), 0).astype(np.float32)
    ct = np.where(body, 40 + 25 * x - 6 * y + 90 * np.sin(z) + 20 * rng.standard_normal(body.shape), -1000).astype(np.float32)
    ct[body & (x > 20)] = 1200                                            # "bone"
    affine = np.diag([-1.2, -1.1, 2.5, 1.0])                              # L, P, S: the file is not RAS
    paths = {}
    for name, arr in (("mr", mr), ("ct", ct), ("mask", body.astype(np.uint8))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), paths[name])
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    return SubjectFiles("s0", str(paths["mr"]), str(paths["ct"]), str(paths["mask"])), mr, ct, body


def _expected(files, mr, ct, body, direction):
    """(prediction, reference) on the unit scale and the HU synthesis, in the FILE's voxel order (numpy only)."""
    if direction == "forward":
        lo, hi = np.percentile(mr[body], [0.5, 99.5])
        y = np.clip(np.clip(2 * (np.clip(mr, lo, hi) - lo) / (hi - lo) - 1, -1, 1) + C, -1, 1)
        sct = (y + 1) / 2 * (3000 + 1024) - 1024
        ref_n = np.clip(2 * (np.clip(ct, -1024, 3000) + 1024) / 4024 - 1, -1, 1)
        return (y + 1) / 2, (ref_n + 1) / 2, sct
    y = np.clip(np.clip(2 * (np.clip(ct, -1024, 3000) + 1024) / 4024 - 1, -1, 1) - C, -1, 1)
    lo, hi = np.percentile(mr[body], [0.5, 99.5])
    ref_n = np.clip(2 * (np.clip(mr, lo, hi) - lo) / (hi - lo) - 1, -1, 1)
    return (y + 1) / 2, (ref_n + 1) / 2, None


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_subject_is_scored_on_its_own_file_geometry(tmp_path, direction):
    files, mr, ct, body = _subject(tmp_path)
    cfg = load_config(None, ["data.layout=synthrad", "data.source_modality=mr", "data.target_modality=ct",
                             "data.image_size=[32,32]", "method.time_grid=[0.0,1.0]"])
    got = score_subject(Shift(), cfg, files, direction, [0.0, 1.0], batch_size=8, precision="fp32")
    pred, ref, sct = _expected(files, mr, ct, body, direction)
    p, r, m = (np.moveaxis(a, 2, 0).astype(np.float64) for a in (pred, ref, body))
    want = {f"vol_{k}": v for k, v in volume_metrics(p, r, 1.0, m).items()}
    want.update(inter_slice_consistency(p, r, 1.0, m))
    if direction == "forward":                                            # the direction that produces CT
        want.update({f"hu_{k}": v for k, v in synthrad_metrics(ct.astype(np.float64), sct, body).items()})
        want.update({f"hu25_{k}": v for k, v in synthrad2025_metrics(ct.astype(np.float64), sct, body).items()})
        assert float(np.abs(ct - sct)[body].mean()) == pytest.approx(got["hu_mae"], rel=1e-4)   # MAE in HU, by hand
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=2e-4, abs=2e-4), k
    # the same synthesis flipped back into RAS order would not match: the check sees the voxel order
    wrong = volume_metrics(np.moveaxis(pred[::-1, ::-1], 2, 0).astype(np.float64), r, 1.0, m)["ssim"]
    assert abs(wrong - got["vol_ssim"]) > 0.05


def test_the_summary_skips_unscored_subjects():
    orig = OriginalScores("test", ["a", "b", "c"], {"fwd": {"hu_mae": np.array([10.0, np.nan, 30.0])},
                                                   "bwd": {"vol_ssim": np.array([0.5, 0.7, 0.9])}}, {"b": "forward: x"})
    s = orig.summary()
    assert s["test/fwd_orig_hu_mae_mean"] == 20.0 and s["test/fwd_orig_hu_mae_std"] == 10.0
    assert s["test/bwd_orig_vol_ssim_mean"] == pytest.approx(0.7) and s["test/orig_volumes"] == 3.0
