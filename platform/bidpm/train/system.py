"""System metrics of the node a Train worker runs on, sampled by MLflow's own monitors, for the trial's run.

MLflow (3.x) logs system metrics for a run with ``mlflow.start_run(log_system_metrics=True)`` or
``mlflow.enable_system_metrics_logging()``: a ``SystemMetricsMonitor`` thread in *the process that opened
the run* samples ``CPUMonitor`` (psutil: CPU %, memory), ``GPUMonitor`` (nvidia-ml-py: per-GPU utilisation,
memory, power; or ``ROCMMonitor`` on AMD), disk and network every ``sampling_interval`` seconds (default 10,
``mlflow.set_system_metrics_sampling_interval`` / ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``) and logs
their means as ``system/<name>``. Here that process is the driver (``bidpm.tune.mlflow`` opens every trial's
run there, on purpose: workers may lack the tracking store's credentials), which holds no device: its
monitor would report the head node, not the GPUs that train. So rank 0's worker runs the same monitor
classes on a thread of its own (``tracking.system_metrics_interval_s``) and each epoch's report carries the
means since the last one as ``system/<name>`` - MLflow's names - which the driver logs to the trial's run
with the epoch as step (MLflow's UI shows them under System metrics).

What they measure: rank 0's node. NVML lists every GPU of that node (``gpu_<i>`` in NVML order, whatever
``CUDA_VISIBLE_DEVICES`` says), so one node's workers are all seen; other nodes are not. CPU % is the
whole node's (psutil), not the worker's share. Disk and network monitors are left out (not a training cost).
"""

from __future__ import annotations

import threading
from typing import Any, Optional

__all__ = ["SystemSampler", "system_sampler"]


def system_sampler(cfg: Any, rank: int) -> Optional["SystemSampler"]:
    """Rank 0's sampler when runs are tracked and ``tracking.system_metrics`` is on, else None."""
    tr = cfg.tracking
    return SystemSampler(tr.system_metrics_interval_s) if rank == 0 and tr.enabled and tr.system_metrics else None


class SystemSampler:
    """MLflow's CPU/memory and (where NVML or ROCm answers) GPU monitors, sampled every ``interval_s`` on a
    daemon thread; ``take()`` adds one sample now, returns the means since the last take, and starts anew."""

    def __init__(self, interval_s: float) -> None:
        import psutil
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

        self.monitors: list[Any] = [CPUMonitor()]
        self.monitors += _gpu_monitors()
        psutil.cpu_percent()          # psutil's first call returns a meaningless 0.0: start the window here
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bidpm-system-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            for m in self.monitors:
                m.collect_metrics()

    def take(self) -> dict[str, float]:
        """``system/<name>``: the mean of each metric over this window's samples (at least the one taken now)."""
        self._sample()
        out: dict[str, float] = {}
        with self._lock:
            for m in self.monitors:
                out.update({f"system/{k}": float(v) for k, v in m.aggregate_metrics().items()})
                m.clear_metrics()
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _gpu_monitors() -> list[Any]:
    """MLflow's NVIDIA monitor, else its AMD one, else none (no driver, no nvidia-ml-py: CPU metrics only)."""
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    for cls in (GPUMonitor, ROCMMonitor):
        try:
            return [cls()]
        except Exception:  # noqa: BLE001 - MLflow raises ImportError / RuntimeError when there is no such GPU
            continue
    return []
