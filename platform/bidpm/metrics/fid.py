"""FID between two image sets with torchvision's Inception v3, when its weights are on this machine.

Nothing is downloaded: the weights come from the torch hub cache (``TORCH_HOME``) or a given path, and
their absence raises ``FIDWeightsUnavailable`` naming the file and where to put it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .image import _float32

__all__ = ["FIDWeightsUnavailable", "INCEPTION_WEIGHTS_FILE", "feature_statistics", "fid", "frechet_distance",
           "inception_features", "inception_weights_path"]

INCEPTION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision Inception_V3_Weights.IMAGENET1K_V1


class FIDWeightsUnavailable(RuntimeError):
    """The Inception v3 ImageNet weights are not on this machine (nothing is downloaded)."""


def inception_weights_path(weights_path: Optional[str | Path] = None) -> Path:
    """The configured file, else ``torch.hub.get_dir()/checkpoints/inception_v3_google-0cc3c7bd.pth``.

    Raises ``FIDWeightsUnavailable`` naming the file and where to put it when it is missing.
    """
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise FIDWeightsUnavailable(
                f"FID: Inception v3 weights file {p} does not exist; pass the path of torchvision's "
                f"{INCEPTION_WEIGHTS_FILE} (https://download.pytorch.org/models/{INCEPTION_WEIGHTS_FILE})")
        return p
    p = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if not p.is_file():
        raise FIDWeightsUnavailable(
            f"FID needs torchvision's Inception v3 ImageNet weights and nothing is downloaded here: "
            f"put {INCEPTION_WEIGHTS_FILE} (from https://download.pytorch.org/models/{INCEPTION_WEIGHTS_FILE}) "
            f"at {p} (the torch hub cache; set TORCH_HOME to move it), or pass weights_path=<file>; "
            f"or leave FID out (SSIM/PSNR/MAE need no weights)")
    return p


def _inception(weights_path: Optional[str | Path], device: torch.device) -> torch.nn.Module:
    """Inception v3 with ImageNet weights, fc removed: (N,3,299,299) ImageNet-normalised -> (N,2048)."""
    from torchvision.models import inception_v3  # lazy: only FID needs torchvision

    path = inception_weights_path(weights_path)
    net = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise FIDWeightsUnavailable(f"FID: {path} is not torchvision's Inception v3 state dict ({exc})") from None
    net.fc = torch.nn.Identity()
    return net.eval().requires_grad_(False).to(device)


@torch.no_grad()
def inception_features(images: Tensor, net: torch.nn.Module, value_range: tuple[float, float] = (-1.0, 1.0),
                       batch_size: int = 32) -> np.ndarray:
    """Pool-3 features (N,2048) float64 of images (N,C,H,W), C in {1,3}, values in ``value_range``.

    One channel is repeated to three; images are resized to 299x299 (bilinear) and normalised as
    torchvision's ImageNet transform expects.
    """
    lo, hi = value_range
    device = next(net.parameters()).device
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    feats = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device=device, dtype=torch.float32)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        with _float32(device):
            feats.append(net((x - mean) / std).double().cpu())
    return torch.cat(feats).numpy()


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,D) -> mean (D,) and sample covariance (D,D), float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID: need features (N,D) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; FID).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``. The trace term uses
    ``tr((s1 s2)^{1/2}) = sum sqrt(eig(s1^{1/2} s2 s1^{1/2}))``: the matrix is symmetric PSD, so
    eigh is stable where a general ``sqrtm`` of the non-symmetric product can return complex noise.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shapes mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape} "
                         "do not match (need (D,) and (D,D))")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid(real: Tensor | Iterable[Tensor], fake: Tensor | Iterable[Tensor], *,
        weights_path: Optional[str | Path] = None, device: str | torch.device = "cpu",
        value_range: tuple[float, float] = (-1.0, 1.0), batch_size: int = 32) -> float:
    """FID between two image sets (N,C,H,W) (or iterables of batches) with torchvision's Inception v3.

    Uses torchvision's ImageNet weights (not the TF-ported FID weights of pytorch-fid), so values
    compare between our runs but not with published FIDs. Needs a few hundred images per side to be
    meaningful (2048-D covariances). Raises ``FIDWeightsUnavailable`` when the weights are absent.
    """
    net = _inception(weights_path, torch.device(device))

    def feats(x: Tensor | Iterable[Tensor]) -> np.ndarray:
        batches = [x] if isinstance(x, Tensor) else list(x)
        return np.concatenate([inception_features(b, net, value_range, batch_size) for b in batches])

    return frechet_distance(*feature_statistics(feats(real)), *feature_statistics(feats(fake)))
