"""The one fixed-width text table every console view uses (trial tables, evaluation tables, the node
timeline): columns padded to their widest cell, two spaces apart, a dashed rule under the header."""

from __future__ import annotations

from typing import Sequence

__all__ = ["fixed_width"]


def fixed_width(head: Sequence[str], rows: Sequence[Sequence[str]], rule: bool = True) -> str:
    """``head`` and ``rows`` (cells as strings) -> lines; trailing spaces trimmed."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head)] + ([line(["-" * w for w in widths])] if rule else [])
    return "\n".join(out + [line(r) for r in rows])
