"""`ray job submit` for real: a head on loopback (own port + temp dir), the tiny study submitted from
another working directory, status SUCCEEDED, and the MLflow store then holds everything.

The head (``procs.ray_head``) has its own temp dir and ports and is stopped by PID, never by `ray stop`,
which would take down other Ray sessions such as the suite's ``ray_session`` (see tests/procs.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from bidpm.config import load_config

import procs  # tests/procs.py
from procs import BIN, ray_env
from test_tune import check_store, write_tiny  # noqa: E402 - sibling module (rootdir-inserted path)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def head():
    """`ray start --head` on 127.0.0.1 with its own ports and temp dir (tests/procs.py); yields the job address."""
    with procs.ray_head("rjob", "--num-cpus=2", dashboard=True) as h:
        yield h["dashboard"]


def test_ray_job_submit_runs_the_study(tmp_path, head):
    cfg_path = write_tiny(tmp_path, tmp_path / "out")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    sub_id = f"bidpm-test-{int(time.time())}"
    runtime_env = '{"excludes": [".git", ".venv", "outputs", "**/__pycache__", "*.egg-info"]}'
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head, "--submission-id", sub_id,
           "--working-dir", str(REPO), "--runtime-env-json", runtime_env, "--",
           "python", "jobs/tune_steps.py", "--config", str(cfg_path)]
    t0 = time.monotonic()
    for _ in range(30):                 # right after `ray start` the dashboard agent may not be up yet
        out = subprocess.run(cmd, cwd=cwd, env=ray_env(), capture_output=True, text=True, timeout=1200)
        if "No available agent" not in out.stdout + out.stderr:
            break
        time.sleep(5)
    log = out.stdout[-4000:] + out.stderr[-2000:]
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", head, sub_id], cwd=cwd, env=ray_env(),
                            capture_output=True, text=True, timeout=60)
    text = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)     # the CLI colours its output
    assert re.search(rf"Job .{sub_id}. succeeded|Status for job .{sub_id}.: SUCCEEDED", text), text + log
    print(f"job finished in {time.monotonic() - t0:.0f} s")
    assert "mlflow ui --backend-store-uri" in out.stdout
    cfg = load_config(cfg_path)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    check_store(cfg, 2)
