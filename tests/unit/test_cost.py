"""Device-hours summed over a trial's attempts (bidpm.tune.cost), the cost tables that show them, the
checkpoint folder of an async upload (bidpm.train.upload) and the worker's system metrics (bidpm.train.system)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from bidpm.tune.cost import AttemptClock, held_devices, read_attempts, running_total, summed


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_two_attempts_are_summed(tmp_path):
    folder = str(tmp_path / "train_x" / "attempts")
    now = FakeClock(1000.0)
    with AttemptClock(folder, "GPU", 4.0, every_s=1e6, now=now) as first:
        assert first.prior == summed([])                   # nothing before the first attempt
        now.t += 90.0                                      # 90 s on 4 GPUs
    now.t = 5000.0
    with AttemptClock(folder, "GPU", 4.0, every_s=1e6, now=now) as second:
        assert second.prior["train_s"] == 90.0 and second.prior["attempts"] == 1
        now.t += 45.0                                      # a resumed attempt: 45 s more
    total = summed(read_attempts(folder))
    assert total["attempts"] == 2 and total["train_s"] == 135.0
    assert total["device_hours"] == pytest.approx(135.0 * 4 / 3600)   # 0.15 GPU-hours
    assert total["device"] == "GPU" and total["devices"] == 4.0
    assert all(json.loads(p.read_text())["finished"] for p in (tmp_path / "train_x" / "attempts").iterdir())


def test_a_killed_attempt_counts_up_to_its_last_beat(tmp_path):
    folder = str(tmp_path / "attempts")
    now = FakeClock(0.0)
    killed = AttemptClock(folder, "CPU", 1.0, every_s=1e6, now=now).__enter__()
    now.t = 60.0
    killed.beat()                                          # its last heartbeat, then SIGKILL: no __exit__
    now.t = 75.0
    with AttemptClock(folder, "CPU", 1.0, every_s=1e6, now=now) as again:
        assert again.prior["train_s"] == 60.0              # the 15 s after the last beat are lost
        now.t = 100.0
    killed._stop.set()
    total = summed(read_attempts(folder))
    assert total["train_s"] == 85.0 and total["device_hours"] == pytest.approx(85.0 / 3600)


def test_heartbeat_thread_rewrites_the_record(tmp_path):
    folder = str(tmp_path / "attempts")
    with AttemptClock(folder, "CPU", 2.0, every_s=0.05) as clock:
        import time

        time.sleep(0.3)
        on_disk = summed(read_attempts(folder))["train_s"]
        assert 0.1 < on_disk < 0.3 + 1.0                   # beats while running, not only at the end
    assert summed(read_attempts(folder))["train_s"] >= on_disk
    assert not [n for n in os.listdir(folder) if ".tmp-" in n]
    assert clock.location.endswith(".json")


def test_running_total_adds_this_attempt_to_the_earlier_ones():
    prior = summed([{"seconds": 100.0, "devices": 2.0, "device": "GPU"}])
    got = running_total(prior, 50.0, "GPU", 2.0)
    assert got == {"cost/train_s": 150.0, "cost/device_hours": pytest.approx(300.0 / 3600), "cost/devices": 2.0,
                   "cost/device": "GPU", "cost/attempts": 2}


def test_held_devices_gpu_or_cpu():
    assert held_devices(SimpleNamespace(use_gpu=True, gpus_per_worker=0.5, cpus_per_worker=4, num_workers=4)) == ("GPU", 2.0)
    assert held_devices(SimpleNamespace(use_gpu=False, gpus_per_worker=1, cpus_per_worker=0.5, num_workers=2)) == ("CPU", 1.0)


def _cell(label: str, ratio: float, seed: int, hours: float) -> dict:
    return {"cell": {"id": f"{label}__p{ratio:.0%}__s{seed}", "label": label, "method": label.lower(), "ratio": ratio,
                     "seed": seed, "fraction": 1.0},
            "cost": {"train_wall_s": 10.0, "images_per_s": 5.0, "peak_mem_mb": 100.0, "attempts": 1 + seed,
                     "train_s": hours * 3600, "devices": 1.0, "device": "GPU", "device_hours": hours},
            "params": 1000}


def test_study_cost_tables_sum_device_hours_per_method_ratio_and_cell():
    from bidpm.study import tables as T

    cells = [_cell("A", 1.0, 0, 0.25), _cell("A", 1.0, 1, 0.5), _cell("A", 0.5, 0, 1.0), _cell("B", 1.0, 0, 2.0)]
    cfg = SimpleNamespace(study=SimpleNamespace(methods=[SimpleNamespace(label="A"), SimpleNamespace(label="B")]))
    md, rows = T.cost_table(cells, cfg)
    assert "GPU-h (sum)" in md
    assert {r["method"]: r["device_hours"] for r in rows} == {"A": 1.75, "B": 2.0}
    matrix = T.ratio_costs(cells, cfg)
    assert "| A | 0.7500 | 1.0000 | 1.7500 |" in matrix and "| B | 2.0000 | nan | 2.0000 |" in matrix
    per, cell_rows = T.cell_costs(cells)
    assert len(cell_rows) == 4 and "| GPU-h |" in per
    assert sum(r["device_hours"] for r in cell_rows) == pytest.approx(3.75)


def test_search_table_names_the_unit_and_takes_the_running_total():
    from bidpm.search.table import format_table, trial_row

    history = [{"training_iteration": 1, "val/ssim_mean": 0.5, "cost/device_hours": 0.01, "cost/device": "CPU",
                "cost/devices": 1.0, "cost/train_s": 36.0, "time_total_s": 40.0},
               {"training_iteration": 2, "val/ssim_mean": 0.4, "cost/device_hours": 0.02, "cost/device": "CPU",
                "cost/devices": 1.0, "cost/train_s": 72.0, "time_total_s": 80.0}]
    row = trial_row("t1", {}, history, "val/ssim_mean", "max", 2, error=False)
    assert row["objective"] == 0.5                           # the best epoch's metrics ...
    assert row["device_hours"] == 0.02 and row["train_s"] == 72.0   # ... and the cost of the whole trial
    text = format_table([row])
    assert "CPU-h" in text.splitlines()[0] and "0.02" in text


def test_checkpoint_folder_async_leaves_it_to_ray(tmp_path):
    from ray.train import CheckpointUploadMode

    from bidpm.train.upload import checkpoint_folder, upload_options

    root = str(tmp_path)
    with checkpoint_folder("async", "o-r0", root) as a:
        pass
    with checkpoint_folder("sync", "o-r0", root) as s:
        pass
    with pytest.raises(RuntimeError):
        with checkpoint_folder("async", "o-r0", root) as failed:
            raise RuntimeError("validation failed")
    assert os.path.isdir(a) and not os.path.exists(s) and not os.path.exists(failed)
    assert os.path.dirname(a) == root and os.path.basename(a).startswith("bidpm-upload-o-r0-")
    assert upload_options("async") == {"checkpoint_upload_mode": CheckpointUploadMode.ASYNC,
                                       "delete_local_checkpoint_after_upload": True}
    assert upload_options("sync")["checkpoint_upload_mode"] == CheckpointUploadMode.SYNC


def test_an_attempt_removes_its_runs_leftover_folders_only(tmp_path):
    """What a failed background upload or a killed worker left is removed when the run's next attempt starts
    on that node; another run's (also one of the same name elsewhere) and another rank's stay."""
    from bidpm.train.upload import checkpoint_folder, folder_owner, remove_leftovers

    root = str(tmp_path)
    mine, same_name, rank1 = folder_owner("/a/ray/run", 0), folder_owner("/b/ray/run", 0), folder_owner("/a/ray/run", 1)
    assert len({mine, same_name, rank1}) == 3
    left = []
    for owner in (mine, mine, same_name, rank1):
        with checkpoint_folder("async", owner, root) as folder:    # async: nobody deletes it here
            (Path(folder) / "state.pt").write_bytes(b"w")
            left.append(folder)
    (tmp_path / "bidpm-ckpt-download").mkdir()                      # a download's folder (io/checkpoints.py)
    assert sorted(remove_leftovers(mine, root)) == sorted(left[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(left[2]).name, Path(left[3]).name, "bidpm-ckpt-download"])
    assert remove_leftovers(mine, root) == []


def test_system_sampler_uses_mlflows_names_and_measures_this_node():
    from bidpm.train.system import SystemSampler

    s = SystemSampler(interval_s=0.05)
    try:
        import time

        time.sleep(0.2)
        got = s.take()
    finally:
        s.close()
    assert 0.0 <= got["system/cpu_utilization_percentage"] <= 100.0
    used_mb = psutil.virtual_memory().used / 1e6          # what MLflow's CPUMonitor reads, in MB
    assert got["system/system_memory_usage_megabytes"] == pytest.approx(used_mb, rel=0.25)
