"""Step budgets: which front row serves each NFE, and the ``--nfe K`` argument that jobs/synthesize.py and
jobs/evaluate.py share, naming ``champion-nfeK`` of the configured registered model."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bidpm.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_per_budget_keeps_the_best_row_of_each_nfe_ties_to_the_first():
    from bidpm.tracking.budgets import budget_alias, per_budget

    front = [{"trial": "a", "n_steps": 2, "objective": 0.7}, {"trial": "b", "n_steps": 1, "objective": 0.5},
             {"trial": "c", "n_steps": 2, "objective": 0.8}, {"trial": "d", "n_steps": 2, "objective": 0.8}]
    got = per_budget(front, lambda r: r["objective"], lambda a, b: a > b)
    assert list(got) == [1, 2] and got[1]["trial"] == "b" and got[2]["trial"] == "c"
    assert budget_alias(3) == "champion-nfe3" and budget_alias(1, "challenger") == "challenger-nfe1"


def test_nfe_argument_names_the_budget_champion(monkeypatch):
    from bidpm import cli
    from bidpm.tracking import pyfunc

    parser = argparse.ArgumentParser()
    cli.add_model_args(parser)
    assert parser.parse_args(["--nfe", "2"]).nfe == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--nfe", "2", "--model-uri", "models:/x@champion"])     # one model source
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    seen = []

    class Loaded:
        cfg = None

        def accelerate(self, _cfg):
            return self

    monkeypatch.setattr(pyfunc, "load_model", lambda uri, c, d: seen.append(uri) or Loaded())
    args = argparse.Namespace(checkpoint=None, model_uri=None, nfe=2, config=None, overrides=[])
    cli.load_model_arg(args, cfg, "cpu")
    assert seen == ["models:/bidpm-quickstart@champion-nfe2"]
    with pytest.raises(ConfigError):
        cli.budget_uri(cfg, 0)
