"""The Monte Carlo's central dose in water cylinders against AAPM Report 204's SSDE.

Usage::

    python benchmarks/bench_ssde.py          # 1e6 histories per cylinder, 5 diameters
    python benchmarks/bench_ssde.py --quick  # 1e5, 2 diameters

The scanner of the demo profile (spekpy 120 kVp, 7 mm Al, generic body bowtie, 40 mm
collimation). CTDIw simulated in the 32 cm PMMA phantom (:func:`ctdose.physics.ctdi.simulate_ctdi`)
is CTDIvol at pitch 1. Each water cylinder (600 mm long) gets a helical scan at pitch 1 over
the central 400 mm; the mean dose to water over its cross-section in the central table feed
(40 mm) is compared with SSDE = f(D_w) CTDIvol (:mod:`ctdose.ssde`,
:func:`ctdose.physics.ssde_check.cylinder_ssde_check`). A second table follows the 32 cm
cylinder's central dose with the scan length: the approach to the long-scan (equilibrium)
dose that CTDI100 falls short of.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _cli import quick_main  # noqa: E402

SCAN_LENGTHS_MM = (100.0, 200.0, 400.0, 560.0)


def run(quick: bool = False) -> list[dict]:
    from ctdose.config import load_profile
    from ctdose.physics.ctdi import simulate_ctdi
    from ctdose.physics.scanner import scanner_from_profile
    from ctdose.physics.ssde_check import cylinder_ssde_check

    cfg = load_profile("demo")
    scanner = scanner_from_profile(cfg)
    n = 100_000 if quick else 1_000_000
    diameters = (16.0, 32.0) if quick else (10.0, 16.0, 24.0, 32.0, 40.0)
    ctdi = simulate_ctdi(scanner, 10 * n, 16, seed=1)
    print(f"CTDIw {ctdi.ctdiw_mgy:.3f} +- {ctdi.ctdiw_sigma_mgy:.3f} mGy per 100 mAs (32 cm PMMA, {scanner.spectrum.description})")
    table = cylinder_ssde_check(scanner, ctdi.ctdiw_mgy, diameters, n_photons=n, seed=3)
    print(table.round(3).to_string(index=False))
    rows = [dict(benchmark="CTDIw, 32 cm PMMA phantom", value=round(ctdi.ctdiw_mgy, 3), unit="mGy per 100 mAs",
                 note=f"+- {ctdi.ctdiw_sigma_mgy:.3f}; CTDIvol at pitch 1")]
    for r in table.itertuples():
        rows.append(dict(benchmark=f"water cylinder {r.diameter_cm:g} cm (D_w {r.d_w_cm:.2f} cm): MC central dose / SSDE",
                         value=round(r.ratio, 3), unit="ratio",
                         note=f"MC {r.mc_mgy:.3f} +- {r.mc_sigma_mgy:.3f}, SSDE {r.ssde_mgy:.3f} mGy per 100 mAs "
                              f"(f {r.f:.3f}); {n:.0e} histories"))
    if not quick:
        for scan_mm in SCAN_LENGTHS_MM:
            r = cylinder_ssde_check(scanner, ctdi.ctdiw_mgy, (32.0,), n_photons=n, scan_mm=scan_mm, seed=4).iloc[0]
            print(f"32 cm cylinder, {scan_mm:.0f} mm scan: central dose {r.mc_mgy:.3f} +- {r.mc_sigma_mgy:.3f} "
                  f"mGy per 100 mAs, / CTDIw {r.mc_mgy / ctdi.ctdiw_mgy:.3f}")
            rows.append(dict(benchmark=f"water cylinder 32 cm, {scan_mm:.0f} mm helical scan: central dose / CTDIw",
                             value=round(r.mc_mgy / ctdi.ctdiw_mgy, 3), unit="ratio",
                             note=f"AAPM 204 f(32 cm) = {r.f:.3f}"))
    return rows


if __name__ == "__main__":
    sys.exit(quick_main(run, __doc__))
