"""How a learnt field is integrated: the time grid rule and explicit Euler steps (paper Eq. 5, Alg. 2).

Kept apart from the objectives (``base``/``bidpm``/``baselines``: what is learnt), as flow_matching's
path/solver split is: synthesis and evaluation need only this module and a velocity field, never a
loss. The grid rule itself is ``bidpm.timegrid`` (pure, re-exported here).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from ..model.ema import unwrap_model
from ..timegrid import check_grid, uniform_grid

Direction = Literal["forward", "backward"]
DIRECTIONS: tuple[Direction, Direction] = ("forward", "backward")

__all__ = ["DIRECTIONS", "Direction", "check_direction", "check_grid", "euler_integrate", "euler_states", "uniform_grid"]


def check_direction(direction: str) -> Direction:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: {direction!r}; use 'forward' (source->target) or 'backward' (target->source)")
    return direction  # type: ignore[return-value]


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

    A step-conditioned field (``model.step_conditioned``: shortcut, MeanFlow) is also given the step it
    takes, h = t_n - t_{n-1} forward and t_{n-1} - t_n backward (negative): x + h u(x, t, h).

    x: (B, ...); returns N + 1 tensors of x's shape (``states[0]`` is x for forward, ``states[N]`` for backward).
    """
    g = check_grid(grid)
    times_rule = getattr(model, "check_times", None)  # a field defined at some times only (model.cyclegan)
    if callable(times_rule):
        times_rule(g)  # on the host grid: the field itself never reads t back from the device
    n_steps = len(g) - 1
    takes_step = bool(getattr(unwrap_model(model), "step_conditioned", False))

    def field(x_: Tensor, t: float, h: float) -> Tensor:
        """u(x, t), or u(x, t, h) for a field conditioned on the signed step h (shortcut, MeanFlow)."""
        return model(x_, _time(t, x_), _time(h, x_)) if takes_step else model(x_, _time(t, x_))

    if direction == "forward":
        states = [x]
        for n in range(1, n_steps + 1):
            prev = states[-1]
            states.append(prev + field(prev, g[n - 1], g[n] - g[n - 1]) * (g[n] - g[n - 1]))
        return states
    if direction == "backward":
        rev = [x]
        for n in range(n_steps, 0, -1):
            cur = rev[-1]
            rev.append(cur + field(cur, g[n], g[n - 1] - g[n]) * (g[n - 1] - g[n]))
        return rev[::-1]
    raise ValueError(f"direction: expected 'forward' or 'backward', got {direction!r}")


def euler_integrate(model: nn.Module, x: Tensor, grid: Sequence[float], direction: Direction) -> Tensor:
    """Final Euler state: X^f_1 from x (forward) or X^b_0 from x (backward). Same steps as ``euler_states``."""
    return euler_states(model, x, grid, direction)[-1 if direction == "forward" else 0]
