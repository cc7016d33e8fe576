"""Experiment folders made before the search / study / tune rooms existed still unpickle: their tuner.pkl
and searcher state name callbacks, the searcher's space function and the trial-name functions by their
old import paths (read from real folders of commit 4b56013). Each old global, as pickle writes it
(opcode GLOBAL ``module\\nname``), must load the object that now does the job."""

from __future__ import annotations

import pickle

import pytest

# (old module, name) -> (new module, name), as found in tuner.pkl / searcher-state-*.pkl of 4b56013
MOVED = {
    ("bidpm.tune.launch", "trial_name"): ("bidpm.search.run", "trial_name"),
    ("bidpm.tune.space", "sample_overrides"): ("bidpm.search.space", "sample_overrides"),
    ("bidpm.tune.callback", "MLflowTrialCallback"): ("bidpm.search.run", "SearchTrialCallback"),
    ("bidpm.tune.progress", "BidpmReporter"): ("bidpm.search.table", "SearchReporter"),
    ("bidpm.tune.study", "_name"): ("bidpm.study.run", "cell_trial_name"),
    ("bidpm.tune.study", "StudyCellCallback"): ("bidpm.study.run", "CellCallback"),
    ("bidpm.tune.progress", "CellProgress"): ("bidpm.study.progress", "CellProgress"),
    ("bidpm.tune.watchdog", "StallWatchdog"): ("bidpm.tune.watchdog", "StallWatchdog"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_pickled_name_loads_what_replaced_it(old):
    import importlib

    import bidpm.search.run  # noqa: F401 - the runners register what moved, as a restore imports them first
    import bidpm.study.run  # noqa: F401

    module, name = MOVED[old]
    blob = f"c{old[0]}\n{old[1]}\n.".encode()           # protocol 0 GLOBAL, what the old pickles hold
    assert pickle.loads(blob) is getattr(importlib.import_module(module), name)


def test_an_old_cell_name_and_reporter_behave_as_before():
    """The replacements do what the old objects did: ``cell_<id>`` names, a picklable search reporter."""
    from types import SimpleNamespace

    import bidpm.search.run  # noqa: F401
    import bidpm.study.run  # noqa: F401

    name = pickle.loads(b"cbidpm.tune.study\n_name\n.")
    assert name(SimpleNamespace(config={"cell": "RF__p50__s0__f100"}, trial_id="x")) == "cell_RF__p50__s0__f100"
    reporter = pickle.loads(b"cbidpm.tune.progress\nBidpmReporter\n.")(max_epochs=3, total=2)
    assert "trials: 0 done" in reporter.format([])
