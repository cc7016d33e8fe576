"""A study's cells: the grid methods x pairing ratios x seeds x training fractions, each cell's config,
its grids for scoring, where its scores live, and the checks made before any training. No Ray.

Cell ids are readable and stable (``<label>__p<paired %>__s<seed>__f<fraction %>``, label made safe for
paths), so a study folder and its MLflow runs say what each cell is, and a rerun finds the same cells.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..config import Config, ConfigError, with_overrides
from ..evaluation import GridSpec, grids_for
from ..io import storage
from ..timegrid import uniform_grid
from ..tune.names import experiment_dir

CELLS_DIR = "cells"

__all__ = ["CELLS_DIR", "Cell", "cell_config", "cell_file", "cell_grids", "check_cells", "cells_by_id",
           "expand_cells", "fid_wanted", "read_cell", "resolve_subject_counts", "study_dir"]


@dataclass(frozen=True)
class Cell:
    id: str
    label: str          # the method row (study.methods[].label)
    method: str         # bidpm, rf, icfm, otcfm, vpcfm, cyclegan
    ratio: float
    seed: int
    fraction: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "m"


def resolve_subject_counts(cfg: Config, manifest: dict) -> Config:
    """``study.train_subjects`` [k, ...] -> ``study.train_fractions`` [k / n, ...] for the shards' n training
    subjects (``share_count(k / n, n) == k``: each cell reads exactly k subjects); the config unchanged without
    counts. A count above n is a ConfigError naming n."""
    counts = cfg.study.train_subjects
    if counts is None:
        return cfg
    n = sum(1 for f in manifest["files"] if f["split"] == "train")
    if max(counts) > n:
        raise ConfigError(f"study.train_subjects: {max(counts)} is more than the {n} training subjects in these shards; "
                          f"list counts <= {n} (or ingest more subjects). Nothing was trained.")
    return with_overrides(cfg, {"study.train_subjects": None, "study.train_fractions": [k / n for k in counts]})


def expand_cells(cfg: Config) -> list[Cell]:
    """Every cell of ``cfg.study`` in table order (method, ratio, fraction, seed)."""
    st = cfg.study
    if not st.methods:
        raise ConfigError("study.methods: empty; list at least one method, e.g. [{label: 'Bi-DPM N=1', name: bidpm}, "
                          "{label: RF, name: rf}] (see configs/study_phantom_cpu.yaml)")
    cells = []
    for m in st.methods:
        for r in st.pairing_ratios:
            for f in st.train_fractions:
                for s in st.seeds:
                    cid = f"{_safe(m.label)}__p{100 * r:g}__s{s}__f{100 * f:g}"
                    cells.append(Cell(cid, m.label, m.name, r, s, f))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("study.methods: two labels become the same cell id once made safe for paths; rename one")
    return cells


def cell_config(cfg: Config, cell: Cell) -> Config:
    """The config one cell trains: the study config + the method row + ratio, seed, fraction.

    Checkpoints are ranked by the validation objective (``tune.metric``), never by the test split.
    CycleGAN gets ``model.kind: cyclegan`` and the one-step grid [0, 1].
    """
    m = next(x for x in cfg.study.methods if x.label == cell.label)
    over: dict[str, Any] = {
        "method.name": m.name, "data.pairing_ratio": cell.ratio, "train.seed": cell.seed,
        "data.train_fraction": cell.fraction, "tune.experiment_name": cfg.study.name,
        "train.checkpoint_score": cfg.tune.metric, "train.checkpoint_score_mode": cfg.tune.mode,
    }
    if m.name == "cyclegan":
        over.update({"model.kind": "cyclegan", "method.time_grid": [0.0, 1.0], "method.step_weights": None})
    elif m.time_grid is not None:
        over.update({"method.time_grid": m.time_grid, "method.step_weights": m.step_weights})
    elif m.step_weights is not None:
        over["method.step_weights"] = m.step_weights
    if cell.ratio >= 1.0:
        over["method.lambda_unpaired"] = 0.0          # no unpaired rows: Eq. 9's second term is empty
    over.update(m.overrides)
    return with_overrides(cfg, over)


def cell_grids(cfg: Config, cell: Cell) -> list[GridSpec]:
    """What a cell is scored at: Bi-DPM at its training grid (+ ``study.bidpm_extra_nfe``, marked),
    baselines at every ``study.baseline_nfe`` (paper Fig. 7), CycleGAN at its one step."""
    ccfg = cell_config(cfg, cell)
    train = tuple(ccfg.method.time_grid)
    if cell.method == "cyclegan":
        return [GridSpec("one step (generator)", (0.0, 1.0), True)]
    if cell.method == "bidpm":
        specs = [GridSpec(f"training grid N={len(train) - 1}", train, True)]
        for n in cfg.study.bidpm_extra_nfe:
            g = tuple(uniform_grid(n))
            if g != train:
                specs.append(GridSpec(f"uniform N={n} (not the training grid)", g, False))
        return specs
    specs = grids_for(cfg.study.baseline_nfe, train)
    if not any(s.training_grid for s in specs[:len(cfg.study.baseline_nfe)]):
        specs = specs[:-1]                               # baselines train on continuous t: no grid of their own
    return [GridSpec(s.label.replace(" (training grid)", ""), s.grid, False) for s in specs]


def check_cells(cfg: Config, cells: list[Cell], manifest: dict) -> None:
    """Before any training: every cell's config validates, every ratio pairs some training row, every
    method can be built (LPIPS weights present where the paired distance needs them), and the Inception
    weights are there when ``study.fid`` is true."""
    from ..method import build_method
    from ..model import build_velocity_field
    from ..data.readers import pairing_rows

    unit = cfg.data.pairing_unit
    b_p = cfg.train.batch_size // 2
    need = cfg.train.num_workers * b_p   # each worker's batches are half paired rows
    for ratio in cfg.study.pairing_ratios:
        for frac in cfg.study.train_fractions:
            rows = pairing_rows(manifest, ratio, cfg.data.pairing_seed, frac, unit=unit)
            paired = rows["paired"]
            where = f"at {100 * ratio:g}% paired (train fraction {frac:g}, data.pairing_unit={unit})"
            if paired == 0:
                raise ConfigError(f"study.pairing_ratios: no training row is paired {where}, data.pairing_seed="
                                  f"{cfg.data.pairing_seed}, on these shards; drop that ratio, use more data, or change "
                                  f"data.pairing_seed. Nothing was trained.")
            if ratio < 1.0 and paired < need:
                raise ConfigError(
                    f"study.pairing_ratios: {where} the shards have {paired} "
                    f"paired training rows, fewer than one batch's paired share on every worker needs "
                    f"({cfg.train.num_workers} workers x train.batch_size {cfg.train.batch_size} // 2 = {need}); "
                    f"lower train.batch_size or train.num_workers, drop that ratio, or use more data. Nothing was trained.")
            b_u = cfg.train.batch_size - b_p
            if ratio < 1.0 and rows["source"] + rows["target"] and (rows["source"] < cfg.train.num_workers * b_u
                                                                    or rows["target"] < b_u):
                raise ConfigError(
                    f"study.pairing_ratios: {where} the unpaired training rows give {rows['source']} sources and "
                    f"{rows['target']} targets; every worker's batches need {b_u} of each (sources: "
                    f"{cfg.train.num_workers} workers x {b_u}). Use more training subjects, drop that ratio, or lower "
                    f"train.batch_size. Nothing was trained.")
    if cfg.study.fid is True and (missing := _inception_missing()) is not None:
        raise ConfigError(f"study.fid=true: {missing}; or set study.fid=false. Nothing was trained.")
    seen = set()
    for cell in cells:
        if cell.label in seen:
            continue
        seen.add(cell.label)
        try:
            ccfg = cell_config(cfg, cell)
            build_method(ccfg.method)
            build_velocity_field(ccfg.model, tuple(ccfg.data.image_size))
        except ConfigError as exc:
            raise ConfigError(f"study.methods[{cell.label}]: {exc}") from None
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"study.methods[{cell.label}]: cannot be built ({exc}). Nothing was trained.") from None


def fid_wanted(cfg: Config) -> bool:
    """``study.fid``: true / false, or (null) whether the Inception weights are on this machine."""
    return cfg.study.fid if cfg.study.fid is not None else _inception_missing() is None


def _inception_missing() -> Optional[str]:
    """Why FID cannot be computed here (the Inception weights are not local), or None."""
    from ..metrics import FIDWeightsUnavailable, inception_weights_path

    try:
        inception_weights_path()
    except FIDWeightsUnavailable as exc:
        return str(exc)
    return None


def study_dir(cfg: Config) -> str:
    """The study's folder: its Tune experiment, ``cells/``, ``train_runs/`` and ``report/``."""
    return experiment_dir(cfg, cfg.study.name)


