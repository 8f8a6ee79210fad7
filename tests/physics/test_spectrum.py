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


def test_uneven_bin_centres_give_bins_that_tile_the_spectrum_without_overlap():
    # edges halfway between neighbours: [25, 35], [35, 120], [120, 280] keV (np.gradient's
    # bins centred on 40 keV reached below 0 keV)
    s = Spectrum(np.array([30.0, 40.0, 200.0]), np.array([1.0, 1.0, 0.0]))
    np.testing.assert_array_equal(s.bin_middle_kev - s.bin_width_kev / 2, [25.0, 35.0, 120.0])
    np.testing.assert_array_equal(s.bin_middle_kev + s.bin_width_kev / 2, [35.0, 120.0, 280.0])
    e = s.sample_energy_kev(100_000, np.random.default_rng(0))
    assert e.min() >= 25.0 and e.max() <= 120.0
    assert np.mean(e < 35.0) == pytest.approx(0.5, abs=0.01)
    assert s.max_energy_kev == 120.0


def test_uniformly_spaced_bins_are_centred_exactly_on_their_energies():
    # spekpy's 0.1 keV bins differ in spacing by rounding: their bins (and sampled energies) stay as they were
    for s in (spekpy_spectrum(120.0, filtration_mm_al=9.0, bin_kev=0.1), spekpy_spectrum(100.0, bin_kev=0.3),
              spekpy_spectrum(120.0), spectrum_from_csv(_tg195_rqr9())):
        gaps = np.diff(s.energy_kev)
        assert gaps.max() - gaps.min() < 1e-12  # uniform up to rounding
        np.testing.assert_array_equal(s.bin_middle_kev, s.energy_kev)
        np.testing.assert_array_equal(s.bin_width_kev, np.gradient(s.energy_kev))


def test_the_highest_energy_is_the_upper_edge_of_the_highest_bin_with_photons():
    s = Spectrum(np.array([30.0, 40.0, 149.9]), np.array([1.0, 1.0, 1.0]))
    assert s.max_energy_kev == pytest.approx(149.9 + (149.9 - 40.0) / 2)
    assert Spectrum(np.array([30.0, 40.0, 149.9]), np.array([1.0, 1.0, 0.0])).max_energy_kev == pytest.approx(94.95)
    assert Spectrum(np.array([60.0]), np.array([1.0])).max_energy_kev == 60.0


@pytest.mark.parametrize("energies, weights, low, share", [
    ([1.0, 2.0], [1.0, 1.0], "0.5", "0.25"),
    ([1.5, 5.5], [1.0, 0.0], "-0.5", "0.375"),
])
def test_a_lowest_bin_reaching_below_1_kev_is_refused(energies, weights, low, share):
    with pytest.raises(InputError, match=rf"spectrum \(test\): the lowest bin, at {energies[0]:g} keV, reaches down to "
                                         rf"{low} keV, below the cross-section tables' 1 keV: {share} of the photons"):
        Spectrum(np.array(energies), np.array(weights), "test")


@pytest.mark.parametrize("kvp,bin_kev", [(80.0, 0.5), (120.0, 0.5), (120.0, 1.0)])
def test_spekpy_spectra_keep_their_empty_bins_and_stay_on_a_uniform_grid(kvp, bin_kev):
    """Under 2.5 mm Al spekpy gives 1.25 keV a fluence of ~1e-169 and nothing at 1.75-2.25 keV.
    Dropping the empty bins left a lone bin and a gap (1.25, 2.75, 3.25, ... keV), whose
    neighbours' bins were 1 keV wide; the empty bins are kept (no photons), so every bin is
    centred on its energy and as wide as spekpy's."""
    s = spekpy_spectrum(kvp, anode_angle_deg=12.0, filtration_mm_al=2.5, bin_kev=bin_kev)
    np.testing.assert_allclose(np.diff(s.energy_kev), bin_kev, rtol=1e-9)
    np.testing.assert_allclose(s.bin_width_kev, bin_kev, rtol=1e-9)
    np.testing.assert_array_equal(s.bin_middle_kev, s.energy_kev)
    assert s.energy_kev[0] - bin_kev / 2 >= 1.0 - 1e-9
    p = s.probabilities()
    assert p[0] < 1e-100 and np.any(p[1:10] == 0.0)


def test_a_fluence_whose_sum_overflows_is_refused():
    with pytest.raises(InputError, match=r"spectrum: the total fluence overflows \(sum of 2 values up to 1e\+308\)"):
        Spectrum(np.array([30.0, 40.0]), np.array([1e308, 1e308]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(kvp=1000.0), r"kvp must be within 10-500 kV for a W anode \(spekpy's range\), got 1000.0; note that the "
                       r"Monte Carlo's cross-section tables stop at 150 keV"),
    (dict(kvp=5.0), r"kvp must be within 10-500 kV for a W anode \(spekpy's range\), got 5.0$"),
    (dict(kvp=60.0, target="Mo"), r"kvp must be within 10-50 kV for a Mo anode"),
    (dict(kvp=120.0, bin_kev=200.0), r"bin_kev must be at most kvp / 4 = 30 keV .*got 200.0"),
    (dict(kvp=120.0, filtration_mm_al="7"), r"filtration_mm_al must be a number >= 0 \(mm\), got '7'"),
    (dict(kvp=120.0, anode_angle_deg=500.0), r"anode_angle_deg must be in \(0, 90\] degrees, got 500.0"),
    (dict(kvp=120.0, target="X"), r"target must be one of W, Mo, Rh, Cr, Cu, Ag, Au, got 'X'"),
])
def test_spekpy_arguments_out_of_range_are_refused_before_spekpy_sees_them(kwargs, match):
    with pytest.raises(InputError, match=r"^spekpy_spectrum: " + match):
        spekpy_spectrum(**kwargs)


def test_spekpys_own_failures_become_input_errors_naming_the_arguments(monkeypatch):
    def fail(*args, **kwargs):
        raise Exception("Requested kVp is out of range")

    monkeypatch.setattr(spekpy, "Spek", fail)
    with pytest.raises(InputError, match=r"spekpy_spectrum \(spekpy W 120 kVp, anode 7 deg, 7 mm Al \+ 0 mm Cu, "
                                         r"0.5 keV bins\): spekpy failed: Exception: Requested kVp is out of range"):
        spekpy_spectrum(120.0)


def test_csv_spectra_are_named_by_their_full_path(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("energy_kev,weight\n30,1\n40,2\n")
    assert spectrum_from_csv(f).description == f"file {f}"
    f.write_text("energy_kev,weight\n30,1\n40,-2\n")
    with pytest.raises(InputError, match=rf"^spectrum \(file {f}\): fluence must be >= 0"):
        spectrum_from_csv(f)


def test_csv_energies_in_ev_scaled_to_a_kerma_name_the_file_and_the_likely_cause(tmp_path):
    f = tmp_path / "ev.csv"
    f.write_text("energy_kev,weight\n30000,1\n50000,2\n")
    with pytest.raises(InputError, match=rf"^{f}: cannot compute the spectrum's air kerma to scale it to 0.0001 Gy/mAs "
                                         r"\(.*\); are the energies in keV\?$"):
        spectrum_from_csv(f, air_kerma_gy_per_mas_at_1m=1e-4)


def test_csv_rows_of_the_wrong_length_are_refused(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("energy_kev,weight\n30,1,0.1\n40,2,0.1\n")  # read as energies 1, 2 keV
    with pytest.raises(InputError, match=rf"^{f}, line 2: 3 fields, but the header \(line 1\) has 2"):
        spectrum_from_csv(f)
