"""CTDI phantom simulation: geometry and the expected centre/periphery pattern."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.physics.ctdi import HOLE_DIAMETER_MM, ctdi_phantom, ctdi_survey, simulate_ctdi


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


def test_continuous_rotation_removes_the_projection_pattern():
    # two point projections (0 and 180 degrees) dose the holes facing them far more than the
    # side holes; the same two positions with the tube emitting all round give four equal
    # holes, and the same readings as 24 point projections (an independent discretisation)
    from ctdose.physics.scanner import CTScanner, generic_body_bowtie
    from ctdose.physics.spectrum import spekpy_spectrum

    scanner = CTScanner(spekpy_spectrum(120.0), bowtie=generic_body_bowtie())
    kw = dict(n_photons=100_000, pixel_mm=4.0, seed=4)
    two = simulate_ctdi(scanner, projections_per_rotation=2, rotation="discrete", **kw)
    cont = simulate_ctdi(scanner, projections_per_rotation=2, rotation="continuous", **kw)
    many = simulate_ctdi(scanner, projections_per_rotation=24, rotation="discrete", start_angle_deg=7.5, **kw)
    p2, pc, pm = (np.array(r.ctdi100_periphery_mgy) for r in (two, cont, many))
    sc, sm = np.array(cont.ctdi100_periphery_sigma_mgy), np.array(many.ctdi100_periphery_sigma_mgy)
    print(f"periphery (0, 90, 180, 270 deg) mGy/100 mAs: 2 point projections {np.round(p2, 2)}, "
          f"continuous {np.round(pc, 2)} +- {np.round(sc, 2)}, 24 point projections {np.round(pm, 2)}")
    assert (p2[0] + p2[2]) / (p2[1] + p2[3]) > 1.3
    assert np.all(np.abs(pc - pc.mean()) < 4 * sc)
    assert np.all(np.abs(pc - pm) < 4 * np.hypot(sc, sm))
    assert abs(cont.ctdi100_center_mgy - many.ctdi100_center_mgy) < 4 * np.hypot(
        cont.ctdi100_center_sigma_mgy, many.ctdi100_center_sigma_mgy)


def test_survey_table_reads_with_its_source_and_refuses_an_unknown_phantom():
    body, head = ctdi_survey("body"), ctdi_survey("head")
    assert (body.kvp, body.mean_mgy, body.sd_mgy) == (120.0, 7.8, 2.2)
    assert head.mean_mgy > 2 * body.mean_mgy  # the smaller phantom attenuates less
    assert "ImPACT" in body.source and "43" in body.source
    assert math.isclose(body.at_kvp(140.0)[0] / body.at_kvp(80.0)[0], (140 / 80) ** 2.6)
    assert math.isclose(body.at_kvp(100.0)[1] / body.at_kvp(100.0)[0], 2.2 / 7.8)
    with pytest.raises(InputError, match=r"ctdi_body_survey\.csv: no phantom 'chest' \(has head, body\)"):
        ctdi_survey("chest")


def test_ctdiw_within_the_clinical_survey_and_following_its_kv_power_law():
    # the generic scanner (spekpy spectrum, generic bowtie) is not any surveyed scanner, so its
    # CTDIw at 120 kV must lie within the survey's spread (mean +- 2 sd over 43 scanners), and
    # its rise from 80 to 140 kV must follow the survey's power law kV^2.6 within +- 0.4 in the
    # exponent (+- 25 % in the ratio): a spectrum whose photons per mAs did not grow with kV,
    # or a wrong kerma scale, fails
    from ctdose.physics.scanner import CTScanner, generic_body_bowtie
    from ctdose.physics.spectrum import spekpy_spectrum

    survey = ctdi_survey("body")
    ctdiw = {}
    for kvp in (80.0, 120.0, 140.0):
        scanner = CTScanner(spekpy_spectrum(kvp), bowtie=generic_body_bowtie())
        r = simulate_ctdi(scanner, n_photons=100_000, projections_per_rotation=8, pixel_mm=4.0, seed=2)
        ctdiw[kvp] = (r.ctdiw_mgy, r.ctdiw_sigma_mgy)
    exponent = math.log(ctdiw[140.0][0] / ctdiw[80.0][0]) / math.log(140.0 / 80.0)
    print("CTDIw mGy/100 mAs: " + ", ".join(f"{k:.0f} kV {v:.2f} +- {s:.2f}" for k, (v, s) in ctdiw.items())
          + f"; survey at 120 kV {survey.mean_mgy} +- {survey.sd_mgy}; kV exponent {exponent:.2f} "
          f"(survey {survey.kv_exponent})")
    assert abs(ctdiw[120.0][0] - survey.mean_mgy) < 2 * survey.sd_mgy
    assert abs(exponent - survey.kv_exponent) < 0.4
