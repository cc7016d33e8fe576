"""The `bidpm` console command from a built wheel, outside the checkout (no jobs/ folder, no runpy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_console_command_works_from_an_installed_wheel(tmp_path):
    wheels, target, src = tmp_path / "wheels", tmp_path / "site", tmp_path / "src"
    # build from a copy: setuptools leaves build/ next to the sources, and a stale build/lib would leak
    # deleted modules into later wheels of the checkout
    shutil.copytree(REPO / "platform", src / "platform", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(wheels)], check=True, cwd=tmp_path, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("bidpm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "bidpm/commands/evaluate.py" in names and not any(n.startswith("jobs/") for n in names)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}                # the wheel's copy, not the checkout's
    run = lambda *a: subprocess.run([str(target / "bin" / "bidpm"), *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=tmp_path, env=env, timeout=120)
    res = run("evaluate", "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: bidpm evaluate") and "--model-uri" in res.stdout and "Fig. 7" in res.stdout
    listing = run()
    assert listing.returncode == 0 and all(j in listing.stdout for j in ("tune_steps", "synthesize", "promote"))
    assert run("nosuchjob").returncode == 2
    where = subprocess.run([sys.executable, "-c", "import bidpm.commands.evaluate as m; print(m.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    assert where.stdout.strip().startswith(str(target))
