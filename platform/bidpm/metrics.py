"""Image-quality metrics for synthesis: SSIM, PSNR, MAE per image, plus FID when weights are local.

Every metric returns one value per image, shape ``(B,)``, so callers can aggregate per subject,
per direction or over a whole split (``summarise``, ``MetricAccumulator``, ``direction_metrics``).

Choices (the paper reports SSIM/PSNR on [-1, 1] images without spelling these out):

- ``data_range`` is explicit (default 2.0 for images in [-1, 1]); it sets SSIM's C1, C2 and PSNR's peak.
- SSIM follows Wang et al. (2004): Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, population
  (co)variances. The map is computed only where the whole window lies inside the image ("valid"
  positions, a 5-pixel border dropped), which equals scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``; that
  function also drops the border before averaging. Multi-channel images: mean over channels.
- All arithmetic runs in float32 with autocast disabled, so a bf16/fp16 training loop still gets
  float32 metrics.
- PSNR of identical images would be +inf; the MSE is clamped at ``data_range**2 * 10**(-PSNR_MAX_DB/10)``
  so PSNR is capped at ``PSNR_MAX_DB`` (100 dB). Finite values keep means, MLflow metrics and Tune
  objectives usable; real syntheses are far below the cap.
- Optional ``mask`` ((B,1,H,W), (B,H,W) or (B,C,H,W); nonzero = inside, fractional values act as
  weights): MAE and PSNR average the per-pixel error over the mask; SSIM averages its map over the mask
  pixels at valid positions (the window itself still sees the neighbourhood, mask or not, as in the
  usual "SSIM in the body mask" of synthesis papers). An image whose mask is empty there gets NaN;
  ``summarise`` and ``MetricAccumulator`` skip NaN values (and report how many images they counted).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BACKWARD", "FORWARD", "FIDWeightsUnavailable", "INCEPTION_WEIGHTS_FILE", "MetricAccumulator",
    "PSNR_MAX_DB", "SSIM_WINDOW", "direction_metrics", "feature_statistics", "fid", "frechet_distance",
    "image_metrics", "inception_features", "inception_weights_path", "mae", "psnr", "ssim", "summarise",
]

PSNR_MAX_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
FORWARD = "fwd"   # source -> target synthesis
BACKWARD = "bwd"  # target -> source synthesis


# --- input handling ----------------------------------------------------------------------------------
def _as_images(pred: Tensor, ref: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """(B,C,H,W) or (B,H,W) -> float32 (B,C,H,W) pair; checks shapes and data_range."""
    if pred.shape != ref.shape:
        raise ValueError(f"metrics: pred shape {tuple(pred.shape)} != ref shape {tuple(ref.shape)}; "
                         "pass the synthesis and its reference with the same (B,C,H,W)")
    if pred.dim() == 3:
        pred, ref = pred.unsqueeze(1), ref.unsqueeze(1)
    if pred.dim() != 4:
        raise ValueError(f"metrics: expected images (B,C,H,W) or (B,H,W), got shape {tuple(pred.shape)}")
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"metrics: data_range must be a positive number (max - min of the image scale, "
                         f"2.0 for [-1, 1]), got {data_range!r}")
    return pred.float(), ref.float()


def _as_mask(mask: Optional[Tensor], images: Tensor) -> Optional[Tensor]:
    """mask (B,1,H,W) / (B,H,W) / (B,C,H,W) -> float32 weights (B,C,H,W) on the images' device."""
    if mask is None:
        return None
    b, c, h, w = images.shape
    m = mask.unsqueeze(1) if mask.dim() == 3 else mask
    if m.dim() != 4 or m.shape[0] != b or m.shape[-2:] != (h, w) or m.shape[1] not in (1, c):
        raise ValueError(f"metrics: mask shape {tuple(mask.shape)} does not fit images {tuple(images.shape)}; "
                         "use (B,1,H,W) or (B,H,W)")
    m = m.to(device=images.device, dtype=torch.float32)
    if bool((m < 0).any()):
        raise ValueError("metrics: mask has negative values; use 0 outside and 1 (or a weight > 0) inside")
    return m.expand(b, c, h, w)


