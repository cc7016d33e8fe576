"""A study's Volumes table (``study.volume_metrics``): per method, each test subject's slices stacked as a
volume and scored in 3-D at the method's training grid (``evaluation.volumes``): 3-D SSIM/PSNR/MAE,
inter-slice consistency (SSIM of the reformatted sagittal and coronal planes, the through-plane gradient
error) and, where a direction produces CT, SynthRAD2023/2025's HU metrics. "a ± b [c]" as Tables 1-2:
mean over seeds of the cells' mean over volumes ± std over seeds [mean over seeds of the std over volumes].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluation.original import ORIGINAL_CONVENTION
from ..evaluation.volumes import VOLUME_METRICS
from .tables import DIRS, cells_at

__all__ = ["volume_table"]

_HU = ("hu_mae", "hu_psnr", "hu_ssim", "hu25_mae", "hu25_psnr", "hu25_ms_ssim")
KEYS = tuple(f"vol_{m}" for m in VOLUME_METRICS) + _HU
ORIGINAL_KEYS = _HU + ("vol_ssim", "vol_psnr", "vol_mae", "sag_ssim", "cor_ssim", "tp_grad_mae")
_NAMES = {"vol": "3-D ", "hu": "SR2023 ", "hu25": "SR2025 "}


def _name(key: str) -> str:
    kind, m = key.split("_", 1)
    return _NAMES[kind] + m.upper() if kind in _NAMES else key.upper()


def volume_table(cells: list[dict], cfg: Any, ratio: float, fraction: float = 1.0,
                 source: str = "volumes") -> tuple[str, list[dict]]:
    """Markdown (methods x (direction, volume metric)) at ``ratio`` and ``fraction``, and its CSV rows;
    ("", []) when no cell there has such scores. ``source``: "volumes" (the shards' slices stacked) or
    "original" (each test subject's own files, ``evaluation.original``)."""
    keys, key = (KEYS, "test/{d}_{k}") if source == "volumes" else (ORIGINAL_KEYS, "test/{d}_orig_{k}")
    rows, errors = [], []
    for meth in cfg.study.methods:
        group = [c for c in cells_at(cells, meth.label, ratio, fraction) if (c.get(source) or {}).get("summary")]
        errors += [f"{meth.label}: {c[source]['error']}" for c in cells_at(cells, meth.label, ratio, fraction)
                   if (c.get(source) or {}).get("error")]
        if not group:
            continue
        row: dict[str, Any] = {"method": meth.label, "ratio": ratio, "fraction": fraction, "seeds": len(group),
                               "volumes": len(group[0][source]["subjects"])}
        for d in DIRS:
            for k in keys:
                means = [c[source]["summary"].get(key.format(d=d, k=k) + "_mean") for c in group]
                stds = [c[source]["summary"].get(key.format(d=d, k=k) + "_std") for c in group]
                if any(v is None for v in means):
                    continue
                row[f"{d}_{k}"] = float(np.mean(means))
                row[f"{d}_{k}_seed_std"] = float(np.std(means))
                row[f"{d}_{k}_spread"] = float(np.mean(stds))
        rows.append(row)
    if not rows:
        return ("Original volumes not scored: " + "; ".join(errors[:3]) if errors else ""), []
    cols = [(d, k) for d in DIRS for k in keys if all(f"{d}_{k}" in r for r in rows)]
    head = ["method", "volumes"] + [f"{d} {_name(k)}" for d, k in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cellv = []
        for d, k in cols:
            p = 2 if "psnr" in k or k.startswith(("hu_mae", "hu25_mae")) else 4
            cellv.append(f"{r[f'{d}_{k}']:.{p}f} ± {r[f'{d}_{k}_seed_std']:.{p}f} [{r[f'{d}_{k}_spread']:.{p}f}]")
        lines.append("| " + " | ".join([r["method"], str(r["volumes"]), *cellv]) + " |")
    if source == "volumes":
        note = ("Each test subject's slices stacked in slice order and scored in 3-D at the method's training grid "
                "(bidpm.evaluation.volumes): 3-D = 7x7x7 SSIM / PSNR / MAE in the mask; SAG_SSIM / COR_SSIM = SSIM of "
                "the reformatted sagittal / coronal planes, TP_GRAD_MAE = the through-plane gradient error (inter-slice "
                "consistency, bidpm.metrics.consistency); SR2023 / SR2025 = SynthRAD's metrics in HU where a direction "
                "produces CT. a ± b [c] = mean over seeds ± std over seeds [per-volume spread].")
    else:
        note = (f"{ORIGINAL_CONVENTION[0].upper()}{ORIGINAL_CONVENTION[1:]}; at the method's training grid. "
                "a ± b [c] = mean over seeds ± std over seeds [spread over subjects].")
    return note + "\n\n" + "\n".join(lines) + "".join(f"\n\nnot scored: {e}" for e in errors[:3]), rows
