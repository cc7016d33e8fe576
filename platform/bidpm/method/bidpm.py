"""Bi-DPM: bi-directional Discrete Process Matching (paper section 2.1, Eq. 5-9, Algorithms 1-2).

Instead of regressing a prescribed velocity, Bi-DPM unrolls u_theta forward from the source x and
backward from the target z on a time grid 0 = t_0 < ... < t_N = 1 and asks both chains to meet at
every t_n. The gradient flows through both unrolls, so the network may take any path that matches
(Remark 1: the straight field z - x is one zero-loss solution, not the only one).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import MethodConfig
from .base import Batch, LossOutput, Method, euler_states

PairedDistance = Callable[[Tensor, Tensor], Tensor]   # (B, ...), (B, ...) -> (B,)
MMD = Callable[[Tensor, Tensor], Tensor]              # (m, ...), (n, ...) -> scalar


class BiDPM(Method):
    """The Bi-DPM objective of Eq. 9, L = L^p + lambda_u L^u, on one batch of mixed rows.

    Choices where the paper is open (each also stated where it is computed):

    * L^p (Eq. 7) sums over paired samples i; we take the **mean** over the batch's paired rows so that
      ``lambda_unpaired`` and the learning rate mean the same at any batch size or paired share.
    * L^u (Eq. 8): at each t_n, MMD between the forward states X^f_{t_n} of the batch's **unpaired
      sources** and the backward states X^b_{t_n} of **all targets in the batch** (paired and unpaired;
      paper 3.2.2: "the MMD is calculated between the unpaired data and all data in the same batch").
      Paired sources are not on the source side: their correspondence is already used by L^p.
    * Eq. 8 has no w_n; we weight the MMD at t_n by the same w_n as Eq. 6, so that both terms are the
      one objective of Eq. 6 with a per-row choice of d (and w_n = 0 removes a time point from both).
    * With fewer than 2 unpaired rows, or lambda_u = 0, L^u is left out (a one-sample MMD has no
      within-set term and the unbiased estimator is undefined). A fully paired batch -> L = L^p (Eq. 9).
    """

    name = "bidpm"

    def __init__(
        self,
        time_grid: Sequence[float],
        step_weights: Sequence[float],
        paired_distance: PairedDistance,
        mmd: MMD,
        lambda_unpaired: float = 0.0,
    ) -> None:
        super().__init__(time_grid)
        if len(step_weights) != len(self.time_grid):
            raise ValueError(f"method.step_weights: needs {len(self.time_grid)} entries (w_0..w_N), got {len(step_weights)}")
        self.step_weights = [float(w) for w in step_weights]
        self.paired_distance = paired_distance
        self.mmd = mmd
        self.lambda_unpaired = float(lambda_unpaired)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.paired_distance, self.mmd) if isinstance(m, nn.Module)]

    def unroll(self, model: nn.Module, x: Tensor, z: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Eq. 5 with gradients: (X^f_{t_0..t_N} from x, X^b_{t_0..t_N} from z), both indexed by n."""
        return euler_states(model, x, self.time_grid, "forward"), euler_states(model, z, self.time_grid, "backward")

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        """Eq. 9 on a batch; components hold per-n terms (unweighted) and the weighted totals.

        Keys: ``paired/d_t{n}`` (mean over paired rows of d(X^f_{t_n}, X^b_{t_n})), ``unpaired/mmd_t{n}``,
        ``loss/paired`` (L^p), ``loss/unpaired`` (L^u, before lambda_u), ``loss/total``, ``batch/paired_frac``.
        Note n = 0 compares x with the backward synthesis of z, n = N the forward synthesis of x with z.
        """
        xs_f, xs_b = self.unroll(model, batch.source, batch.target)
        n_paired, n_unpaired = batch.n_paired, batch.n_unpaired  # host ints: no device sync (Batch)
        paired, unpaired = batch.paired_index, batch.unpaired_index
        logged: dict[str, Tensor | float] = {}  # detached scalars; the loop fetches them when it reports
        total = xs_f[-1].sum() * 0.0  # keeps a graph even if both terms are absent (e.g. unpaired-only, lambda_u = 0)

        if n_paired > 0:
            # Eq. 6 + Eq. 7: L^p = sum_n w_n mean_{i paired} d(x^f_{i,t_n}, z^b_{i,t_n})
            loss_p = total.new_zeros(())
            for n, (w, f, b) in enumerate(zip(self.step_weights, xs_f, xs_b)):
                d_n = self.paired_distance(f.index_select(0, paired), b.index_select(0, paired)).mean()
                logged[f"paired/d_t{n}"] = d_n.detach()
                loss_p = loss_p + w * d_n
            total = total + loss_p
            logged["loss/paired"] = loss_p.detach()

        if n_unpaired >= 2 and self.lambda_unpaired > 0:
            # Eq. 8, w_n-weighted: L^u = sum_n w_n MMD^2({x^f_{p,t_n}: p unpaired}, {z^b_{q,t_n}: all q})
            loss_u = total.new_zeros(())
            for n, (w, f, b) in enumerate(zip(self.step_weights, xs_f, xs_b)):
                m_n = self.mmd(f.index_select(0, unpaired), b)
                logged[f"unpaired/mmd_t{n}"] = m_n.detach()
                loss_u = loss_u + w * m_n
            total = total + self.lambda_unpaired * loss_u  # Eq. 9
            logged["loss/unpaired"] = loss_u.detach()

        logged["loss/total"] = total.detach()
        logged = {"loss/paired": 0.0, "loss/unpaired": 0.0, **logged, "batch/paired_frac": n_paired / (n_paired + n_unpaired)}
        return LossOutput(total=total, logged=logged)


def build_bidpm(cfg: MethodConfig, paired_distance: Optional[PairedDistance] = None, mmd: Optional[MMD] = None) -> BiDPM:
    """Bi-DPM from a MethodConfig (``cfg.method``); d and MMD come from ``bidpm.losses`` unless given.

    The paired distance is built here, at start, so a missing LPIPS backbone fails before training.
    """
    if paired_distance is None or mmd is None:
        from ..losses import build_mmd, build_paired_distance

        paired_distance = paired_distance if paired_distance is not None else build_paired_distance(cfg)
        mmd = mmd if mmd is not None else build_mmd(cfg)
    return BiDPM(cfg.time_grid, cfg.step_weights, paired_distance, mmd, cfg.lambda_unpaired)
