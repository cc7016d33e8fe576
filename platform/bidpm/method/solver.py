"""How a learnt field is integrated: the time grid rule and explicit Euler steps (paper Eq. 5, Alg. 2).

Kept apart from the objectives (``base``/``bidpm``/``baselines``: what is learnt) as flow_matching's
path/solver split does: synthesis and evaluation need only this module and a velocity field, never a
loss. Imports torch only.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

Direction = Literal["forward", "backward"]
DIRECTIONS: tuple[Direction, Direction] = ("forward", "backward")
GRID_TOL = 1e-9

__all__ = ["DIRECTIONS", "Direction", "check_direction", "check_grid", "euler_integrate", "euler_states", "uniform_grid"]


def check_grid(grid: Sequence[float], where: str = "grid") -> list[float]:
    """THE time-grid rule, used by the config (``method.time_grid``), synthesis and evaluation:
    0 = t_0 < t_1 < ... < t_N = 1 with N >= 1 (endpoints within 1e-9). Returns the grid as floats."""
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


def check_direction(direction: str) -> Direction:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: {direction!r}; use 'forward' (source->target) or 'backward' (target->source)")
    return direction  # type: ignore[return-value]


def uniform_grid(n_steps: int) -> list[float]:
    """[0, 1/N, ..., 1]: the paper's N-step grid (3.2: step size 1/N)."""
    if n_steps < 1:
        raise ValueError(f"uniform_grid: n_steps must be >= 1, got {n_steps}")
    return [n / n_steps for n in range(n_steps + 1)]


def _time(t: float, x: Tensor) -> Tensor:
    """Scalar time -> (B,) tensor on x's device/dtype, the model's time input."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def euler_states(model: nn.Module, x: Tensor, grid: Sequence[float], direction: Direction) -> list[Tensor]:
    """All Euler states on the grid, indexed by n: ``states[n]`` is X_{t_n}. Paper Eq. 5.

    forward  (x = X^f_{t_0}): X^f_{t_n}     = X^f_{t_{n-1}} + u(X^f_{t_{n-1}}, t_{n-1}) (t_n - t_{n-1}), n = 1..N
    backward (x = X^b_{t_N}): X^b_{t_{n-1}} = X^b_{t_n}     + u(X^b_{t_n}, t_n)         (t_{n-1} - t_n), n = N..1
    The backward chain runs from n = N down (Algorithm 1 lists both updates in one n = 1..N loop, which
    only works for N = 1; Eq. 5 defines the recursion). Autograd is whatever the caller enables:
    Bi-DPM training keeps the graph through every step.

    x: (B, ...); returns N + 1 tensors of x's shape (``states[0]`` is x for forward, ``states[N]`` for backward).
    """
    g = check_grid(grid)
    n_steps = len(g) - 1
    if direction == "forward":
        states = [x]
        for n in range(1, n_steps + 1):
            prev = states[-1]
            states.append(prev + model(prev, _time(g[n - 1], prev)) * (g[n] - g[n - 1]))
        return states
    if direction == "backward":
        rev = [x]
        for n in range(n_steps, 0, -1):
            cur = rev[-1]
            rev.append(cur + model(cur, _time(g[n], cur)) * (g[n - 1] - g[n]))
        return rev[::-1]
    raise ValueError(f"direction: expected 'forward' or 'backward', got {direction!r}")


def euler_integrate(model: nn.Module, x: Tensor, grid: Sequence[float], direction: Direction) -> Tensor:
    """Final Euler state: X^f_1 from x (forward) or X^b_0 from x (backward). Same steps as ``euler_states``."""
    return euler_states(model, x, grid, direction)[-1 if direction == "forward" else 0]
