"""The search's compact live table (bidpm.search.table) and when the reporter prints it (bidpm.tune.reporter):
formatting from plain dicts, print timing."""

from __future__ import annotations

import pickle

from bidpm.config import Config
from bidpm.search.table import SearchReporter, count_line, format_progress
from bidpm.tune.reporter import progress_settings


def _trial(tid, status, grid=(0.0, 1.0), lam=0.0, kernel="rbf", fwd=None, bwd=None, epochs=None):
    result = {} if epochs is None else {"training_iteration": epochs, "val/fwd_ssim_mean": fwd, "val/bwd_ssim_mean": bwd}
    return {"trial": tid, "status": status, "result": result,
            "config": {"method.time_grid": list(grid), "method.lambda_unpaired": lam, "method.mmd_kernel": kernel,
                       "n_steps": len(grid) - 1}}


def _rows(text):
    return [line.split() for line in text.splitlines()]


def test_table_columns_values_and_counts():
    trials = [_trial("a_00000", "TERMINATED", (0.0, 0.25, 1.0), 0.2, "imq", 0.81234, 0.79, 3),
              _trial("a_00001", "RUNNING", (0.0, 1.0), 0.0, "rbf", 0.7, 0.6, 1),
              _trial("a_00002", "PENDING")]
    text = format_progress(trials, total=5, max_epochs=3)
    lines = text.splitlines()
    assert lines[0].split() == ["trial", "N", "grid", "lambda_u", "kernel", "fwd", "SSIM", "bwd", "SSIM", "epochs", "status"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert _rows(text)[2] == ["a_00000", "2", "[0,0.25,1]", "0.2", "imq", "0.8123", "0.7900", "3", "finished"]
    assert _rows(text)[3] == ["a_00001", "1", "[0,1]", "0", "0.7000", "0.6000", "1", "running"]   # no kernel
    assert _rows(text)[4] == ["a_00002", "1", "[0,1]", "0", "-", "-", "-", "pending"]
    kernel_col = lines[0].index("kernel")
    assert lines[3][kernel_col:kernel_col + 6].strip() == ""            # kernel blank when lambda_u = 0
    assert lines[-1] == "trials: 1 done, 1 running, 3 pending (of 5)"   # 2 not yet created count as pending
    widths = {len(line) for line in lines[:-1]}
    assert max(widths) <= len(lines[1])                                 # fixed width: rows fit the rule


def test_stopped_error_and_counts_line():
    trials = [_trial("t1", "TERMINATED", epochs=1, fwd=0.5, bwd=0.5), _trial("t2", "ERROR")]
    text = format_progress(trials, total=2, max_epochs=4)
    assert _rows(text)[2][-1] == "stopped" and _rows(text)[3][-1] == "error"
    assert count_line(trials, 2) == "trials: 1 done, 1 errored, 0 running, 0 pending (of 2)"
    assert count_line(trials) == "trials: 1 done, 1 errored, 0 running, 0 pending (of 2)"
    assert _rows(format_progress(trials[:1], total=1))[2][-1] == "done"   # max_epochs unknown


def test_max_rows_keeps_unfinished_and_latest_finished():
    trials = [_trial(f"t{i}", "TERMINATED", epochs=2) for i in range(5)] + [_trial("t5", "RUNNING")]
    text = format_progress(trials, total=6, max_rows=3)
    shown = [r[0] for r in _rows(text)[2:5]]
    assert shown == ["t3", "t4", "t5"]
    assert "(3 earlier finished trials not shown)" in text


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_reporter_prints_on_status_change_or_after_interval():
    out, clock = [], _Clock()
    rep = SearchReporter(interval_s=30.0, print_fn=out.append, clock=clock, total=2)
    rep.setup(total_num_samples=2)
    assert not rep.update([])                                           # nothing to show yet
    assert rep.update([_trial("t1", "PENDING")])                        # first table
    clock.t = 1.0
    assert rep.update([_trial("t1", "RUNNING")])                        # status change prints at once
    clock.t = 2.0
    assert not rep.update([_trial("t1", "RUNNING", epochs=1, fwd=0.5, bwd=0.4)])   # new result, within interval
    clock.t = 31.5
    assert rep.update([_trial("t1", "RUNNING", epochs=1, fwd=0.5, bwd=0.4)])       # interval passed
    clock.t = 70.0
    assert not rep.update([_trial("t1", "RUNNING", epochs=1, fwd=0.5, bwd=0.4)])   # interval, but unchanged
    clock.t = 71.0
    t1_done = _trial("t1", "TERMINATED", epochs=2, fwd=0.6, bwd=0.5)
    assert rep.update([t1_done])                                        # finished: status change
    clock.t = 72.0
    assert not rep.update([t1_done, _trial("t2", "PENDING")])           # a new pending trial is no change
    clock.t = 73.0
    assert rep.update([t1_done, _trial("t2", "RUNNING")])               # its start is
    clock.t = 74.0
    final = [t1_done, _trial("t2", "TERMINATED", epochs=2, fwd=0.7, bwd=0.6)]
    assert rep.update(final)
    assert not rep.update(final, done=True)                             # final state already printed
    assert len(out) == 6
    assert out[-1].splitlines()[-1] == "trials: 2 done, 0 running, 0 pending (of 2)"
    rep.setup(total_num_samples=2)                                      # a new fit (restore) starts afresh
    assert rep.update(final, done=True) and len(out) == 7


def test_progress_settings_and_pickle():
    cfg = Config()
    other = object()
    quiet = progress_settings(cfg, [other], SearchReporter.for_config(cfg))
    assert quiet["verbose"] == 0 and quiet["callbacks"][0] is other
    rep = quiet["callbacks"][-1]
    assert isinstance(rep, SearchReporter) and rep.total == cfg.tune.num_samples and rep.max_epochs == cfg.train.epochs
    assert isinstance(pickle.loads(pickle.dumps(rep)), SearchReporter)  # Tune saves callbacks in tuner.pkl
    cfg.tune.verbose = True
    loud = progress_settings(cfg, [other], SearchReporter.for_config(cfg))
    assert loud == {"verbose": 1, "callbacks": [other]}


def test_reporter_pickles_while_tune_has_replaced_print(monkeypatch, capsys):
    """Ray Tune swaps builtins.print in the driver; a reporter that stored print would not pickle then."""
    import builtins

    original = builtins.print
    monkeypatch.setattr(builtins, "print", lambda *a, **k: original(*a, **k))
    rep = progress_settings(Config(), [], SearchReporter.for_config(Config()))["callbacks"][-1]
    again = pickle.loads(pickle.dumps(rep))
    again.update([{"trial": "t1", "status": "RUNNING", "config": {}, "result": {}}], done=True)
    assert "t1" in capsys.readouterr().out
