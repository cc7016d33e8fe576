"""Per-sample distances d(a, b) for paired rows of Eq. 6: LPIPS (Eq. 7) and L2 / L1 / pseudo-Huber.

Every distance maps a (B, ...), b (B, ...) -> (B,), one value per sample, reduced by the **mean over
all non-batch elements** (pixels x channels, or vector coordinates), so its scale does not depend on
the image size:

* ``l2``:            mean((a - b)^2)
* ``l1``:            mean(|a - b|)
* ``pseudo_huber``:  sqrt(mean((a - b)^2) + c^2) - c   (c = ``method.pseudo_huber_c``). This is the
  per-sample form of Song & Dhariwal's improved consistency-training loss, with ||a - b||^2 / D
  instead of ||a - b||^2 so c means the same at every resolution; ~ mean sq / (2c) for small
  errors, ~ RMS error for large ones.
* ``lpips``:         Zhang et al. 2018 (the paper's Eq. 7), via the ``lpips`` package: unit-normalised
  VGG features of 5 layers, squared differences weighted by the learned linear layers w_l, averaged
  over each layer's H_l x W_l and summed over layers. Inputs in [-1, 1]; a single channel is repeated
  to RGB. The network is frozen and always in eval mode.

Nothing is downloaded. The LPIPS backbone weights (torchvision ImageNet classification weights) are
read from ``method.lpips_backbone_weights`` or the torch hub cache; when absent, building fails with
``LPIPSWeightsUnavailable`` saying where to put the file. LPIPS's own linear layers ship inside the
``lpips`` package.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ..config import MethodConfig


class LPIPSWeightsUnavailable(RuntimeError):
    """The LPIPS backbone (or linear-layer) weights are not on this machine; nothing is downloaded."""


def _flat_diff(a: Tensor, b: Tensor) -> Tensor:
    if a.shape != b.shape:
        raise ValueError(f"paired distance: a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a - b).reshape(a.shape[0], -1)


class L2Distance(nn.Module):
    """mean((a - b)^2) per sample: (B, ...) x2 -> (B,)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return _flat_diff(a, b).pow(2).mean(dim=1)


class L1Distance(nn.Module):
    """mean(|a - b|) per sample: (B, ...) x2 -> (B,)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return _flat_diff(a, b).abs().mean(dim=1)


class PseudoHuberDistance(nn.Module):
    """sqrt(mean((a - b)^2) + c^2) - c per sample: (B, ...) x2 -> (B,). Smooth at 0 (c > 0)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        if c <= 0:
            raise ValueError(f"method.pseudo_huber_c: must be > 0, got {c}")
        self.c = float(c)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.sqrt(_flat_diff(a, b).pow(2).mean(dim=1) + self.c**2) - self.c

    def extra_repr(self) -> str:
        return f"c={self.c}"


# --- LPIPS -----------------------------------------------------------------------------------------

def _torchvision_weights_url(net: str) -> str:
    """The download URL torchvision would use for the LPIPS backbone (its file name is the cache name)."""
    from torchvision import models as tvm

    enums = {
        "vgg": tvm.VGG16_Weights.IMAGENET1K_V1,
        "alex": tvm.AlexNet_Weights.IMAGENET1K_V1,
        "squeeze": tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }
    if net not in enums:
        raise ValueError(f"method.lpips_net: unknown {net!r}; use one of {sorted(enums)}")
    return enums[net].url


def backbone_weights_file(net: str) -> str:
    """File name of the torchvision backbone weights, e.g. 'vgg16-397923af.pth' for net='vgg'."""
    return os.path.basename(urlparse(_torchvision_weights_url(net)).path)


def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint cache: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_backbone_weights(cfg: MethodConfig) -> Path:
    """Where the backbone weights are: ``cfg.lpips_backbone_weights`` if set, else the hub cache.

    A relative ``lpips_backbone_weights`` is taken relative to the current directory (pass an absolute
    path, e.g. from ``Config.resolve_path``, when running under Ray workers).
    Raises LPIPSWeightsUnavailable (never downloads) when the file is not there.
    """
    fname = backbone_weights_file(cfg.lpips_net)
    alternatives = (
        "Alternatives: set method.lpips_backbone_weights=/path/to/" + fname + " (a torchvision state_dict), "
        "or choose another paired distance: method.paired_distance=l2|l1|pseudo_huber."
    )
    if cfg.lpips_backbone_weights:
        path = Path(cfg.lpips_backbone_weights).expanduser()
        if not path.is_file():
            raise LPIPSWeightsUnavailable(
                f"method.lpips_backbone_weights: file not found: {path} (expected torchvision's {fname} for "
                f"lpips_net={cfg.lpips_net!r}). Nothing is downloaded. Fix the path, or unset it to use the torch "
                f"hub cache ({hub_checkpoint_dir() / fname}), or choose method.paired_distance=l2|l1|pseudo_huber."
            )
        return path
    path = hub_checkpoint_dir() / fname
    if not path.is_file():
        raise LPIPSWeightsUnavailable(
            f"LPIPS (method.paired_distance=lpips, lpips_net={cfg.lpips_net!r}) needs the torchvision ImageNet "
            f"backbone weights file {fname}, which is not in the torch hub cache {path.parent} "
            f"(TORCH_HOME/hub/checkpoints/{fname}). Nothing is downloaded: copy {fname} there (from "
            f"{_torchvision_weights_url(cfg.lpips_net)} on a machine with internet). {alternatives}"
        )
    return path


