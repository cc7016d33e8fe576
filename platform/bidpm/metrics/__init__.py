"""Synthesis metrics, one module per concern.

- ``image``: SSIM, PSNR, MAE per 2-D image (torch), the scale given explicitly as ``data_range``;
- ``aggregate``: mean/std summaries and a streaming accumulator over a split;
- ``fid``: FID with torchvision's Inception v3 (local weights only);
- ``clinical``: SynthRAD2023's official MAE/PSNR/SSIM on CT volumes in HU, and per-volume 3-D SSIM/PSNR
  (paper Table 5), on numpy volumes.

Which value scale a reported number uses is decided in ``bidpm.evaluation``, not here.
"""

from .aggregate import BACKWARD, FORWARD, MetricAccumulator, direction_metrics, summarise
from .clinical import synthrad_metrics, volume_metrics
from .fid import (
    INCEPTION_WEIGHTS_FILE, FIDWeightsUnavailable, _inception, feature_statistics, fid, frechet_distance,  # noqa: F401
    inception_features, inception_weights_path,
)
from .image import PSNR_MAX_DB, SSIM_WINDOW, image_metrics, mae, psnr, ssim, ssim_map

__all__ = [
    "BACKWARD", "FORWARD", "FIDWeightsUnavailable", "INCEPTION_WEIGHTS_FILE", "MetricAccumulator",
    "PSNR_MAX_DB", "SSIM_WINDOW", "direction_metrics", "feature_statistics", "fid", "frechet_distance",
    "image_metrics", "inception_features", "inception_weights_path", "mae", "psnr", "ssim", "ssim_map", "summarise",
    "synthrad_metrics", "volume_metrics",
]
