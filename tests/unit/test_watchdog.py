"""The stall watchdog decided on fake trials and a fake cluster state: when a study waits, what the live
table says, when it stops and with what message; and the resource rules it shares with the pre-flight
check. No Ray is started (the integration test test_faults.py runs it for real)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import ray

from bidpm.config import ConfigError, load_config
from bidpm.raycluster import resources as R
from bidpm.search.table import SearchReporter, format_progress
from bidpm.tune import watchdog as W
from bidpm.tune.names import train_run_name
from bidpm.tune.reporter import trial_info


class FakeTrial(SimpleNamespace):
    """Named as the search names its trials (``trial_<id>``), which is how the watchdog finds the Train run."""

    def __str__(self) -> str:
        return self.name if hasattr(self, "name") else f"trial_{self.trial_id}"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _trial(tid, status="RUNNING"):
    return FakeTrial(trial_id=tid, status=status, config={"method.time_grid": [0.0, 1.0]},
                           run_metadata=SimpleNamespace(last_result={}), local_path=f"/x/{tid}")


@pytest.fixture
def cluster(monkeypatch):
    """A fixed 2-CPU cluster; tests set what Train runs, placement groups and free resources look like."""
    state = SimpleNamespace(train={}, pending=[], held=[], free={"CPU": 0.75}, total={"CPU": 2.0}, grows=False)
    monkeypatch.setattr(W, "_train_runs", lambda: state.train)
    monkeypatch.setattr(W, "_placement_groups", lambda: (state.pending, state.held))
    monkeypatch.setattr(W, "cluster_can_grow", lambda setting: state.grows if setting is None else setting)
    monkeypatch.setattr(ray, "available_resources", lambda: state.free)
    monkeypatch.setattr(ray, "cluster_resources", lambda: state.total)
    return state


def _dog(clock, **kw):
    kw.setdefault("stall_timeout_s", 60.0)
    return W.StallWatchdog("q", {"CPU": 1.25}, clock=clock, check_interval_s=0.0, **kw)


def _leak(cluster):
    """The issue's hang: the next trial's worker group (2 x 0.5 CPU) pending, 0.75 CPU free, nothing computes."""
    cluster.train = {"train_t2": "SCHEDULING"}
    cluster.pending = [{"CPU": 0.5}, {"CPU": 0.5}]
    cluster.held = ["deadbeef 2 x {CPU: 0.5}"]


def test_a_study_waiting_for_resources_nobody_frees_stops_with_what_it_waited_for(cluster, capsys):
    clock, trials = Clock(), [_trial("t1", "TERMINATED"), _trial("t2")]
    dog = _dog(clock)
    dog.setup()
    dog.on_trial_start(0, trials, trials[1])
    _leak(cluster)
    dog.on_step_end(0, trials)                         # waiting starts: noted, printed once, not stopped
    assert dog.notes == {"t2": "waiting for 0.25 CPU"}
    assert "waiting for 0.25 CPU" in capsys.readouterr().err
    clock.t += 59
    dog.on_step_end(1, trials)
    assert capsys.readouterr().err == ""               # the same wait is not printed again
    clock.t += 2
    with pytest.raises(W.StudyStalled) as e:
        dog.on_step_end(2, trials)
    msg = str(e.value)
    for words in ("study 'q' stopped", "tune.stall_timeout_s=60", "trial t2", "asked {CPU: 1}", "{CPU: 1.25}",
                  "{CPU: 0.75} free of {CPU: 2}", "deadbeef", "another Ray instance", "tune.autoscaling=true"):
        assert words in msg, (words, msg)
    assert "\n" not in msg


def test_progress_restarts_the_clock(cluster):
    clock, trials = Clock(), [_trial("t1"), _trial("t2", "PENDING")]
    dog = _dog(clock)
    dog.setup()
    _leak(cluster)
    cluster.train = {"train_t1": "RUNNING"}            # t1's workers run (a long epoch): t2 waits behind it, rightly
    for _ in range(5):
        clock.t += 50
        dog.on_step_end(0, trials)
    assert dog.notes == {}
    cluster.train = {"train_t1": "SCHEDULING"}
    clock.t += 50
    dog.on_step_end(1, trials)                          # waits from now on
    clock.t += 30
    dog.on_trial_result(2, trials, trials[0], {})       # a result is progress too
    clock.t += 45
    dog.on_step_end(3, trials)
    clock.t += 20
    with pytest.raises(W.StudyStalled):
        dog.on_step_end(4, trials)


def test_no_pending_request_is_no_stall(cluster):
    """Between Ray Train's start retries (or while a worker group starts) nothing is pending: not a wait."""
    clock, trials = Clock(), [_trial("t2")]
    dog = _dog(clock)
    dog.setup()
    cluster.train = {"train_t2": "SCHEDULING"}
    clock.t += 1000
    dog.on_step_end(0, trials)
    assert dog.notes == {}