def _weighted_mean(values: Tensor, weights: Optional[Tensor]) -> Tensor:
    """(B,C,H,W) -> (B,): plain mean, or weighted mean (NaN where the weights sum to 0)."""
    if weights is None:
        return values.flatten(1).mean(dim=1)
    num = (values * weights).flatten(1).sum(dim=1)
    den = weights.flatten(1).sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))


def _float32(device: torch.device):
    """Context that switches autocast off so metric maths stays in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


# --- per-image metrics ------------------------------------------------------------------------------
def mae(pred: Tensor, ref: Tensor, data_range: float = 2.0, mask: Optional[Tensor] = None) -> Tensor:
    """Mean absolute error per image, (B,) in the images' units (mask: mean over mask pixels).

    ``data_range`` is only validated (kept for a uniform signature); MAE is not normalised by it.
    """
    pred, ref = _as_images(pred, ref, data_range)
    with _float32(pred.device):
        return _weighted_mean((pred - ref).abs(), _as_mask(mask, pred))


def psnr(pred: Tensor, ref: Tensor, data_range: float = 2.0, mask: Optional[Tensor] = None) -> Tensor:
    """PSNR per image in dB, (B,): 10 log10(data_range^2 / MSE), capped at ``PSNR_MAX_DB``."""
    pred, ref = _as_images(pred, ref, data_range)
    with _float32(pred.device):
        mse = _weighted_mean((pred - ref) ** 2, _as_mask(mask, pred))
        floor = data_range ** 2 * 10.0 ** (-PSNR_MAX_DB / 10.0)
        return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(floor))


def _gaussian_window(device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian taps (11,), as scipy.ndimage with sigma 1.5, truncate 3.5."""
    r = SSIM_WINDOW // 2
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return g / g.sum()


