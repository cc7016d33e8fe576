"""Ingest throughput: the Ray Data pipeline (1 and 2 workers) vs a bare nibabel load-and-slice loop.

    .venv/bin/python benchmarks/ingest.py [--subjects 12] [--shape 96 96 48] [--slices 32] [--size 64] [--repeat 1]

Prints slices/s, per-worker ratio to the bare loop and to the pipeline's own work run in one plain
process without Ray, and peak RSS (bare loop process; driver; largest Ray worker), side by side.
The pipeline does more than the bare loop (RAS reorientation, checks, normalisation, anti-aliased
resize, Parquet write, manifest), so the ratio is the cost of all that plus Ray's scheduling; it
also inflates .nii.gz with ISA-L, so a bare loop with ISA-L is shown too. Two bare loops run at
once give the machine's own ceiling for two busy processes. Workers are warmed up on a separate
tiny run first (process start + imports are a one-off per cluster, not per volume).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def _peak_rss_mib() -> float:
    """VmHWM (peak RSS of this process image); ru_maxrss would carry the parent's peak across exec."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024


def _in_fresh_process(target, *args) -> tuple[int, float, float]:
    """Run ``target(*args, queue)`` in a spawned process (its own core and RSS); (slices, seconds, peak MiB)."""
    return _in_fresh_processes(target, [args])


def _in_fresh_processes(target, arg_lists: list[tuple]) -> tuple[int, float, float]:
    """Run ``target(*args, queue)`` for each ``args`` in its own spawned process, all at once;
    (slices summed, wall seconds from first start to last finish, largest peak MiB)."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, q)) for args in arg_lists]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    # each process times its own loop (after imports); with all started together the slowest bounds the wall time
    return sum(r[0] for r in results), max(r[1] for r in results), max(r[2] for r in results)


def bare_loop(root: str, k: int, part: tuple[int, int], isal: bool, out: mp.Queue) -> None:
    """One core: load both volumes with nibabel, take the central k transverse slices. ``part`` =
    (i, n): every n-th subject from the i-th, so n processes can share the subjects. ``isal``:
    inflate with ISA-L (as the pipeline does) instead of nibabel's stdlib gzip, to show how much of
    the pipeline's ratio is the faster decompressor."""
    from isal import igzip

    dirs = [d for d in sorted(Path(root).iterdir()) if d.is_dir()][part[0]::part[1]]
    t = time.perf_counter()
    n = 0
    for d in dirs:
        for m in ("t1", "t2"):
            path = d / f"{d.name}_{m}.nii.gz"
            img = nib.Nifti1Image.from_bytes(igzip.decompress(path.read_bytes())) if isal else nib.load(path)
            vol = np.asarray(img.dataobj, dtype=np.float32)
            z0 = (vol.shape[2] - k) // 2
            slices = np.ascontiguousarray(np.moveaxis(vol[:, :, z0:z0 + k], 2, 0))
            assert slices.shape[0] == k
        n += k
    out.put((n, time.perf_counter() - t, _peak_rss_mib()))


def _probed_group(item: dict, settings, version_dir: str, log: str) -> list[dict]:
    """The pipeline's task function (``ingest_tasks._ingest_group``: ``_ingest_one`` per subject), plus a
    line per subject (pid, start, end, rows) for the ramp-up and steady-state figures. Defined in
    this script, so Ray ships it by value."""
    import json as _json

    from bidpm.data import ingest_tasks

    out, lines = [], []
    for task in _json.loads(item["tasks"]):
        t = time.time()
        out.append(ingest_tasks._ingest_one(task, settings, version_dir))
        lines.append(f"{os.getpid()} {t} {time.time()} {out[-1]['rows']}\n")
    with open(log, "a") as f:
        f.writelines(lines)
    return out


