"""Tests of ctdose.physics.spectrum (spekpy spectra, CSV spectra, kerma, HVL)."""

from pathlib import Path

import numpy as np
import pytest
import spekpy

from ctdose.errors import InputError
from ctdose.materials import filter_medium
from ctdose.physics.spectrum import Spectrum, spectrum_from_csv, spekpy_spectrum
from ctdose.physics.xsection import mass_coefficients

REPO = Path(__file__).resolve().parents[2]


def _spek(kvp, th, al):
    s = spekpy.Spek(kvp=kvp, th=th, dk=0.5)
    s.filter("Al", al)
    return s


@pytest.mark.parametrize("kvp, th, al", [(120.0, 7.0, 7.0), (80.0, 12.0, 2.5)])
def test_hvl_and_kerma_agree_with_spekpy(kvp, th, al):
    ours = spekpy_spectrum(kvp, anode_angle_deg=th, filtration_mm_al=al)
    ref = _spek(kvp, th, al)
    assert ours.hvl_mm_al() == pytest.approx(ref.get_hvl1(), rel=0.02)
    # spekpy: air kerma in uGy per mAs at 1 m
    assert ours.air_kerma_gy_per_mas(1000.0) == pytest.approx(ref.get_kerma() * 1e-6, rel=0.02)
    assert ours.mean_energy_kev == pytest.approx(ref.get_emean(), rel=1e-3)
    assert ours.total_fluence_per_mas_per_mm2_at_1m * 100 == pytest.approx(ref.get_flu(), rel=1e-3)


def test_inverse_square_and_normalised():
    s = spekpy_spectrum(100.0)
    assert s.air_kerma_gy_per_mas(500.0) == pytest.approx(4 * s.air_kerma_gy_per_mas(1000.0))
    n = s.normalised()
    assert n.total_fluence_per_mas_per_mm2_at_1m == pytest.approx(1.0) and not n.absolute
    assert n.mean_energy_kev == pytest.approx(s.mean_energy_kev)
    assert s.probabilities().sum() == pytest.approx(1.0)


def test_filter_by_own_hvl_halves_kerma():
    s = spekpy_spectrum(120.0)
    hvl = s.hvl_mm_al()
    behind = s.filtered("aluminium", hvl)
    assert behind.air_kerma_gy_per_mas() / s.air_kerma_gy_per_mas() == pytest.approx(0.5, abs=1e-5)
    assert behind.mean_energy_kev > s.mean_energy_kev  # beam hardening


def test_monoenergetic_hvl_is_ln2_over_mu():
    s = Spectrum(np.array([60.0]), np.array([1.0]))
    al = filter_medium("aluminium")
    mu_per_mm = mass_coefficients(al, np.array([60.0]))["total"][0] * al.density_g_cm3 / 10
    assert s.hvl_mm_al() == pytest.approx(np.log(2) / mu_per_mm, rel=1e-5)


def test_monoenergetic_air_kerma_by_hand():
    # 1e6 photons/mm^2 of 60 keV at 1 m: K = phi E mu_en/rho (air mu_en/rho(60 keV) = 0.03041 cm^2/g, NIST)
    s = Spectrum(np.array([60.0]), np.array([1e6]))
    expected = 1e6 * 100 * 60e3 * 1.602176634e-19 * 0.03041 * 1e3
    assert s.air_kerma_gy_per_mas(1000.0) == pytest.approx(expected, rel=0.02)


def test_sample_energy_mean():
    s = spekpy_spectrum(120.0)
    e = s.sample_energy_kev(200_000, np.random.default_rng(1))
    assert e.mean() == pytest.approx(s.mean_energy_kev, rel=5e-3)
    assert e.min() >= s.energy_kev[0] - 0.25 and e.max() <= s.energy_kev[-1] + 0.25


def _tg195_rqr9():
    for p in (REPO / "ctdose" / "data" / "tg195", REPO.parent / "shared" / "reference" / "tg195"):
        f = p / "spectrum_RQR9_120kVp_W_Al.csv"
        if f.is_file():
            return f
    pytest.skip("TG-195 spectrum not available")


def test_tg195_rqr9_hvl():
    s = spectrum_from_csv(_tg195_rqr9())
    assert not s.absolute
    # header: HVL 5.010 mm Al, mean 56.4 keV (bin centres as given give 56.14 keV)
    assert s.hvl_mm_al() == pytest.approx(5.010, rel=0.03)
    assert s.mean_energy_kev == pytest.approx(56.14, abs=0.05)


def test_csv_reader_and_absolute_scaling(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("# test\nenergy_keV,weight\n30,1\n50,2\n70,1\n")
    s = spectrum_from_csv(f, air_kerma_gy_per_mas_at_1m=1e-4)
    assert s.absolute and s.air_kerma_gy_per_mas(1000.0) == pytest.approx(1e-4)
    assert s.mean_energy_kev == pytest.approx(50.0)


@pytest.mark.parametrize(
    "text, match",
    [
        ("energy_kev,weight\n30,nan\n40,1\n", "NaN"),
        ("energy_kev,weight\n30,-1\n40,1\n", ">= 0"),
        ("energy_kev,weight\n40,1\n30,1\n", "increasing"),
        ("e,w\n30,1\n", "missing column"),
        ("energy_kev,weight\n30,abc\n", "must be numbers"),
    ],
)
def test_bad_csv(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        spectrum_from_csv(f)
    assert "bad.csv" in str(err.value)


def test_missing_file_and_bad_spekpy_args(tmp_path):
    with pytest.raises(InputError, match="no such spectrum file"):
        spectrum_from_csv(tmp_path / "none.csv")
    with pytest.raises(InputError):
        spekpy_spectrum(-120.0)
    with pytest.raises(InputError):
        spekpy_spectrum(120.0, filtration_mm_al=float("nan"))


def test_spekpy_takes_numpy_numbers():
    s = spekpy_spectrum(np.float32(120.0), anode_angle_deg=np.int64(12), bin_kev=np.float32(1.0))
    ref = spekpy_spectrum(120.0, anode_angle_deg=12.0, bin_kev=1.0)
    np.testing.assert_array_equal(s.energy_kev, ref.energy_kev)
    np.testing.assert_array_equal(s.fluence_per_mas_per_mm2_at_1m, ref.fluence_per_mas_per_mm2_at_1m)
    with pytest.raises(InputError, match=r"spekpy_spectrum: kvp must be a positive number, got True"):
        spekpy_spectrum(True)
