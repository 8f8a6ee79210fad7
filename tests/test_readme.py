"""The README's Monte Carlo example runs as written (on a small phantom, fewer photons)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ctdose.io.egsphant import write_egsphant
from ctdose.io.threeddose import read_3ddose

README = Path(__file__).resolve().parents[1] / "README.md"


def _engine_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("### The Monte Carlo engine on its own", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_mc_example_runs_and_writes_a_3ddose(tmp_path, monkeypatch):
    z, y, x = np.meshgrid(np.arange(12), np.arange(20), np.arange(24), indexing="ij")
    mi = np.where(((x - 12) / 10.0) ** 2 + ((y - 10) / 8.0) ** 2 <= 1, 1, 0).astype(np.uint8)
    mi[np.hypot(x - 12, y - 14) < 2] = 2
    rho = np.array([0.0012, 1.03, 1.19], np.float32)[mi]
    (tmp_path / "data").mkdir()
    write_egsphant(tmp_path / "data" / "my_phantom.egsphant", mi, rho,
                   ["AIR521ICRU", "ICRUTISSUE521ICRU", "PMMA521ICRU"], (10.0, 10.0, 10.0), (-55.0, -95.0, -115.0))
    code = _engine_example()
    assert "1_000_000" in code and "workers=2" in code
    code = code.replace("1_000_000", "20_000").replace("workers=2", "workers=1")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "__main__"})
    out = read_3ddose(tmp_path / "data" / "my_phantom.3ddose")
    assert out.dose.shape == mi.shape
    body = mi > 0
    # Gy for 100 mAs per rotation: a few mGy in the body (CTDIw of the body phantom ~7.6 mGy / 100 mAs)
    assert 1e-3 < float(out.dose[body].mean()) < 3e-2
    assert np.all(out.rel_uncertainty[body] < 1.0)