def _timeline(log: Path, t0: float, workers: int) -> tuple[str, float]:
    """(each worker's first-subject start after the call, slices/s per worker while all ran).

    "While all ran": from the moment the last worker started its first subject to the moment the
    first worker finished its last one, counting the subjects that began and ended inside it."""
    rows = [line.split() for line in log.read_text().split("\n") if line]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for pid, start, end, _ in rows:
        first[pid] = min(first.get(pid, float("inf")), float(start) - t0)
        last[pid] = max(last.get(pid, 0.0), float(end) - t0)
    starts = " and ".join(f"{v:.2f}s" for v in sorted(first.values()))
    if len(first) < workers:
        return starts + f" (only {len(first)} of {workers} workers got a task)", float("nan")
    lo, hi = max(first.values()), min(last.values())
    n = sum(int(k) for _, start, end, k in rows if float(start) - t0 >= lo and float(end) - t0 <= hi)
    return starts, (n / (hi - lo) / workers if hi > lo else float("nan"))


def _warm_worker(row: dict) -> dict:
    import bidpm.data.shards  # noqa: F401  (the ingest task's imports)

    time.sleep(0.5)  # long enough that the 4 warm-up tasks spread over both workers
    return {"pid": os.getpid()}


def same_work_loop(root: str, k: int, size: int, out_dir: str, part: tuple[int, int], out: mp.Queue) -> None:
    """One core, no Ray: the pipeline's own per-subject work (``slice_table`` + ``write_table``) in a
    plain loop. Separates what the pipeline does beyond load-and-slice from what Ray adds. ``part``
    as in ``bare_loop``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    import torch

    torch.set_num_threads(1)  # one core, as a Ray task with num_cpus=1 gets (Ray sets OMP_NUM_THREADS=1)
    from bidpm.config import load_config
    from bidpm.data.layouts import discover
    from bidpm.data.volume import SliceSettings, slice_table, write_table

    cfg = load_config(None, [f"data.num_slices={k}", f"data.image_size=[{size},{size}]"])
    s = SliceSettings.from_data_config(cfg.data)
    subjects = discover("brats", root, "t1", "t2", None)[part[0]::part[1]]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    slice_table(subjects[0], subjects[0].subject, "train", s)  # warm-up (first-call costs), as the Ray workers get
    t = time.perf_counter()
    n = 0
    for rec in subjects:
        table, _ = slice_table(rec, rec.subject, "train", s)
        n += write_table(table, str(Path(out_dir) / f"{rec.subject}.parquet"), s.row_group_rows)[0]
    out.put((n, time.perf_counter() - t, _peak_rss_mib()))


class RssSampler:
    """Peak RSS (MiB) of this process and of the largest Ray worker process, sampled every 100 ms.
    Worker processes are looked up once a second, not on every sample: scanning every process's
    command line 20 times a second took CPU from the workers it was measuring on 2 cores."""

    def __init__(self):
        import psutil

        self.psutil, self.me = psutil, psutil.Process()
        self.driver = self.worker = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _workers(self) -> list:
        out = []
        for p in self.psutil.process_iter(["name", "cmdline"]):
            if (p.info["name"] or "").startswith("ray::") or any("default_worker.py" in c for c in (p.info["cmdline"] or [])):
                out.append(p)
        return out

    def _run(self):
        workers, found = [], 0.0
        while not self._stop.is_set():
            if time.monotonic() - found > 1.0:
                workers, found = self._workers(), time.monotonic()
            self.driver = max(self.driver, self.me.memory_info().rss / 2**20)
            for p in workers:
                try:
                    self.worker = max(self.worker, p.memory_info().rss / 2**20)
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    pass
            self._stop.wait(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _median(xs: list[float]) -> float:
    return float(np.median([x for x in xs if x == x])) if any(x == x for x in xs) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--shape", type=int, nargs=3, default=[96, 96, 48])
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every run, interleaved; the table shows medians (this VM drifts 5-30%% between runs)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bidpm-bench-"))
    import json
    import shutil
    from functools import partial

    from bidpm.data.phantom import write_phantoms

    t = time.perf_counter()
    root = write_phantoms(work / "phantoms", args.subjects, args.shape, 0, "brats", "brain")
    print(f"phantoms: {args.subjects} subjects {args.shape} in {time.perf_counter() - t:.1f}s under {work}")
    vol_mib = np.prod(args.shape) * 4 / 2**20

    import ray

    from bidpm.config import load_config
    from bidpm.data import ingest_tasks, prepare_shards

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    base = [f"output_dir={work}", "data.layout=phantom", f"data.root={root}", f"data.phantom.num_subjects={args.subjects}",
            f"data.phantom.shape={list(args.shape)}", f"data.num_slices={args.slices}", f"data.image_size=[{args.size},{args.size}]",
            "data.split.val_fraction=0.1", "data.split.test_fraction=0.1"]
    prepare_shards(load_config(None, [f"output_dir={work / 'warm'}", "data.phantom.num_subjects=3", "data.phantom.shape=[24,24,10]",
                                      "data.num_slices=4", "data.image_size=[16,16]", "data.num_workers=2"]))
    # The tiny run can finish on one worker; make sure both have imported the ingest code, since a
    # cold worker's first task pays ~1-2 s of imports (torch, pyarrow) that is a one-off per cluster.
    ray.data.from_items([{"i": i} for i in range(4)], override_num_blocks=4).map(
        _warm_worker, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=2)).take_all()
    with RssSampler() as idle:
        time.sleep(0.3)
    idle_worker = idle.worker

    names = ["bare nibabel loop (1 core)", "bare loop, ISA-L gzip (1 core)", "bare loop, 2 processes at once",
             "pipeline work, no Ray (1 core)", "pipeline work, no Ray, 2 at once",
             "ray data, 1 worker (num_workers=1)", "ray data, 2 workers (num_workers=2)", "ray data, 2 workers (unset: 2 CPUs)"]
    workers_of = dict(zip(names, [1, 1, 2, 1, 2, 1, 2, 2]))
    ray_runs = {names[5]: (1, "1"), names[6]: (2, "2"), names[7]: (2, "null")}  # name -> (workers, data.num_workers)
    rates: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, list[float]] = {n: [0.0, 0.0] for n in names}
    ramps: dict[str, list[str]] = {n: [] for n in ray_runs}
    steady: dict[str, list[float]] = {n: [] for n in ray_runs}
    real_group = ingest_tasks._ingest_group
    for rep in range(args.repeat):
        # every run of a round back to back (same machine state), rounds repeated for the spread
        runs = {
            names[0]: lambda: _in_fresh_process(bare_loop, str(root), args.slices, (0, 1), False),
            names[1]: lambda: _in_fresh_process(bare_loop, str(root), args.slices, (0, 1), True),
            # the machine's own two-process ceiling: two bare loops at once, each on half the subjects
            names[2]: lambda: _in_fresh_processes(bare_loop, [(str(root), args.slices, (i, 2), False) for i in range(2)]),
            names[3]: lambda: _in_fresh_process(same_work_loop, str(root), args.slices, args.size, str(work / f"same_work{rep}"), (0, 1)),
            # two plain processes on half the subjects each: the 2-worker pipeline's ceiling on this machine
            names[4]: lambda: _in_fresh_processes(same_work_loop, [(str(root), args.slices, args.size, str(work / f"same_work{rep}"), (i, 2))
                                                                   for i in range(2)]),
        }
        for name, run in runs.items():
            n, dt, peak = run()
            rates[name].append(n / dt)
            rss[name][0] = max(rss[name][0], peak)
        shutil.rmtree(work / f"same_work{rep}", ignore_errors=True)
        for name, (workers, setting) in ray_runs.items():
            tag = f"{workers}_{setting}_r{rep}"
            cfg = load_config(None, [*base, f"data.num_workers={setting}", f"data.shards_dir=shards_{tag}"])
            log = work / f"tasks_{tag}.log"
            ingest_tasks._ingest_group = partial(_probed_group, log=str(log))  # the driver hands this to Ray Data
            with RssSampler() as sampler:
                t0, t = time.time(), time.perf_counter()
                path = prepare_shards(cfg)
                dt = time.perf_counter() - t
            ingest_tasks._ingest_group = real_group
            r, st = _timeline(log, t0, workers)
            ramps[name].append(r)
            steady[name].append(st)
            n = sum(v["slices"] for v in json.loads(Path(path).read_text())["splits"].values())
            rates[name].append(n / dt)
            rss[name] = [max(rss[name][0], sampler.driver), max(rss[name][1], sampler.worker)]
            shutil.rmtree(cfg.shards_path, ignore_errors=True)
        print(f"round {rep + 1}/{args.repeat}: " + ", ".join(f"{k.split('(')[0].strip()} {v[-1]:.0f}" for k, v in rates.items()) + " slices/s")
    ray.shutdown()

    bare, same = _median(rates[names[0]]), _median(rates[names[3]])
    print(f"\nvolume size: {vol_mib:.1f} MiB float32 per modality; {args.slices} of {args.shape[2]} slices/volume -> "
          f"{args.size}x{args.size}; {args.subjects} subjects; medians of {args.repeat} round(s)")
    print(f"{'run':38s} {'slices/s':>9s} {'(min-max)':>15s} {'x bare':>7s} {'x bare/worker':>13s} "
          f"{'x no-Ray/worker':>15s} {'RSS MiB (proc | max worker)':>28s}")
    for name in names:
        rate, w = _median(rates[name]), workers_of[name]
        spread = f"({min(rates[name]):.0f}-{max(rates[name]):.0f})"
        print(f"{name:38s} {rate:9.1f} {spread:>15s} {rate / bare:7.2f} {rate / bare / w:13.2f} "
              f"{rate / same / w:15.2f} {rss[name][0]:12.0f} | {rss[name][1]:6.0f}")
    print("x no-Ray/worker: slices/s per worker over the same per-subject work in one plain process (what Ray adds).")
    print(f"2 processes at once: what this machine gives two busy processes: bare loops "
          f"{_median(rates[names[2]]) / bare / 2:.2f}x the bare loop each, the pipeline's own work "
          f"{_median(rates[names[4]]) / same / 2:.2f}x its 1-process rate each; a 2-worker pipeline also shares the cores with its driver.")
    print("each worker's first subject began, after the call: " + "; ".join(f"{n}: {' | '.join(ramps[n])}" for n in ray_runs))
    print("steady state, while every worker was busy (subjects timed inside the tasks), median per worker:\n  "
          + "\n  ".join(f"{n}: {_median(steady[n]):.1f} slices/s = {_median(steady[n]) / bare:.2f}x the bare loop" for n in ray_runs))
    print("num_workers=N caps the operator, so Ray Data's driver hands out each next task only after it has reaped a\n"
          "finished one; with the driver sharing 2 cores with both workers that left workers idle 0.1-1.4 s between\n"
          "tasks. Unset, all tasks are queued in Ray at once and the cluster's CPUs bound the concurrency.")
    print(f"RSS: peak resident MiB, imports included (torch alone is ~470 MiB, mostly shared library pages);"
          f" the largest Ray worker idled at {idle_worker:.0f} MiB after warm-up, so ingest added at most "
          f"{max(rss[n][1] for n in names) - idle_worker:.0f} MiB.")
    print("\nrerun: .venv/bin/python benchmarks/ingest.py " + " ".join(
        [f"--subjects {args.subjects}", f"--shape {' '.join(map(str, args.shape))}", f"--slices {args.slices}",
         f"--size {args.size}", f"--repeat {args.repeat}"]))


if __name__ == "__main__":
    main()
