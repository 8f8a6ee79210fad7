"""Size-specific dose estimates (AAPM Reports 204 and 220): water-equivalent diameter,
conversion factor, effective energy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.materials import get_medium
from ctdose.physics.mc import VoxelGeometry
from ctdose.physics.spectrum import Spectrum, spekpy_spectrum
from ctdose.ssde import (
    effective_energy_kev,
    relative_attenuation,
    size_specific_dose,
    ssde_coefficients,
    ssde_conversion_factor,
    water_equivalent_diameter_cm,
)


def _ellipse(a_mm: float, b_mm: float, medium: str = "water", density: float | None = None, pixel_mm: float = 0.5):
    """An elliptical slab (semi-axes a along x, b along y) of ``medium`` in air, 3 slices."""
    n = 2 * int(math.ceil(max(a_mm, b_mm) / pixel_mm)) + 4
    c = (np.arange(n) - (n - 1) / 2) * pixel_mm
    yy, xx = np.meshgrid(c, c, indexing="ij")
    inside = (xx / a_mm) ** 2 + (yy / b_mm) ** 2 <= 1.0
    m = get_medium(medium)
    rho = np.where(inside, m.density_g_cm3 if density is None else density, get_medium("air").density_g_cm3)
    mi = np.broadcast_to(inside, (3, n, n)).astype(np.uint8)
    return VoxelGeometry(mi, np.broadcast_to(rho, (3, n, n)).astype(np.float32), [get_medium("air"), m],
                         (5.0, pixel_mm, pixel_mm), (0.0, c[0], c[0]))


def test_water_equivalent_diameter_of_water_shapes_is_their_area_equivalent_diameter():
    # a water cylinder's D_w is its diameter; an ellipse's is 2 sqrt(a b) (area pi a b);
    # the air around them does not count
    for a, b in ((100.0, 100.0), (160.0, 110.0)):
        d_w = water_equivalent_diameter_cm(_ellipse(a, b), 60.0)
        print(f"water ellipse {2 * a:.0f} x {2 * b:.0f} mm: D_w {np.round(d_w, 3)} cm, exact {0.2 * math.sqrt(a * b):.3f}")
        assert d_w.shape == (3,)
        assert np.allclose(d_w, 0.2 * math.sqrt(a * b), rtol=2e-3)


def test_water_equivalent_diameter_scales_with_the_square_root_of_the_attenuation():
    # water at a quarter of its density attenuates a quarter as much: D_w halves; lung
    # (0.26 g/cm^3 soft tissue) gives about half its geometric diameter
    full = water_equivalent_diameter_cm(_ellipse(120.0, 120.0), 60.0)[0]
    quarter = water_equivalent_diameter_cm(_ellipse(120.0, 120.0, density=0.25), 60.0)[0]
    lung = water_equivalent_diameter_cm(_ellipse(120.0, 120.0, "lung"), 60.0)[0]
    print(f"D_w: water {full:.3f}, quarter density {quarter:.3f}, lung {lung:.3f} cm")
    assert quarter == pytest.approx(full / 2, rel=1e-4)
    assert 0.45 * full < lung < 0.56 * full


def test_relative_attenuation_of_water_is_one_and_of_bone_follows_the_energy():
    geo = VoxelGeometry(np.array([[[0, 1, 2]]], np.uint8), np.array([[[1.0, 1.85, 0.0012]]], np.float32),
                        [get_medium("water"), get_medium("rib_bone"), get_medium("air")], (1.0, 1.0, 1.0),
                        (0.0, 0.0, 0.0))
    r50, r100 = relative_attenuation(geo, 50.0)[0, 0], relative_attenuation(geo, 100.0)[0, 0]
    print(f"mu/mu_w: bone {r50[1]:.3f} at 50 keV, {r100[1]:.3f} at 100 keV; air {r50[2]:.5f}")
    assert r50[0] == pytest.approx(1.0) and r100[0] == pytest.approx(1.0)
    assert r50[1] > r100[1] > 1.5  # bone's photoelectric excess falls with energy
    assert r50[2] == pytest.approx(0.0012 / 1.0, rel=0.1)  # air: about its density ratio


def test_conversion_factor_is_the_report_fit_within_its_range():
    c = ssde_coefficients("body")
    assert (c.a, c.b_per_cm, c.d_min_cm, c.d_max_cm) == (3.704369, 0.03671937, 8.0, 45.0)
    assert "Report No. 204" in c.source
    d = np.array([8.0, 20.0, 32.0, 45.0])
    assert np.allclose(ssde_conversion_factor(d), 3.704369 * np.exp(-0.03671937 * d))
    # a factor of 2 in CTDIvol per 18.9 cm of water (ln 2 / b)
    assert ssde_conversion_factor(10.0) / ssde_conversion_factor(10.0 + math.log(2) / c.b_per_cm) == pytest.approx(2.0)
    assert ssde_conversion_factor(16.0, "head") == pytest.approx(1.874799 * math.exp(-0.03871313 * 16.0))
    assert size_specific_dose(10.0, 32.0) == pytest.approx(10.0 * ssde_conversion_factor(32.0))
    with pytest.raises(InputError, match=r"diameter\(s\) 50\.0 cm outside AAPM Report 204's range 8-45 cm"):
        ssde_conversion_factor(50.0)
    assert ssde_conversion_factor(50.0, extrapolate=True) < ssde_conversion_factor(45.0)
    with pytest.raises(InputError, match="finite and > 0"):
        ssde_conversion_factor(float("nan"))
    with pytest.raises(InputError, match=r"aapm204_ssde\.csv: no phantom 'chest' \(has body, head\)"):
        ssde_coefficients("chest")


def test_effective_energy_of_a_monoenergetic_beam_is_its_energy():
    for e in (40.0, 60.0, 90.0):
        mono = Spectrum(np.array([e]), np.array([1.0]), "mono")
        assert effective_energy_kev(mono) == pytest.approx(e, abs=0.05)


def test_effective_energy_of_a_ct_beam_rises_with_filtration():
    soft, hard = spekpy_spectrum(120.0, 12.0, 3.0), spekpy_spectrum(120.0, 12.0, 9.0)
    e_soft, e_hard = effective_energy_kev(soft), effective_energy_kev(hard)
    print(f"120 kVp effective energy: {e_soft:.1f} keV (3 mm Al), {e_hard:.1f} keV (9 mm Al)")
    assert 35.0 < e_soft < e_hard < soft.mean_energy_kev + 5.0 < 75.0
