"""Ingest throughput: the Ray Data pipeline (1 and 2 workers) vs a bare nibabel load-and-slice loop.

    .venv/bin/python benchmarks/ingest.py [--subjects 12] [--shape 96 96 48] [--slices 32] [--size 64]

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
    """The pipeline's task function (``shards._ingest_group``: ``_ingest_one`` per subject), plus a
    line per subject (pid, start, end, rows) for the ramp-up and steady-state figures. Defined in
    this script, so Ray ships it by value."""
    import json as _json

    from bidpm.data import shards

    out, lines = [], []
    for task in _json.loads(item["tasks"]):
        t = time.time()
        out.append(shards._ingest_one(task, settings, version_dir))
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


def same_work_loop(root: str, k: int, size: int, out_dir: str, out: mp.Queue) -> None:
    """One core, no Ray: the pipeline's own per-subject work (``slice_table`` + ``write_table``) in a
    plain loop. Separates what the pipeline does beyond load-and-slice from what Ray adds."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    import torch

    torch.set_num_threads(1)  # one core, as a Ray task with num_cpus=1 gets (Ray sets OMP_NUM_THREADS=1)
    from bidpm.config import load_config
    from bidpm.data.layouts import discover
    from bidpm.data.volume import SliceSettings, slice_table, write_table

    cfg = load_config(None, [f"data.num_slices={k}", f"data.image_size=[{size},{size}]"])
    s = SliceSettings.from_data_config(cfg.data)
    subjects = discover("brats", root, "t1", "t2", None)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--shape", type=int, nargs=3, default=[96, 96, 48])
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bidpm-bench-"))
    from bidpm.data.phantom import write_phantoms

    t = time.perf_counter()
    root = write_phantoms(work / "phantoms", args.subjects, args.shape, 0, "brats", "brain")
    print(f"phantoms: {args.subjects} subjects {args.shape} in {time.perf_counter() - t:.1f}s under {work}")
    vol_mib = np.prod(args.shape) * 4 / 2**20

    n_bare, t_bare, rss_bare = _in_fresh_process(bare_loop, str(root), args.slices, (0, 1), False)
    n_isal, t_isal, rss_isal = _in_fresh_process(bare_loop, str(root), args.slices, (0, 1), True)
    # The machine's own two-process ceiling: two bare loops at once, each on half the subjects.
    n_bare2, t_bare2, rss_bare2 = _in_fresh_processes(bare_loop, [(str(root), args.slices, (i, 2), False) for i in range(2)])
    n_same, t_same, rss_same = _in_fresh_process(same_work_loop, str(root), args.slices, args.size, str(work / "same_work"))

    import ray

    from bidpm.config import load_config
    from bidpm.data import prepare_shards

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    base = [f"output_dir={work}", "data.layout=phantom", f"data.root={root}", f"data.phantom.num_subjects={args.subjects}",
            f"data.phantom.shape={list(args.shape)}", f"data.num_slices={args.slices}", f"data.image_size=[{args.size},{args.size}]",
            "data.split.val_fraction=0.1", "data.split.test_fraction=0.1"]
    warm = work / "warm"
    prepare_shards(load_config(None, [f"output_dir={warm}", "data.phantom.num_subjects=3", "data.phantom.shape=[24,24,10]",
                                      "data.num_slices=4", "data.image_size=[16,16]", "data.num_workers=2"]))
    # The tiny run can finish on one worker; make sure both have imported the ingest code, since a
    # cold worker's first task pays ~1-2 s of imports (torch, pyarrow) that is a one-off per cluster.
    ray.data.from_items([{"i": i} for i in range(4)], override_num_blocks=4).map(
        _warm_worker, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=2)).take_all()
    with RssSampler() as idle:
        time.sleep(0.3)
    idle_worker = idle.worker
    rows = [("bare nibabel loop (1 core)", n_bare, t_bare, 1, rss_bare, 0.0),
            ("bare loop, ISA-L gzip (1 core)", n_isal, t_isal, 1, rss_isal, 0.0),
            ("bare loop, 2 processes at once", n_bare2, t_bare2, 2, rss_bare2, 0.0),
            ("pipeline work, no Ray (1 core)", n_same, t_same, 1, rss_same, 0.0)]
    from functools import partial

    from bidpm.data import shards

    real_group, ramps, steady = shards._ingest_group, {}, {}
    for workers in (1, 2):
        cfg = load_config(None, [*base, f"data.num_workers={workers}", f"data.shards_dir=shards_w{workers}"])
        log = work / f"tasks_w{workers}.log"
        shards._ingest_group = partial(_probed_group, log=str(log))  # the driver hands this to Ray Data
        with RssSampler() as rss:
            t0, t = time.time(), time.perf_counter()
            path = prepare_shards(cfg)
            dt = time.perf_counter() - t
        shards._ingest_group = real_group
        ramps[workers], steady[workers] = _timeline(log, t0, workers)
        import json

        n = sum(v["slices"] for v in json.loads(Path(path).read_text())["splits"].values())
        rows.append((f"ray data pipeline, {workers} worker(s)", n, dt, workers, rss.driver, rss.worker))
    ray.shutdown()

    bare_rate, same_rate = n_bare / t_bare, n_same / t_same
    print(f"\nvolume size: {vol_mib:.1f} MiB float32 per modality; {args.slices} slices/volume -> {args.size}x{args.size}")
    print(f"{'run':34s} {'slices':>7s} {'secs':>7s} {'slices/s':>9s} {'x bare':>7s} {'x bare/worker':>13s} "
          f"{'x no-Ray/worker':>15s} {'RSS MiB (proc | max worker)':>28s}")
    for name, n, dt, w, r1, r2 in rows:
        rate = n / dt
        print(f"{name:34s} {n:7d} {dt:7.2f} {rate:9.1f} {rate / bare_rate:7.2f} {rate / bare_rate / w:13.2f} "
              f"{rate / same_rate / w:15.2f} {r1:12.0f} | {r2:6.0f}")
    print("x no-Ray/worker: slices/s per worker over the same per-subject work in one plain process (what Ray adds).")
    print(f"bare loop, 2 processes at once: what this machine gives two busy processes "
          f"({n_bare2 / t_bare2 / bare_rate / 2:.2f}x the bare loop each); a 2-worker pipeline also shares the cores with its driver.")
    print(f"each worker's first subject began, after the call: 1 worker: {ramps[1]}; 2 workers: {ramps[2]}.\n"
          "  (Ray Data 2.60 learns the cluster's CPUs from its autoscaling coordinator asynchronously and refreshes its\n"
          "  limits once a second, so until then it runs one task at a time: a fixed cost per run, not per slice.)")
    print("steady state, while every worker was busy (subjects timed inside the tasks): "
          + "; ".join(f"{w} worker(s) {steady[w]:.1f} slices/s per worker = {steady[w] / bare_rate:.2f}x the bare loop" for w in (1, 2)))
    print(f"RSS: peak resident MiB, imports included (torch alone is ~470 MiB, mostly shared library pages);"
          f" the largest Ray worker idled at {idle_worker:.0f} MiB after warm-up, so ingest added at most "
          f"{max(r[5] for r in rows) - idle_worker:.0f} MiB.")
    print("\nrerun: .venv/bin/python benchmarks/ingest.py " + " ".join(
        [f"--subjects {args.subjects}", f"--shape {' '.join(map(str, args.shape))}", f"--slices {args.slices}", f"--size {args.size}"]))


if __name__ == "__main__":
    main()
