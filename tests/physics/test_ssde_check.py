"""The Monte Carlo's central dose in water cylinders against AAPM Report 204's SSDE."""

from __future__ import annotations

import numpy as np

from ctdose.physics.ctdi import simulate_ctdi
from ctdose.physics.scanner import CTScanner, generic_body_bowtie
from ctdose.physics.spectrum import spekpy_spectrum
from ctdose.physics.ssde_check import cylinder_ssde_check, water_cylinder
from ctdose.ssde import ssde_conversion_factor

#: MC over SSDE allowed per diameter: the generic scanner is none of the report's, and the
#: report fits four groups' dosimetry (chambers in PMMA and anthropomorphic phantoms, Monte
#: Carlo in water and patient models); full runs give 1.07-1.23 (``benchmarks/bench_ssde.py``).
RATIO_TOLERANCE = 0.30
#: The size dependence (16 cm over 32 cm) against the fit's f(16) / f(32) = 1.80.
TREND_TOLERANCE = 0.15


def test_water_cylinder_is_centred_with_the_mid_plane_on_a_voxel_face():
    geo, mask = water_cylinder(160.0, length_mm=200.0, pixel_mm=4.0, slice_mm=10.0)
    z = geo.origin_mm[0] + np.arange(mask.shape[0]) * 10.0
    assert mask.shape[0] == 20 and np.isclose(z[:10].max(), -5.0) and np.isclose(z.mean(), 0.0)
    area_mm2 = mask[0].sum() * 16.0
    assert abs(area_mm2 / (np.pi * 80.0**2) - 1) < 0.03


def test_central_dose_follows_the_aapm_204_size_dependence():
    scanner = CTScanner(spekpy_spectrum(120.0), bowtie=generic_body_bowtie())  # the demo profile's
    ctdi = simulate_ctdi(scanner, n_photons=200_000, projections_per_rotation=8, pixel_mm=4.0, seed=5)
    table = cylinder_ssde_check(scanner, ctdi.ctdiw_mgy, (16.0, 32.0), n_photons=150_000, pixel_mm=10.0,
                                slice_mm=10.0, seed=5)
    print(f"CTDIw {ctdi.ctdiw_mgy:.2f} mGy/100 mAs\n" + table.round(3).to_string(index=False))
    assert np.all(np.abs(table["ratio"] - 1.0) < RATIO_TOLERANCE)
    assert np.all(table["mc_sigma_mgy"] < 0.02 * table["mc_mgy"])
    trend = table["mc_mgy"].iloc[0] / table["mc_mgy"].iloc[1]
    fit = ssde_conversion_factor(table["d_w_cm"].iloc[0]) / ssde_conversion_factor(table["d_w_cm"].iloc[1])
    print(f"16 cm over 32 cm: MC {trend:.3f}, AAPM 204 {fit:.3f}")
    assert abs(trend / fit - 1.0) < TREND_TOLERANCE
