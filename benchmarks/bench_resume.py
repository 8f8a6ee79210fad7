"""What it costs a re-run to tell what it has to do: source-file digests and ``ctdose status``.

A re-run digests every imported case's files (clinical CTs, XCAT phantoms, EGSnrc results) to
tell whether they changed (:func:`ctdose.provenance.files_digest`). Files whose size and time are
those of the record kept with the case are not read again; files copied or touched with the same
bytes are read once, after which the run stores their new record
(:func:`ctdose.anatomy.resume.import_cases`). This prints, for a case folder of ``--mb`` MB in
three files:

* the digest without a record (every byte read: the first import, and every run before
  ctdose kept records),
* with the record (nothing read),
* after the files were touched: once with the old record (read again), then with the
  refreshed one (nothing read),

and the time :func:`ctdose.status.chain_status` takes for the paper profile on a run directory
not started (316 cases sampled, every item listed).

``python benchmarks/bench_resume.py [--mb 600]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick: bool = False, mb: float | None = None) -> list[dict]:
    """The rows for ``benchmarks/run.py`` (``quick``: a 60 MB folder instead of 600 MB)."""
    from ctdose.config import load_profile
    from ctdose.provenance import files_digest
    from ctdose.status import chain_status

    mb = mb if mb is not None else 60.0 if quick else 600.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "case"
        folder.mkdir()
        rng = np.random.default_rng(0)
        sizes = {"ct.nii.gz": 0.8, "seg.nii.gz": 0.19, "meta.json": 0.01}
        for name, share in sizes.items():
            (folder / name).write_bytes(rng.bytes(int(mb * share * 2**20)))
        files = sorted(folder.iterdir())
        t_full, (sha, record) = _timed(lambda: files_digest(files, folder))
        t_rec, (sha_rec, _) = _timed(lambda: files_digest(files, folder, record))
        for f in files:  # copied or touched: same bytes, new times
            st = f.stat()
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        t0 = time.perf_counter()
        sha_touched, refreshed = files_digest(files, folder, record)
        t_touched = time.perf_counter() - t0
        t_next, (sha_next, _) = _timed(lambda: files_digest(files, folder, refreshed))
        assert sha == sha_rec == sha_touched == sha_next
        rows += [
            {"benchmark": f"case folder digest, {mb:.0f} MB, no record (all read)", "value": round(t_full, 3),
             "unit": "s"},
            {"benchmark": "same, with the record (nothing read)", "value": round(t_rec * 1e3, 3), "unit": "ms"},
            {"benchmark": "files touched: first run (read again)", "value": round(t_touched, 3), "unit": "s"},
            {"benchmark": "files touched: next run (refreshed record, nothing read)", "value": round(t_next * 1e3, 3),
             "unit": "ms"},
        ]
        t_status, table = _timed(lambda: chain_status(load_profile("paper"), Path(tmp) / "paper_run"), repeat=1)
        rows.append({"benchmark": f"ctdose status, paper profile, run not started ({len(table)} items)",
                     "value": round(t_status, 2), "unit": "s"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=600.0, help="size of the case folder in MB (default 600)")
    args = parser.parse_args()
    for row in run(mb=args.mb):
        print(f"{row['benchmark']:<70} {row['value']:>10} {row['unit']}")


if __name__ == "__main__":
    main()
