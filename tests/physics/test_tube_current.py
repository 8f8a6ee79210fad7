"""Tests of ctdose.physics.tube_current: a CT's own tube-current record and a protocol that follows it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import trapezoid

from ctdose.errors import InputError
from ctdose.physics.scanner import Protocol
from ctdose.physics.tube_current import TubeCurrentProfile, modulated_protocol, read_tube_current_csv

COLLIMATION_MM = 40.0


class _Geometry:
    """What Protocol.source_positions reads of a scanner."""

    collimation_mm = COLLIMATION_MM


def test_mean_is_the_exact_integral_of_the_piecewise_linear_profile():
    p = TubeCurrentProfile([0.0, 100.0], [100.0, 300.0], "ramp")
    assert p.mean_ma(0.0, 100.0) == pytest.approx(200.0, rel=1e-12)
    # 50..100 on the ramp (integral 12500 mA mm) and 100..150 at the end value (15000 mA mm)
    assert p.mean_ma(50.0, 150.0) == pytest.approx(275.0, rel=1e-12)
    assert p.mean_ma(150.0, 50.0) == pytest.approx(275.0, rel=1e-12)
    assert p.mean_ma(-30.0, -10.0) == pytest.approx(100.0, rel=1e-12)  # constant beyond the ends
    assert p.mean_ma(25.0, 25.0) == pytest.approx(150.0, rel=1e-12)
    # an independent quadrature of an irregular profile
    rng = np.random.default_rng(3)
    z = np.cumsum(rng.uniform(1.0, 9.0, 40))
    ma = rng.uniform(50.0, 400.0, 40)
    q = TubeCurrentProfile(z, ma, "random")
    fine = np.linspace(z[3] - 7.3, z[31] + 2.1, 400_001)
    assert q.mean_ma(fine[0], fine[-1]) == pytest.approx(trapezoid(np.interp(fine, z, ma), fine)
                                                         / (fine[-1] - fine[0]), rel=1e-7)


@pytest.mark.parametrize(
    "z, ma, message",
    [([0.0, 1.0], [100.0], "equal"), ([], [], "equal"), ([0.0, np.nan], [1.0, 2.0], "finite"),
     ([0.0, 0.0], [1.0, 2.0], "strictly increasing"), ([1.0, 0.0], [1.0, 2.0], "strictly increasing"),
     ([0.0, 1.0], [-1.0, 2.0], ">= 0"), ([0.0, 1.0], [0.0, 0.0], "not all zero")],
)
def test_bad_profiles_are_refused_naming_their_source(z, ma, message):
    with pytest.raises(InputError, match=rf"\(scan 7\).*{message}"):
        TubeCurrentProfile(z, ma, "scan 7")


def test_profile_round_trips_through_case_attributes():
    p = TubeCurrentProfile([-10.0, 5.0, 30.0], [120.0, 250.5, 90.0], "dicom")
    attrs = {"case_id": "c", **p.to_attrs()}
    q = TubeCurrentProfile.from_attrs(attrs)
    np.testing.assert_array_equal(q.z_mm, p.z_mm)
    np.testing.assert_array_equal(q.current_ma, p.current_ma)
    assert q.source == "dicom"
    assert TubeCurrentProfile.from_attrs({"case_id": "synthetic_000"}) is None


def test_csv_profile_is_read_sorted_and_bad_files_are_named(tmp_path):
    good = tmp_path / "tube_current.csv"
    good.write_text("# exported from the scanner's dose report\nz_mm,tube_current_ma\n20, 300\n-20, 100\n0, 180\n")
    p = read_tube_current_csv(good)
    np.testing.assert_array_equal(p.z_mm, [-20.0, 0.0, 20.0])
    np.testing.assert_array_equal(p.current_ma, [100.0, 180.0, 300.0])
    assert p.source == "tube_current.csv"
    for text, message in [("z,ma\n0,1\n", "missing column"), ("z_mm,tube_current_ma\n0,abc\n", "must be numbers"),
                          ("z_mm,tube_current_ma\n0,100\n0,120\n", "strictly increasing"), ("", "not a readable")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(InputError, match=message) as info:
            read_tube_current_csv(bad)
        assert "bad.csv" in str(info.value)
    with pytest.raises(InputError, match="no such tube-current file"):
        read_tube_current_csv(tmp_path / "none.csv")


@pytest.mark.parametrize("mode, pitch", [("axial", 1.0), ("helical", 0.9)])
def test_modulated_protocol_keeps_the_total_load_and_follows_the_profile(mode, pitch):
    profile = TubeCurrentProfile([-60.0, -10.0, 10.0, 75.0], [80.0, 120.0, 400.0, 250.0], "test")
    constant = Protocol(mode, -50.0, 70.0, pitch=pitch, tube_current_ma=200.0, projections_per_rotation=8)
    modulated, mean_ma = modulated_protocol(constant, profile, COLLIMATION_MM)
    ref = constant.source_positions(_Geometry())
    got = modulated.source_positions(_Geometry())
    np.testing.assert_array_equal(got.z_mm, ref.z_mm)
    np.testing.assert_array_equal(got.angle_rad, ref.angle_rad)
    assert got.total_mas == pytest.approx(ref.total_mas, rel=1e-12)  # same total tube load
    # per position: the profile's current at its z, times one common factor
    recorded = np.interp(ref.z_mm, profile.z_mm, profile.current_ma)
    ratio = got.mas / (ref.mas * recorded / 200.0)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)
    # the patient's mean current: the load-weighted mean of the recorded currents
    assert mean_ma == pytest.approx(np.sum(recorded * ref.mas) / ref.mas.sum(), rel=1e-12)
    assert ratio[0] == pytest.approx(200.0 / mean_ma, rel=1e-12)
    assert constant.current_profile_ma is None  # the input protocol is left as it was


def test_a_profile_without_current_over_the_scan_is_refused():
    profile = TubeCurrentProfile([100.0, 200.0], [0.0, 50.0], "far away")
    with pytest.raises(InputError, match=r"far away.*zero current over the whole scan"):
        modulated_protocol(Protocol("axial", 0.0, 40.0), profile, COLLIMATION_MM)
