"""THE scorer: a model on batches of (source, target, mask), both directions, any list of time grids.

Every caller uses it - training validation (``train/loop``), registry promotion (``tracking.promotion``),
``jobs/evaluate.py`` and the ablation/study jobs - so one checkpoint on one split gets one set of
numbers, under one key schema:

    <split>/fwd_<m>_mean, <split>/fwd_<m>_std, <split>/bwd_<m>_mean, <split>/bwd_<m>_std   m in ssim, psnr, mae
    <split>/<m>_mean   the mean of the two directions' means (what Tune and promotion optimise)
    <split>/images     how many images were scored

Forward (``fwd``) = source -> target synthesis X^f_1, compared with the real target; backward (``bwd``)
= target -> source X^b_0, compared with the real source (paper Algorithm 2). Metrics are taken inside
the slice mask. Per-image values are kept (``GridScores.values``), with the rows' (subject, slice) ids,
so studies can compute spreads, paired tests and bootstrap intervals.

Value scale (``evaluation.scale``, see ``bidpm.config.evaluation``): images are mapped from the training
scale [-1, 1] before scoring - ``unit``: x -> (x + 1) / 2, data range 1; ``native``: unchanged, data
range 2. ``scale_note`` names the convention for every table and run.

Modules: ``scorer`` (``evaluate``, ``evaluate_split``), ``scores`` (results and the key schema),
``scale`` (the value convention), ``volumes`` (slices put back into volumes: 3-D metrics, SynthRAD).
Imports torch, numpy and scipy only (no Ray, no MLflow).
"""

from .scale import SCALES, scale_note, to_scale
from .scorer import FieldSampler, Sampler, evaluate, evaluate_split
from .scores import METRICS, SHORT, Evaluation, GridScores, GridSpec, grids_for, summary_keys

__all__ = ["Evaluation", "FieldSampler", "GridScores", "GridSpec", "METRICS", "SCALES", "SHORT", "Sampler", "evaluate",
           "evaluate_split", "grids_for", "scale_note", "summary_keys", "to_scale"]