def test_an_autoscaling_cluster_waits_and_the_table_says_for_what(cluster, capsys):
    clock, trials = Clock(), [_trial("t1", "TERMINATED"), _trial("t2")]
    cluster.grows = True
    _leak(cluster)
    cluster.pending, cluster.free = [{"CPU": 0.5, "GPU": 1.0}, {"CPU": 0.5, "GPU": 1.0}], {"CPU": 1.75}
    dog = _dog(clock)
    dog.setup()
    for _ in range(10):
        clock.t += 100
        dog.on_step_end(0, trials)                      # never stops
    assert dog.notes == {"t2": "waiting for 2 GPUs"}
    assert "the cluster autoscales: waiting for nodes" in capsys.readouterr().err
    reporter = SearchReporter(print_fn=lambda s: None, watchdog=dog)
    rows = [trial_info(t, reporter._notes()) for t in trials]
    assert format_progress(rows, total=2).splitlines()[3].endswith("waiting for 2 GPUs")


def test_null_timeout_waits_forever(cluster):
    clock, trials = Clock(), [_trial("t2")]
    dog = _dog(clock, stall_timeout_s=None)
    dog.setup()
    _leak(cluster)
    clock.t += 10**6
    dog.on_step_end(0, trials)
    assert dog.notes


def test_report_timeout_stops_a_silent_running_trial(cluster):
    clock, trials = Clock(), [_trial("t1")]
    dog = _dog(clock, report_timeout_s=300.0)
    dog.setup()
    dog.on_trial_start(0, trials, trials[0])
    cluster.train = {"train_t1": "RUNNING"}
    clock.t += 299
    dog.on_step_end(0, trials)
    clock.t += 2
    with pytest.raises(W.StudyStalled, match=r"t1's workers run but it has reported nothing for 301 s.*report_timeout_s"):
        dog.on_step_end(1, trials)


def test_without_train_state_a_trial_computes_once_it_reported(cluster):
    clock, trials = Clock(), [_trial("t1")]
    dog = _dog(clock)
    dog.setup()
    computing, waiting = dog.classify(trials, None)
    assert (computing, waiting) == ([], trials)
    dog.on_trial_result(0, trials, trials[0], {})
    assert dog.classify(trials, None) == (trials, [])


def test_cells_are_matched_to_their_train_runs(cluster):
    """A study's trial ``cell_<id>`` trains Train run ``train_<id>``; a search's ``trial_<id>`` trains ``train_<id>``."""
    assert train_run_name("cell_Bi-DPM-N-1__p50__s0__f100") == "train_Bi-DPM-N-1__p50__s0__f100"
    assert train_run_name("trial_abc_00001") == "train_abc_00001"
    cell = FakeTrial(trial_id="abc_00001", status="RUNNING", name="cell_bidpm-r1-s0", config={"cell": "bidpm-r1-s0"})
    dog = _dog(Clock())
    assert dog.classify([cell], {"train_bidpm-r1-s0": "RUNNING"}) == ([cell], [])
    assert dog.classify([cell], {"train_bidpm-r1-s0": "SCHEDULING", "train_abc_00001": "RUNNING"}) == ([], [cell])


def test_pickles_without_its_runtime_state():
    dog = W.StallWatchdog("q", {"CPU": 1.0}, 60.0)
    dog.notes["t"] = "waiting for 1 CPU"
    again = pickle.loads(pickle.dumps(dog))
    assert again.notes == {} and again.asked == {"CPU": 1.0} and again.stall_timeout_s == 60.0


def test_a_trial_larger_than_a_fixed_cluster_is_refused_before_it_starts():
    cfg = load_config(None, ["train.num_workers=4", "train.cpus_per_worker=1"])
    with pytest.raises(ConfigError) as e:
        R.check_fits(cfg, limit={"CPU": 2.0}, can_grow=False)
    msg = str(e.value)
    assert "one trial needs 4.25 CPUs (the cluster has 2)" in msg and "train.num_workers=4" in msg
    with pytest.raises(ConfigError, match="1 GPU .*has 0"):
        R.check_fits(load_config(None, ["train.use_gpu=true", "train.num_workers=1"]), limit={"CPU": 8.0},
                     can_grow=False, with_trial=False)
    R.check_fits(load_config(None, []), limit={"CPU": 2.0}, can_grow=False)
    R.check_fits(cfg, limit={"CPU": 64.0}, can_grow=True)                 # an autoscaler's maximum


def test_amounts_read_naturally():
    assert R.waiting_note({"GPU": 2.0, "CPU": 0.5}) == "waiting for 2 GPUs, 0.5 CPU"
    assert R.amount(1.0, "GPU") == "1 GPU" and R.amount(3.0, "accelerator_slot") == "3 'accelerator_slot'"
    assert R.shortfall({"CPU": 1.0, "GPU": 1.0}, {"CPU": 2.0}) == {"GPU": 1.0}
