"""Where a command's CPU goes, by process kind: every process started while it runs (Ray workers by their
title - ``ray::RayTrainWorker``, ``ray::TrainController``, a task's name - drivers and servers by command),
its CPU seconds, per process, and its share of the total.

Why: on a small CPU machine a Ray Train ``fit()`` of a tiny model is mostly process start-up (each actor
or task worker imports Ray, torch, MLflow), and a test suite of end-to-end jobs is CPU-bound on it; this
says which kind of process to spend fewer of. Processes are sampled every ``--every`` seconds (psutil);
one that starts and ends between two samples is missed, so shares of short tasks are lower bounds. It
counts every process started on the machine meanwhile (``ray start`` daemonises, so Ray's workers are not
the command's descendants): measure on an otherwise idle machine.

    .venv/bin/python benchmarks/process_cpu.py -- .venv/bin/python -m pytest tests/integration/test_study_job.py -q
    .venv/bin/python benchmarks/process_cpu.py --top 25 -- .venv/bin/python jobs/study.py --config configs/study_phantom_cpu.yaml
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time

import psutil


def kind(cmdline: list[str], name: str) -> str:
    """A process's kind: its Ray title up to the method (``ray::TrainController.run`` -> ``ray::TrainController``),
    else its command with temporary paths and numbers folded, so the same job counts as one kind."""
    text = " ".join(cmdline) or f"[{name}]"
    if text.startswith("ray::"):
        return text.split()[0].split(".")[0]
    text = re.sub(r"/tmp/\S+", "<tmp>", text)
    return re.sub(r"\d{3,}", "N", text)[:70]


def better(old: str | None, new: str) -> str:
    """Keep the most telling kind seen for one process (a Ray worker is ``ray::IDLE`` before its actor)."""
    if old is None or (old.startswith("[") and not new.startswith("[")):
        return new
    if old == "ray::IDLE" and new.startswith("ray::") and new != "ray::IDLE":
        return new
    return old


def sample(cmd: list[str], every: float) -> tuple[dict[tuple[int, float], tuple[str, float]], float, int]:
    """Run ``cmd``; return {(pid, start time): (kind, CPU s)} of the processes started meanwhile, the wall
    seconds and its exit code."""
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    seen: dict[tuple[int, float], tuple[str, float]] = {}
    me = psutil.Process().pid
    while True:
        done = proc.poll() is not None
        for p in psutil.process_iter(["pid", "cmdline", "cpu_times", "create_time", "name"]):
            info = p.info
            if info["pid"] == me or info["create_time"] is None or info["create_time"] < t0 - 1 or info["cpu_times"] is None:
                continue
            key = (info["pid"], info["create_time"])
            k = better(seen.get(key, (None, 0.0))[0], kind(info["cmdline"] or [], info["name"] or "?"))
            seen[key] = (k, info["cpu_times"].user + info["cpu_times"].system)
        if done:
            return seen, time.time() - t0, proc.returncode
        time.sleep(every)


def table(seen: dict[tuple[int, float], tuple[str, float]], wall: float, top: int) -> str:
    by: dict[str, list[float]] = {}
    for k, cpu in seen.values():
        by.setdefault(k, []).append(cpu)
    total = sum(sum(v) for v in by.values()) or 1.0
    rows = sorted(by.items(), key=lambda kv: -sum(kv[1]))[:top]
    width = max([len(k) for k, _ in rows] + [4])
    lines = [f"{'kind':<{width}}  processes  CPU s  per process  share",
             f"{'-' * width}  ---------  -----  -----------  -----"]
    for k, v in rows:
        lines.append(f"{k:<{width}}  {len(v):>9}  {sum(v):>5.0f}  {sum(v) / len(v):>11.1f}  {100 * sum(v) / total:>4.0f}%")
    lines.append(f"total {total:.0f} CPU s in {wall:.0f} s of wall time: {total / wall:.2f} cores busy on average "
                 f"(this machine has {psutil.cpu_count()})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Put the command to measure after --.")
    ap.add_argument("--every", type=float, default=0.3, help="seconds between samples (default 0.3)")
    ap.add_argument("--top", type=int, default=20, help="kinds shown, by CPU seconds (default 20)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command: put it after --")
    seen, wall, rc = sample(cmd, args.every)
    print(table(seen, wall, args.top))
    print(f"command exit code {rc}; rerun: .venv/bin/python benchmarks/process_cpu.py -- {shlex.join(cmd)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
