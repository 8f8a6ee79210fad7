"""Angular tube-current modulation: the table's normalisation and interpolation, the attenuation
model against the exact chords of a water ellipse, and the CT source's tube positions drawn by
the modulated load at the same total mAs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctdose.errors import InputError
from ctdose.materials import get_medium
from ctdose.physics.angular_modulation import (
    AngularModulation,
    angular_modulation_from_geometry,
    read_angular_modulation_csv,
)
from ctdose.physics.mc import VoxelGeometry
from ctdose.physics.scanner import CTScanner, Protocol, generic_body_bowtie
from ctdose.physics.sources import CTSource
from ctdose.physics.spectrum import spekpy_spectrum
from ctdose.physics.xsection import mass_coefficients


def test_rows_have_mean_one_and_the_angle_is_periodic():
    m = AngularModulation([0.0, 10.0], [[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 2.0, 4.0]], "table")
    np.testing.assert_allclose(m.factor.mean(axis=1), 1.0)
    np.testing.assert_allclose(m.factor[1], [1.0, 0.0, 1.0, 2.0])
    quarter = math.pi / 2
    # between angles, periodic past 2 pi, between z rows, constant beyond the ends
    assert float(m(np.array(3.5 * quarter), np.array(10.0))) == pytest.approx(1.5)
    assert float(m(np.array(4.0 * quarter + 0.5 * quarter), np.array(10.0))) == pytest.approx(0.5)
    assert float(m(np.array(-0.5 * quarter), np.array(10.0))) == pytest.approx(1.5)
    assert float(m(np.array(quarter), np.array(5.0))) == pytest.approx(0.5)
    assert float(m(np.array(quarter), np.array(99.0))) == pytest.approx(0.0)
    assert float(m(np.array(quarter), np.array(-99.0))) == pytest.approx(1.0)


@pytest.mark.parametrize("z, factor, match", [
    ([0.0], [[1.0]], "n_angles >= 2"),
    ([0.0, 1.0], [[1.0, 2.0]], "one row per z"),
    ([1.0, 0.0], [[1.0, 2.0], [1.0, 2.0]], "strictly increasing"),
    ([0.0], [[1.0, -1.0]], ">= 0"),
    ([0.0], [[0.0, 0.0]], "positive one"),
    ([0.0], [[1.0, float("nan")]], "finite"),
])
def test_a_bad_table_is_named(z, factor, match):
    with pytest.raises(InputError, match=match):
        AngularModulation(z, factor, "my_scanner_log.csv")


def _ellipse(a_mm: float, b_mm: float, spacing_mm: float = 1.0):
    """One slice of water: an ellipse with semi-axes a (x) and b (y) centred on the isocentre."""
    n_x, n_y = int(2 * a_mm / spacing_mm) + 8, int(2 * b_mm / spacing_mm) + 8
    x = (np.arange(n_x) - (n_x - 1) / 2) * spacing_mm
    y = (np.arange(n_y) - (n_y - 1) / 2) * spacing_mm
    inside = ((x[None, :] / a_mm) ** 2 + (y[:, None] / b_mm) ** 2 <= 1.0)[None]
    media = [get_medium("air"), get_medium("water")]
    geo = VoxelGeometry(inside.astype(np.uint8), inside.astype(np.float32), media, (spacing_mm,) * 3,
                        (0.0, float(y[0]), float(x[0])))
    return geo


def test_the_model_follows_the_exact_chords_of_a_water_ellipse():
    """Ellipse 300 x 180 mm of water (1 mm voxels): log f(a) - log f(0) = k (p(a) - p(0)) with
    p(a) = 2 mu r(a), r(a) = 1 / sqrt(sin^2 a / A^2 + cos^2 a / B^2) the semi-chord along the
    central ray (-sin a, cos a); within 0.05 of p's range 2.4 (the voxels' staircase)."""
    a_mm, b_mm, k = 150.0, 90.0, 0.5
    geo = _ellipse(a_mm, b_mm)
    mod = angular_modulation_from_geometry(geo, strength=k, n_angles=36)
    mu_per_mm = float(mass_coefficients(get_medium("water"), np.array([60.0]))["total"][0]) / 10.0
    angle = 2.0 * np.pi * np.arange(36) / 36
    chord = 2.0 / np.sqrt((np.sin(angle) / a_mm) ** 2 + (np.cos(angle) / b_mm) ** 2)
    p_exact = mu_per_mm * chord
    p_model = np.log(mod.factor[0]) / k
    np.testing.assert_allclose(p_model - p_model[0], p_exact - p_exact[0], atol=0.05)
    assert int(np.argmax(mod.factor[0])) in (9, 27)  # from the side (90 and 270 degrees)
    flat = angular_modulation_from_geometry(geo, strength=0.0, n_angles=8)
    np.testing.assert_allclose(flat.factor, 1.0)
    # a depth limit of 2: the lowest current is half the highest, the shape above it kept
    capped = angular_modulation_from_geometry(geo, strength=k, n_angles=36, max_depth=2.0)
    assert capped.factor[0].max() / capped.factor[0].min() == pytest.approx(2.0, rel=1e-9)
    free = mod.factor[0] / mod.factor[0].max() >= 0.5
    np.testing.assert_allclose((capped.factor[0] / capped.factor[0].max())[free],
                               (mod.factor[0] / mod.factor[0].max())[free], rtol=1e-9)


@pytest.mark.parametrize("kw, match", [(dict(strength=-1.0), "strength"), (dict(n_angles=3), "n_angles"),
                                       (dict(max_depth=0.5), "max_depth")])
def test_bad_model_settings_are_named(kw, match):
    with pytest.raises(InputError, match=match):
        angular_modulation_from_geometry(_ellipse(20.0, 10.0, 2.0), **kw)


def test_the_ct_source_draws_its_tube_positions_by_the_modulated_load():
    """36 positions of an axial rotation with the current proportional to 1 + 0.8 cos 2a: the
    total mAs (and the dose scale per mAs) stay those of the protocol, and the photons' gantry
    angles follow the modulated load (chi-square over the 36 intervals)."""
    scanner = CTScanner(spekpy_spectrum(120.0), generic_body_bowtie())
    protocol = Protocol("axial", 0.0, 0.0, tube_current_ma=200.0, rotation_time_s=0.5, projections_per_rotation=36)
    table = 1.0 + 0.8 * np.cos(2.0 * 2.0 * np.pi * np.arange(72) / 72)
    mod = AngularModulation([0.0], table[None], "cos 2a")
    plain = CTSource(scanner, protocol)
    modulated = CTSource(scanner, protocol, angular_modulation=mod)
    assert modulated.mas.sum() == pytest.approx(plain.mas.sum(), rel=1e-12)
    assert modulated.dose_scale_per_mas == pytest.approx(plain.dose_scale_per_mas, rel=1e-12)
    expected_share = 1.0 + 0.8 * np.cos(2.0 * modulated.angle_rad)
    np.testing.assert_allclose(modulated.mas / modulated.mas.mean(), expected_share / expected_share.mean(),
                               rtol=1e-9)
    n = 360_000
    st = modulated.sample(n, torch.Generator().manual_seed(4))
    angle = np.mod(np.arctan2(st.x.double().numpy(), -st.y.double().numpy()), 2.0 * np.pi)
    edges = np.mod(modulated.angle_rad[0] - np.pi / 36, 2 * np.pi) + 2.0 * np.pi * np.arange(37) / 36
    counts, _ = np.histogram(np.mod(angle - edges[0], 2 * np.pi) + edges[0], edges)
    expected = n * modulated.mas / modulated.mas.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    print(f"tube positions: chi2 {chi2:.1f} for 35 degrees of freedom")
    assert chi2 < 35 + 5.0 * math.sqrt(70.0)
    # the unmodulated source would be far off
    flat = np.full(36, n / 36)
    assert float(((counts - flat) ** 2 / flat).sum()) > 1000


def test_the_docstring_examples_hold():
    import doctest

    from ctdose.physics import angular_modulation

    result = doctest.testmod(angular_modulation)
    assert result.attempted > 0 and result.failed == 0


def test_a_view_log_is_read_per_z_and_resampled(tmp_path):
    """Views at uneven angles (some past 360 degrees), two z positions in any row order: each z
    interpolated periodically onto equally spaced angles, scaled to mean 1."""
    path = tmp_path / "views.csv"
    rows = ["# a scanner log", "z_mm,angle_deg,tube_current_ma"]
    rows += [f"10,{a},{100 + 50 * math.cos(math.radians(2 * a))}" for a in (0, 90, 180, 270)]
    rows += [f"-10,{a},{200.0}" for a in (370, 100, 190, 280)]
    path.write_text("\n".join(rows) + "\n")
    mod = read_angular_modulation_csv(path)
    np.testing.assert_allclose(mod.z_mm, [-10.0, 10.0])
    np.testing.assert_allclose(mod.factor[0], 1.0)
    np.testing.assert_allclose(mod.factor[1], [1.5, 0.5, 1.5, 0.5])
    assert mod.source == "views.csv"


@pytest.mark.parametrize("text, match", [
    ("z_mm,angle_deg\n0,0\n", "missing column"),
    ("z_mm,angle_deg,tube_current_ma\n0,0,100\n0,360,120\n", "fewer than two"),
    ("z_mm,angle_deg,tube_current_ma\n0,zero,100\n", "must be numbers"),
    ("z_mm,angle_deg,tube_current_ma\n0,0,-1\n0,90,1\n", ">= 0"),
])
def test_a_bad_view_log_is_named(tmp_path, text, match):
    path = tmp_path / "log.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        read_angular_modulation_csv(path)
    assert "log.csv" in str(err.value)
    with pytest.raises(InputError, match="no such"):
        read_angular_modulation_csv(tmp_path / "absent.csv")
