"""Wall time and peak memory of the whole notebook chain (``ctdose run``).

``python benchmarks/bench_chain.py`` times the smoke chain (goal: under 3 minutes on 2 cores);
``python benchmarks/bench_chain.py demo`` times the demo chain (goal: under 20 minutes and
6 GB). Peak memory is the largest resident set of the chain's processes (the kernels).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS_S = {"smoke": 180.0, "demo": 1200.0}


def time_chain(profile: str, out: Path, figures: Path) -> dict:
    cmd = [sys.executable, "-m", "ctdose", "run", "--profile", profile, "--out", str(out),
           "--figures-dir", str(figures), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "chain failed")
    return {"wall_s": wall, "peak_mb": peak_mb}


def run(quick: bool = False, profile: str = "smoke") -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "figs").mkdir()
        res = time_chain(profile, tmp / "run", tmp / "figs")
    goal = GOALS_S.get(profile)
    return [
        {"benchmark": f"{profile} chain wall time (ctdose run)", "value": round(res["wall_s"], 1), "unit": "s",
         "goal": f"< {goal:.0f} s" if goal else ""},
        {"benchmark": f"{profile} chain peak memory", "value": round(res["peak_mb"]), "unit": "MB",
         "goal": "< 6000 MB" if profile == "demo" else ""},
    ]


if __name__ == "__main__":
    profile = sys.argv[1] if len(sys.argv) > 1 else "smoke"
    for row in run(profile=profile):
        print(f"{row['benchmark']:45s} {row['value']:>10} {row['unit']:4s} {row.get('goal', '')}")
