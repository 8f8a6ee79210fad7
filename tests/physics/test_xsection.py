"""Tests of ctdose.physics.xsection against NIST reference data and the mixture rule."""

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.materials import custom_medium, get_medium
from ctdose.physics.xsection import (
    attenuation_table,
    default_energy_grid,
    form_factor_sq,
    incoherent_sf,
    mass_coefficients,
)

ENERGY_KEV = np.array([20.0, 30.0, 40.0, 60.0, 80.0, 100.0, 150.0])
# NIST XCOM / Hubbell & Seltzer tables (cm^2/g) at ENERGY_KEV
NIST_WATER_MU_EN = [0.5503, 0.1557, 0.06947, 0.03190, 0.02597, 0.02546, 0.02764]
NIST_WATER_MU = [0.8096, 0.3756, 0.2683, 0.2059, 0.1837, 0.1707, 0.1505]
# "Muscle, Skeletal (ICRU-44)" (same composition as ICRU 46 adult muscle)
NIST_MUSCLE_MU_EN = [0.5638, 0.1610, 0.07192, 0.03258, 0.02615, 0.02544, 0.02745]
# "Bone, Cortical (ICRU-44)" (same composition as ICRU 46 cortical bone)
NIST_BONE_MU_EN = [3.601, 1.070, 0.4507, 0.1400, 0.06896, 0.04585, 0.03183]


def test_water_mu_en_matches_nist_within_2_percent():
    en = mass_coefficients(get_medium("water"), ENERGY_KEV)["en"]
    np.testing.assert_allclose(en, NIST_WATER_MU_EN, rtol=0.02)


def test_water_total_attenuation_matches_nist():
    mu = mass_coefficients(get_medium("water"), ENERGY_KEV)["total"]
    np.testing.assert_allclose(mu, NIST_WATER_MU, rtol=0.01)


@pytest.mark.parametrize(
    "name, reference", [("soft_tissue", NIST_MUSCLE_MU_EN), ("muscle", NIST_MUSCLE_MU_EN), ("spine_bone", NIST_BONE_MU_EN)]
)
def test_tissue_mu_en_matches_nist_within_2_percent(name, reference):
    en = mass_coefficients(get_medium(name), ENERGY_KEV)["en"]
    np.testing.assert_allclose(en, reference, rtol=0.02)


def test_mixture_rule_from_single_elements():
    water = get_medium("water")
    h = custom_medium("H", 1.0, {1: 1.0})
    o = custom_medium("O", 1.0, {8: 1.0})
    table = attenuation_table([water, h, o], ENERGY_KEV)
    w_h, w_o = water.mass_fractions[1], water.mass_fractions[8]
    for q in ("photo_cm2_g", "incoh_cm2_g", "coh_cm2_g", "total_cm2_g", "en_cm2_g"):
        arr = getattr(table, q)
        np.testing.assert_allclose(arr[0], w_h * arr[1] + w_o * arr[2], rtol=1e-12)


def test_table_shapes_and_consistency():
    media = [get_medium("water"), get_medium("lung"), get_medium("rib_bone")]
    table = attenuation_table(media)
    e = default_energy_grid()
    assert e[0] == 1.0 and e[-1] == 150.0 and np.allclose(np.diff(e), 0.25)
    assert table.total_cm2_g.shape == (3, e.size)
    np.testing.assert_allclose(
        table.total_cm2_g, table.photo_cm2_g + table.incoh_cm2_g + table.coh_cm2_g, rtol=1e-12
    )
    assert np.all(table.en_cm2_g < table.total_cm2_g) and np.all(table.en_cm2_g > 0)
    np.testing.assert_allclose(table.mu_total_per_cm()[1], table.total_cm2_g[1] * 0.27)
    # lung and water: nearly the same mass coefficients (similar composition)
    np.testing.assert_allclose(table.total_cm2_g[1, 200:], table.total_cm2_g[0, 200:], rtol=0.03)


def test_log_interp_between_grid_points():
    table = attenuation_table([get_medium("water")])
    direct = mass_coefficients(get_medium("water"), np.array([55.1]))["total"]
    assert table.interp("water", 55.1) == pytest.approx(direct[0], rel=1e-4)


def test_photoelectric_fraction_free_of_fluorescence_for_hydrogen():
    # H has no fluorescence: its photo-absorption energy is fully absorbed
    h = custom_medium("H", 1.0, {1: 1.0})
    c = mass_coefficients(h, ENERGY_KEV)
    assert np.all(c["en"] > c["photo"])


def test_form_factor_and_sf_limits():
    water = get_medium("water")
    z_over_a = sum(w * z / a for z, w, a in [(1, water.mass_fractions[1], 1.008), (8, water.mass_fractions[8], 15.999)])
    z2_over_a = sum(w * z * z / a for z, w, a in [(1, water.mass_fractions[1], 1.008), (8, water.mass_fractions[8], 15.999)])
    assert form_factor_sq(water, np.array([0.0]))[0] == pytest.approx(z2_over_a, rel=1e-2)
    assert incoherent_sf(water, np.array([40.0]))[0] == pytest.approx(z_over_a, rel=1e-2)
    assert incoherent_sf(water, np.array([0.0]))[0] == pytest.approx(0.0, abs=1e-6)
    x = np.linspace(0, 5, 50)
    assert np.all(np.diff(form_factor_sq(water, x)) <= 1e-12)
    assert np.all(np.diff(incoherent_sf(water, x)) >= -1e-12)


def test_bad_energy_and_media():
    water = get_medium("water")
    with pytest.raises(InputError):
        mass_coefficients(water, np.array([0.5]))
    with pytest.raises(InputError):
        mass_coefficients(water, np.array([np.nan]))
    with pytest.raises(InputError):
        attenuation_table([])
    with pytest.raises(InputError):
        form_factor_sq(water, np.array([-1.0]))
