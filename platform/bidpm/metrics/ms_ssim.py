"""Multi-scale SSIM per image (Wang, Simoncelli and Bovik, 2003), one value per image, shape ``(B,)``.

MS-SSIM = prod_j cs_j ** w_j over five scales, the coarsest also carrying the luminance term:
at scales 1..4 the mean contrast-structure map cs = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2),
at scale 5 the mean SSIM map l * cs; between scales both images are averaged over 2x2 blocks
(an odd last row or column dropped). Choices, where the paper leaves them open:

- The window, constants and valid-position maps are SSIM's (``bidpm.metrics.image``: Gaussian 11x11,
  sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances), so at one scale with weight 1 this is
  exactly the SSIM the platform reports. The weights are the paper's
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).
- Each scale's mean is clamped at 0 before its fractional power (a negative cs would give NaN), as
  common implementations (pytorch-msssim) do.
- The coarsest scale needs the whole window after four halvings that drop odd edges: images of at
  least 11 * 2^4 = 176 pixels per side (``MS_SSIM_MIN_SIZE``); smaller images are an error here, and
  the evaluation leaves the metric out for them.
- ``mask``: averaged over 2x2 blocks with the images (a pixel half inside weighs 1/2), each scale's map
  averaged with those weights at valid positions; an empty mask at some scale gives NaN.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .image import SSIM_WINDOW, _as_images, _as_mask, _float32, _gaussian_window, _l_cs, _weighted_mean

__all__ = ["MS_SSIM_MIN_SIZE", "MS_SSIM_WEIGHTS", "ms_ssim"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIZE = SSIM_WINDOW * 2 ** (len(MS_SSIM_WEIGHTS) - 1)


def ms_ssim(pred: Tensor, ref: Tensor, data_range: float = 2.0, mask: Optional[Tensor] = None,
            weights: Sequence[float] = MS_SSIM_WEIGHTS) -> Tensor:
    """MS-SSIM per image, (B,) float32 (module doc); ``weights``: one per scale, finest first."""
    pred, ref = _as_images(pred, ref, data_range)
    h, w = pred.shape[-2:]
    need = SSIM_WINDOW * 2 ** (len(weights) - 1)
    if min(h, w) < need:
        raise ValueError(f"ms_ssim: images are {h}x{w}; {len(weights)} scales of an {SSIM_WINDOW}x{SSIM_WINDOW} "
                         f"window need at least {need}x{need} pixels")
    m = _as_mask(mask, pred)
    r = SSIM_WINDOW // 2
    with _float32(pred.device):
        g = _gaussian_window(pred.device)
        out = torch.ones(pred.shape[0], device=pred.device)
        x, y = pred, ref
        for j, wj in enumerate(weights):
            lum, cs = _l_cs(x, y, data_range, g)
            last = j == len(weights) - 1
            v = _weighted_mean(lum * cs if last else cs, None if m is None else m[..., r:-r, r:-r])
            out = out * v.clamp_min(0.0) ** wj
            if not last:
                x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
                m = None if m is None else F.avg_pool2d(m, 2)
    return out
