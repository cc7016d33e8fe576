"""The toy benchmark script runs end to end and writes what it promises (a smoke run, not its figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_toy_benchmark_smoke(tmp_path: Path):
    out_json, out_png = tmp_path / "toy.json", tmp_path / "toy.png"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "toy_gaussians.py"), "--iters", "5", "--methods", "bidpm,rf",
         "--json", str(out_json), "--plot", str(out_png)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "toy_gaussians.py" in proc.stdout  # prints the rerun command
    data = json.loads(out_json.read_text())
    text = json.dumps(data)
    for key in ("acc_fwd", "acc_bwd", "sw_fwd"):
        assert key in text
    assert out_png.stat().st_size > 1000 and out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