def cell_file(cfg: Config, cell_id: str) -> str:
    """``cells/<id>.json``: a cell's scores, written (atomically) before it reports; a cell whose file
    exists is never retrained."""
    return storage.join(study_dir(cfg), CELLS_DIR, f"{cell_id}.json")


def read_cell(cfg: Config, cell_id: str, print_fn: Any = print) -> Optional[dict[str, Any]]:
    """A cell's scores, or None when it has none - also when its file cannot be read (a truncated write by
    an older version, a damaged disk): that file is set aside as ``<id>.json.damaged-<time>``, said in one
    line, and the cell is scored again from its checkpoint (its Train run resumes: nothing retrains)."""
    loc = cell_file(cfg, cell_id)
    if not storage.is_file(loc):
        return None
    try:
        record = json.loads(storage.read_bytes(loc))
        if not isinstance(record, dict) or "grids" not in record:
            raise ValueError("not a cell record")
        return record
    except ValueError as exc:
        aside = f"{loc}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        fs, path = storage.resolve(loc)
        fs.move(path, storage.resolve(aside)[1])
        print_fn(f"note: cell {cell_id}: its scores {loc} cannot be read ({str(exc)[:120]}); kept aside as {aside}, "
                 f"scored again from its checkpoint")
        return None


def cells_by_id(cfg: Config) -> dict[str, Cell]:
    return {c.id: c for c in expand_cells(cfg)}
