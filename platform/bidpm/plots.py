"""Figures for people, headless: matplotlib on its Agg backend (no display on a cluster node), and a
figure rendered to PNG bytes, which the callers write atomically (``io.storage``) or log to MLflow."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["png_bytes", "pyplot"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: jobs that draw nothing skip it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed (a long study draws many)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()
