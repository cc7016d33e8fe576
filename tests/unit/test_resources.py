"""What a run asks of the cluster (bidpm.raycluster.resources), one rule for every caller: checked against
Ray Train's own ScalingConfig (the worker group's reservation) and closed-form counts. No Ray started."""

from __future__ import annotations

import pytest

from bidpm.config import load_config
from bidpm.raycluster.resources import concurrency, task_options, trial_request, worker_request

CASES = {
    "cpu": ["train.num_workers=2", "train.cpus_per_worker=0.5"],
    "gpu": ["train.num_workers=4", "train.use_gpu=true", "train.cpus_per_worker=2", "train.gpus_per_worker=1"],
    "slot": ["train.num_workers=1", "train.resources_per_worker={accelerator_slot: 1}"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_trial_asks_its_worker_group_plus_its_coordinator(case):
    from bidpm.train.launch import build_scaling_config

    cfg = load_config(None, CASES[case] + ["tune.trial_cpus=0.25"])
    group = {k: float(v) for k, v in build_scaling_config(cfg).total_resources.items() if v}   # Ray's own sum
    assert trial_request(cfg, with_trial=False) == group
    asked = trial_request(cfg)
    assert asked["CPU"] == pytest.approx(group["CPU"] + 0.25) and {k: v for k, v in asked.items() if k != "CPU"} == \
        {k: v for k, v in group.items() if k != "CPU"}
    per = worker_request(cfg)
    assert {k: v * cfg.train.num_workers for k, v in per.items()} == group


def test_how_many_trials_run_at_once():
    cfg = load_config(None, CASES["cpu"] + ["tune.trial_cpus=0.25"])          # 1.25 CPU per trial
    assert concurrency(cfg, {"CPU": 2.0}) == 1 and concurrency(cfg, {"CPU": 5.0}) == 4
    assert concurrency(cfg, {"CPU": 1.0}) == 1                                 # never 0: the first waits
    assert concurrency(cfg, {"CPU": 64.0}, limit=3) == 3                       # study.max_concurrent_trials wins
    gpu = load_config(None, CASES["gpu"] + ["tune.trial_cpus=1"])             # 9 CPU + 4 GPU per trial
    assert concurrency(gpu, {"CPU": 64.0, "GPU": 8.0}) == 2 and concurrency(gpu, {"CPU": 18.0, "GPU": 16.0}) == 2
    slot = load_config(None, CASES["slot"])
    assert concurrency(slot, {"CPU": 8.0, "accelerator_slot": 3.0}) == 3 and concurrency(slot, {"CPU": 8.0}) == 1


def test_a_scoring_task_asks_one_train_worker():
    assert task_options(load_config(None, CASES["cpu"])) == {"num_cpus": 0.5}
    assert task_options(load_config(None, CASES["gpu"])) == {"num_cpus": 2.0, "num_gpus": 1.0}
    assert task_options(load_config(None, CASES["slot"])) == {"num_cpus": 0.5, "resources": {"accelerator_slot": 1.0}}
