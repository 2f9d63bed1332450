"""benchmarks/gpu_check.py runs to completion on the CPU in --smoke mode (tiny shape), so
the one command a GPU machine runs is tested where there is no GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_on_cpu():
    script = ROOT / "benchmarks" / "gpu_check.py"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = done.stdout
    for needle in ("(a) plain fwd+bwd", "(b) less_lab", "(c) reference", "(b)/(a) >= 0.8"):
        assert needle in out, out