def _filter_valid(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter at valid positions: (N,C,H,W) -> (N,C,H-10,W-10)."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim_map(pred: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """SSIM map at valid window positions, (B,C,H-10,W-10), float32 (Wang et al. 2004, Eq. 13)."""
    pred, ref = _as_images(pred, ref, data_range)
    h, w = pred.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"ssim: images are {h}x{w}; the Gaussian window needs at least "
                         f"{SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    with _float32(pred.device):
        g = _gaussian_window(pred.device)
        # Variances are shift invariant: centre each image first so E[x^2] - E[x]^2 keeps its
        # float32 precision when the data range is large (e.g. CT in Hounsfield units).
        xc = pred - pred.mean(dim=(-2, -1), keepdim=True)
        yc = ref - ref.mean(dim=(-2, -1), keepdim=True)
        mu_x, mu_y = _filter_valid(pred, g), _filter_valid(ref, g)
        mxc, myc = _filter_valid(xc, g), _filter_valid(yc, g)
        var_x = _filter_valid(xc * xc, g) - mxc * mxc
        var_y = _filter_valid(yc * yc, g) - myc * myc
        cov_xy = _filter_valid(xc * yc, g) - mxc * myc
        c1 = (SSIM_K1 * data_range) ** 2
        c2 = (SSIM_K2 * data_range) ** 2
        num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
        den = (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)
        return num / den


def ssim(pred: Tensor, ref: Tensor, data_range: float = 2.0, mask: Optional[Tensor] = None) -> Tensor:
    """Mean SSIM per image, (B,); with ``mask`` the map is averaged over mask pixels (module doc)."""
    smap = ssim_map(pred, ref, data_range)
    r = SSIM_WINDOW // 2
    m = _as_mask(mask, pred.unsqueeze(1) if pred.dim() == 3 else pred)
    if m is not None:
        m = m[..., r:-r, r:-r]
    with _float32(smap.device):
        return _weighted_mean(smap, m)


def image_metrics(pred: Tensor, ref: Tensor, data_range: float = 2.0,
                  mask: Optional[Tensor] = None) -> dict[str, Tensor]:
    """``{"ssim", "psnr", "mae"}`` -> (B,) float32 tensors for a batch of syntheses ``pred`` vs ``ref``."""
    return {
        "ssim": ssim(pred, ref, data_range, mask),
        "psnr": psnr(pred, ref, data_range, mask),
        "mae": mae(pred, ref, data_range, mask),
    }


# --- aggregation -------------------------------------------------------------------------------------
def summarise(values: Mapping[str, Tensor | Sequence[float] | np.ndarray]) -> dict[str, float]:
    """``{k: (B,)}`` -> ``{"<k>_mean", "<k>_std"}`` floats; NaN entries (empty masks) are skipped.

    The std is the population std (ddof=0), so one image gives 0 rather than NaN.
    """
    out: dict[str, float] = {}
    for k, v in values.items():
        a = torch.as_tensor(v).detach().double().flatten().cpu().numpy()
        a = a[~np.isnan(a)]
        out[f"{k}_mean"] = float(a.mean()) if a.size else float("nan")
        out[f"{k}_std"] = float(a.std()) if a.size else float("nan")
    return out


class MetricAccumulator:
    """Streaming mean/std over every image of a validation pass, batch by batch.

    Keeps (count, mean, M2) per key in float64 and combines batches with Chan et al.'s parallel
    update, so nothing grows with the dataset. ``merge`` combines accumulators (e.g. gathered from
    data-parallel workers); ``state_dict``/``from_state_dict`` make that a plain dict.

    >>> acc = MetricAccumulator()
    >>> acc.update(image_metrics(fake_t2, real_t2), prefix="fwd")
    >>> acc.compute()   # {"fwd/ssim_mean": ..., "fwd/ssim_std": ..., ...}
    """

    def __init__(self) -> None:
        self._stats: dict[str, tuple[int, float, float]] = {}

    def update(self, values: Mapping[str, Tensor | Sequence[float] | np.ndarray], prefix: str = "") -> None:
        """Add one batch of per-image values ``{k: (B,)}``; keys become ``prefix/k`` when prefix is set."""
        for k, v in values.items():
            a = torch.as_tensor(v).detach().double().flatten().cpu().numpy()
            a = a[~np.isnan(a)]
            if a.size:
                self._combine(f"{prefix}/{k}" if prefix else k, (int(a.size), float(a.mean()),
                                                               float(((a - a.mean()) ** 2).sum())))

    def _combine(self, key: str, other: tuple[int, float, float]) -> None:
        n_b, mean_b, m2_b = other
        n_a, mean_a, m2_a = self._stats.get(key, (0, 0.0, 0.0))
        n = n_a + n_b
        if n == 0:
            return
        delta = mean_b - mean_a
        self._stats[key] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n)

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Fold another accumulator's images into this one (in place); returns self."""
        for k, s in other._stats.items():
            self._combine(k, s)
        return self

    def count(self, key: str) -> int:
        """How many (non-NaN) images were added under ``key``."""
        return self._stats.get(key, (0, 0.0, 0.0))[0]

    def compute(self) -> dict[str, float]:
        """``{"<k>_mean", "<k>_std"}`` over all images added so far (population std)."""
        out: dict[str, float] = {}
        for k, (n, mean, m2) in sorted(self._stats.items()):
            out[f"{k}_mean"] = mean
            out[f"{k}_std"] = math.sqrt(max(m2, 0.0) / n)
        return out

    def state_dict(self) -> dict[str, list[float]]:
        return {k: [float(n), mean, m2] for k, (n, mean, m2) in self._stats.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Sequence[float]]) -> "MetricAccumulator":
        acc = cls()
        for k, (n, mean, m2) in state.items():
            acc._stats[k] = (int(n), float(mean), float(m2))
        return acc

    def reset(self) -> None:
        self._stats.clear()


def direction_metrics(per_direction: Mapping[str, Mapping[str, Tensor]], prefix: str = "") -> dict[str, float]:
    """``{"fwd": image_metrics(...), "bwd": ...}`` -> ``{"[prefix/]fwd/ssim_mean": ..., ...}`` floats.

    Forward = source -> target synthesis, backward = target -> source (Algorithm 2 of the paper).
    """
    out: dict[str, float] = {}
    for direction, values in per_direction.items():
        head = f"{prefix}/{direction}" if prefix else direction
        out.update({f"{head}/{k}": v for k, v in summarise(values).items()})
    return out


# --- FID ---------------------------------------------------------------------------------------------
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
