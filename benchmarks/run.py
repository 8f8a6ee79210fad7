"""Run the compendium's benchmarks and print one table of figures.

Every ``benchmarks/bench_*.py`` module exposes ``run(quick: bool) -> list[dict]``; each row has
at least ``benchmark``, ``value`` and ``unit`` (optionally ``goal`` and ``note``). This runner
adds the wall time and peak memory of each module and prints everything as a table; with
``--csv`` the rows also go to a file.

Usage::

    python benchmarks/run.py              # all benchmarks
    python benchmarks/run.py chain mc     # those whose file name contains 'chain' or 'mc'
    python benchmarks/run.py --quick      # reduced sizes (a quick check that they run)
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_rss_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="substrings of benchmark file names")
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    files = sorted(HERE.glob("bench_*.py"))
    if args.names:
        files = [f for f in files if any(n in f.stem for n in args.names)]
    rows = []
    for path in files:
        module = _load(path)
        if not hasattr(module, "run"):
            continue
        print(f"running {path.name} ...", file=sys.stderr, flush=True)
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            result = module.run(quick=args.quick)
        except Exception as exc:  # report and go on with the others
            result = [{"benchmark": path.stem, "value": float("nan"), "unit": "", "note": f"failed: {exc}"}]
        wall = time.perf_counter() - t0
        _, peak_py = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        for row in result:
            rows.append({"module": path.stem, **row})
        rows.append({"module": path.stem, "benchmark": "module wall time", "value": round(wall, 2), "unit": "s",
                     "note": f"peak RSS so far {_peak_rss_mb():.0f} MB, python heap peak {peak_py / 2**20:.0f} MB"})
    if not rows:
        print("no benchmarks matched", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows)
    columns = [c for c in ["module", "benchmark", "value", "unit", "goal", "note"] if c in table]
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(table[columns].to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
