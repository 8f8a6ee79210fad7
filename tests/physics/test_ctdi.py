"""CTDI phantom simulation: geometry and the expected centre/periphery pattern."""

from __future__ import annotations

import numpy as np

from ctdose.physics.ctdi import HOLE_DIAMETER_MM, ctdi_phantom, simulate_ctdi


def test_phantom_holes_and_mass():
    geo, holes = ctdi_phantom(pixel_mm=2.0)
    assert set(holes) == {"center", "p0", "p90", "p180", "p270"}
    area = holes["center"][holes["center"].any(axis=(1, 2))][0].sum() * 4.0  # mm^2 per slice
    assert abs(area - np.pi * (HOLE_DIAMETER_MM / 2) ** 2) < 0.15 * area
    assert np.all(np.asarray(geo.density_g_cm3)[holes["p90"]] < 0.01)  # air in the holes
    # 100 mm chamber: 20 slices of 5 mm
    assert holes["center"].any(axis=(1, 2)).sum() == 20


def test_ctdi_centre_below_periphery_and_periphery_symmetric():
    from ctdose.physics.scanner import CTScanner, generic_body_bowtie
    from ctdose.physics.spectrum import spekpy_spectrum

    scanner = CTScanner(spekpy_spectrum(120.0), bowtie=generic_body_bowtie())
    r = simulate_ctdi(scanner, n_photons=60_000, projections_per_rotation=8, pixel_mm=4.0, seed=2)
    per = np.array(r.ctdi100_periphery_mgy)
    print(f"CTDI100 centre {r.ctdi100_center_mgy:.2f}, periphery {np.round(per, 2)}, CTDIw {r.ctdiw_mgy:.2f} "
          f"+- {r.ctdiw_sigma_mgy:.2f} mGy/100 mAs")
    assert r.ctdi100_center_mgy < 0.8 * per.min()
    assert per.std() / per.mean() < 0.15
    assert 1.0 < r.ctdiw_mgy < 40.0