def _lpips_linear_weights(net: str) -> Path:
    import lpips

    path = Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise LPIPSWeightsUnavailable(
            f"the lpips package has no linear-layer weights at {path}; reinstall it (pip install --force-reinstall lpips) "
            "or choose method.paired_distance=l2|l1|pseudo_huber"
        )
    return path


def load_backbone_state(backbone: nn.Module, path: Path) -> None:
    """Load a torchvision model state_dict (keys ``features.<i>.*``, classifier ignored) into lpips' sliced net.

    lpips splits ``torchvision_model.features`` into ``slice1..sliceK`` keeping the original indices as
    module names, so ``slice<k>.<i>.weight`` is ``features.<i>.weight``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / not a state_dict
        raise LPIPSWeightsUnavailable(f"{path}: cannot be read as a torch state_dict ({exc}); replace the file") from None
    if not isinstance(state, dict):
        raise LPIPSWeightsUnavailable(f"{path}: expected a state_dict (dict of tensors), got {type(state).__name__}")
    if not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}  # a bare ``model.features`` state_dict
    mapped, missing = {}, []
    for key, param in backbone.state_dict().items():
        _, _, rest = key.partition(".")  # slice<k>.<i>.<name> -> <i>.<name>
        src = state.get(f"features.{rest}")
        if src is None or tuple(src.shape) != tuple(param.shape):
            missing.append(f"features.{rest}")
        else:
            mapped[key] = src
    if missing:
        raise LPIPSWeightsUnavailable(
            f"{path}: not a torchvision {backbone.__class__.__name__} state_dict: missing or mis-shaped "
            f"{missing[:3]}{' ...' if len(missing) > 3 else ''}; use torchvision's {backbone.__class__.__name__} ImageNet weights"
        )
    backbone.load_state_dict(mapped, strict=True)


class LPIPSDistance(nn.Module):
    """LPIPS(a, b) per sample (Eq. 7): a, b (B, C, H, W) in [-1, 1], C in {1, 3} -> (B,). Frozen, eval.

    ``random_backbone=True`` keeps lpips' randomly initialised trunk (pnet_rand=True): for tests only,
    it is not a perceptual metric. Otherwise the trunk weights are loaded from ``backbone_weights``.
    VGG needs H, W >= 16; AlexNet >= 32.
    """

    def __init__(self, net: str = "vgg", backbone_weights: Path | None = None, random_backbone: bool = False) -> None:
        super().__init__()
        import lpips

        if not random_backbone and backbone_weights is None:
            raise ValueError("LPIPSDistance: pass backbone_weights (see resolve_backbone_weights) or random_backbone=True")
        _lpips_linear_weights(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecated ``pretrained=`` argument inside lpips
            # pnet_rand=True: the trunk is built without any download; real weights are loaded below.
            self.lpips = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if not random_backbone:
            load_backbone_state(self.lpips.net, Path(backbone_weights))
        self.net_name = net
        self.random_backbone = random_backbone
        self.lpips.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "LPIPSDistance":
        """Stay in eval mode whatever the parent does (lpips has dropout in its linear layers)."""
        return super().train(False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS: expected two (B, 1|3, H, W) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return self.lpips(a, b, normalize=False).reshape(a.shape[0])

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, random_backbone={self.random_backbone}"


def build_paired_distance(cfg: MethodConfig) -> nn.Module:
    """``method.paired_distance`` -> module with forward(a, b) -> (B,) (see module docstring).

    Raises LPIPSWeightsUnavailable for "lpips" when the backbone weights are not on this machine.
    """
    name = cfg.paired_distance
    if name == "l2":
        return L2Distance()
    if name == "l1":
        return L1Distance()
    if name == "pseudo_huber":
        return PseudoHuberDistance(cfg.pseudo_huber_c)
    if name == "lpips":
        if cfg.lpips_random_backbone:
            return LPIPSDistance(cfg.lpips_net, random_backbone=True)
        return LPIPSDistance(cfg.lpips_net, backbone_weights=resolve_backbone_weights(cfg))
    raise ValueError(f"method.paired_distance: unknown {name!r}; use lpips, l2, l1 or pseudo_huber")
