"""The time-grid rule, pure Python: 0 = t_0 < t_1 < ... < t_N = 1 (paper Eq. 5) and the paper's uniform
N-step grid. The config, the search space, the solver and evaluation all check grids here, so
loading a config needs no torch."""

from __future__ import annotations

from typing import Sequence

GRID_TOL = 1e-9

__all__ = ["GRID_TOL", "check_grid", "uniform_grid"]


def check_grid(grid: Sequence[float], where: str = "grid") -> list[float]:
    """THE time-grid rule: 0 = t_0 < t_1 < ... < t_N = 1 with N >= 1 (endpoints within 1e-9).
    Returns the grid as floats; a ValueError names ``where`` and the fix."""
    g = [float(t) for t in grid]
    if len(g) < 2:
        raise ValueError(f"{where}: needs 0 = t_0 < ... < t_N = 1 with at least two points, e.g. [0.0, 1.0] (1 step) or [0.0, 0.5, 1.0]; got {g}")
    if abs(g[0]) > GRID_TOL or abs(g[-1] - 1.0) > GRID_TOL:
        raise ValueError(f"{where}: needs 0 = t_0 < ... < t_N = 1, must start at 0 and end at 1 (got {g[0]} ... {g[-1]}); "
                         "e.g. uniform_grid(2) = [0, 0.5, 1]")
    for a, b in zip(g, g[1:]):
        if not b > a:
            raise ValueError(f"{where}: must be strictly increasing (got {a} then {b})")
    return g


def uniform_grid(n_steps: int) -> list[float]:
    """[0, 1/N, ..., 1]: the paper's N-step grid (3.2: step size 1/N)."""
    if n_steps < 1:
        raise ValueError(f"uniform_grid: n_steps must be >= 1, got {n_steps}")
    return [n / n_steps for n in range(n_steps + 1)]
