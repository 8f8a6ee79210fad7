"""Tests of ctdose.physics.scanner: geometry, bowtie, protocols."""

import math

import numpy as np
import pytest

from ctdose.config import load_profile
from ctdose.errors import ConfigError, InputError
from ctdose.materials import filter_medium
from ctdose.physics.scanner import (
    Bowtie,
    CTScanner,
    Protocol,
    bowtie_from_csv,
    check_protocol_profile,
    generic_body_bowtie,
    protocol_for_case,
    scanner_from_profile,
)
from ctdose.physics.spectrum import Spectrum

#: A small spectrum for scanners whose spectrum does not matter.
SPEC = Spectrum(np.array([40.0, 60.0, 80.0]), np.array([1.0, 2.0, 1.0]))

@pytest.fixture(scope="module")
def scanner():
    spec = Spectrum(np.array([40.0, 60.0, 80.0]), np.array([1.0, 2.0, 1.0]))
    return CTScanner(spectrum=spec, bowtie=generic_body_bowtie())


def test_geometry(scanner):
    assert scanner.fan_half_angle_rad() == pytest.approx(math.asin(250.0 / 541.0))
    x, y = scanner.source_xy_mm(np.array([0.0, math.pi / 2]))
    np.testing.assert_allclose([x[0], y[0]], [0.0, -541.0], atol=1e-9)  # anterior
    np.testing.assert_allclose([x[1], y[1]], [541.0, 0.0], atol=1e-9)  # patient left (+x)
    assert scanner.z_half_angle_rad() == pytest.approx(math.atan(20.0 / 541.0))


def test_axial_positions_cover_range(scanner):
    p = Protocol("axial", -95.0, 60.0, tube_current_ma=100.0, rotation_time_s=0.5, projections_per_rotation=12)
    sp = p.source_positions(scanner)
    centres = np.unique(sp.z_mm)
    n_rot = math.ceil(155.0 / 40.0)
    assert centres.size == n_rot and len(sp) == n_rot * 12
    assert centres.min() - 20 <= -95.0 and centres.max() + 20 >= 60.0
    np.testing.assert_allclose(np.diff(centres), 40.0)
    assert np.mean(centres) == pytest.approx((-95.0 + 60.0) / 2)
    assert sp.total_mas == pytest.approx(n_rot * 100.0 * 0.5)
    one = np.sort(sp.angle_rad[sp.z_mm == centres[0]])
    np.testing.assert_allclose(np.diff(one), 2 * math.pi / 12)
    xyz = sp.source_xyz_mm(scanner)
    np.testing.assert_allclose(np.hypot(xyz[:, 0], xyz[:, 1]), 541.0)


def test_helical_positions(scanner):
    p = Protocol("helical", 0.0, 100.0, pitch=1.25, projections_per_rotation=10, start_angle_deg=90.0)
    sp = p.source_positions(scanner)
    n_rot = 100.0 / (1.25 * 40.0)
    assert sp.total_mas == pytest.approx(200.0 * 1.0 * n_rot)
    assert len(sp) == 20
    assert np.all(np.diff(sp.z_mm) > 0) and sp.z_mm.min() >= 0 and sp.z_mm.max() <= 100.0
    # table feed per rotation = pitch * collimation
    assert sp.z_mm[10] - sp.z_mm[0] == pytest.approx(50.0)
    assert sp.angle_rad[0] == pytest.approx(math.radians(90.0 + 18.0))


def test_helical_partial_rotation_mas(scanner):
    p = Protocol("helical", 0.0, 45.0, projections_per_rotation=8)
    sp = p.source_positions(scanner)
    assert sp.total_mas == pytest.approx(200.0 * 45.0 / 40.0)


def test_continuous_rotation_intervals_tile_the_trajectory(scanner):
    # axial: every position stands for 2 pi / n of its rotation and no z travel
    ax = Protocol("axial", 0.0, 80.0, projections_per_rotation=12).source_positions(scanner)
    np.testing.assert_allclose(ax.angle_width_rad, 2 * math.pi / 12)
    np.testing.assert_array_equal(ax.z_width_mm, 0.0)
    # helical with a partial last interval: the intervals tile [z_start, z_end] without gap and
    # cover the helix's whole angle, 2 pi per table feed
    hel = Protocol("helical", -10.0, 95.0, pitch=1.25, projections_per_rotation=10).source_positions(scanner)
    lo, hi = hel.z_mm - hel.z_width_mm / 2, hel.z_mm + hel.z_width_mm / 2
    assert lo[0] == pytest.approx(-10.0) and hi[-1] == pytest.approx(95.0)
    np.testing.assert_allclose(lo[1:], hi[:-1], atol=1e-9)
    assert hel.angle_width_rad.sum() == pytest.approx(2 * math.pi * 105.0 / (1.25 * 40.0))
    np.testing.assert_allclose(hel.angle_width_rad / hel.z_width_mm, 2 * math.pi / 50.0)
    # tube load per interval follows its length
    np.testing.assert_allclose(hel.mas / hel.z_width_mm, hel.mas[0] / hel.z_width_mm[0])
    # discrete: point projections
    d = Protocol("axial", 0.0, 80.0, projections_per_rotation=12, rotation="discrete").source_positions(scanner)
    assert d.angle_width_rad is None and d.z_width_mm is None
    np.testing.assert_array_equal(d.angle_rad, ax.angle_rad)


def test_tube_current_modulation(scanner):
    p = Protocol("axial", 0.0, 80.0, current_profile_z_mm=[0.0, 80.0], current_profile_ma=[100.0, 300.0],
                 projections_per_rotation=4)
    sp = p.source_positions(scanner)
    np.testing.assert_allclose(sp.mas, np.interp(sp.z_mm, [0, 80], [100, 300]) / 4)


@pytest.mark.parametrize(
    "kwargs",
    [dict(mode="spiral"), dict(z_start_mm=10.0, z_end_mm=0.0), dict(pitch=0.0), dict(tube_current_ma=-1.0),
     dict(projections_per_rotation=0), dict(current_profile_z_mm=[0.0]), dict(rotation="stepwise")],
)
def test_protocol_rejects_bad_input(kwargs):
    with pytest.raises(InputError):
        Protocol(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(projections_per_rotation=float("nan")), "projections_per_rotation must be finite"),
    (dict(projections_per_rotation=float("inf")), "projections_per_rotation must be finite"),
    (dict(projections_per_rotation=None), "projections_per_rotation must be a number, got None"),
    (dict(projections_per_rotation="16"), "projections_per_rotation must be a number, got '16'"),
    (dict(projections_per_rotation=10**12), "projections_per_rotation must be an integer from 1 to 100000"),
    (dict(z_start_mm="a"), "z_start_mm must be a number, got 'a'"),
    (dict(tube_current_ma="200"), "tube_current_ma must be a number, got '200'"),
    (dict(tube_current_ma=None), "tube_current_ma must be a number"),
    (dict(pitch=True), "pitch must be a number, got True"),
    (dict(mode="helical", z_end_mm=1e12), "is longer than 5000 mm"),
    (dict(mode="axial", z_end_mm=1e12), "is longer than 5000 mm"),
])
def test_protocol_names_the_bad_argument_instead_of_failing_deep_inside(kwargs, message):
    """Raw TypeErrors, OverflowErrors and MemoryErrors (a 1e12 mm scan asked for terabytes of
    source positions) before these checks."""
    with pytest.raises(InputError, match=message):
        Protocol(**kwargs)


def test_protocol_takes_numpy_numbers():
    p = Protocol(projections_per_rotation=np.int64(8), tube_current_ma=np.float32(100.0), z_end_mm=np.float64(40.0))
    assert p.projections_per_rotation == 8 and len(p.source_positions(CTScanner(SPEC)).angle_rad) > 0


def test_bowtie_refuses_fan_angles_of_90_degrees_and_more_and_empty_profiles(tmp_path):
    with pytest.raises(InputError, match="fan angles must be below 90 degrees"):
        Bowtie(np.deg2rad([0.0, 400.0]), np.array([0.0, 5.0]))
    f = tmp_path / "wide.csv"
    f.write_text("fan_angle_deg,al_thickness_mm\n0,0\n400,5\n")
    with pytest.raises(InputError, match=r"bowtie \(file .*wide\.csv\): fan angles must be below 90 degrees"):
        bowtie_from_csv(f)
    with pytest.raises(InputError, match="no fan angles"):
        Bowtie(np.array([]), np.array([]))


def test_scanner_refuses_a_collimation_as_wide_as_twice_the_source_distance():
    """A 1e9 mm collimation made the source's field sampler loop for ever (a cone of nearly 90
    degrees in z)."""
    with pytest.raises(InputError, match="collimation_mm/2 = 500000000.0 must be below the source distance 541.0"):
        CTScanner(SPEC, collimation_mm=1e9)
    assert CTScanner(SPEC, collimation_mm=160.0).collimation_mm == 160.0


def test_bowtie_symmetric_and_transmission_independent():
    bt = generic_body_bowtie()
    g = np.linspace(-0.45, 0.45, 19)
    np.testing.assert_allclose(bt.thickness_mm(g), bt.thickness_mm(-g))
    assert bt.thickness_mm(0.0) == pytest.approx(0.0)
    assert np.all(np.diff(bt.thickness_mm(np.linspace(0, 0.5, 30))) >= 0)
    # transmission = exp(-mu t): compare with the spectrum's filter route (independent path)
    spec = Spectrum(np.array([35.0, 70.0, 110.0]), np.ones(3))
    al = filter_medium("aluminium")
    t = float(bt.thickness_mm(0.3))
    np.testing.assert_allclose(bt.transmission(spec.energy_kev, 0.3), spec.transmission(al, t), rtol=1e-4)
    tab = bt.transmission(np.array([40.0, 80.0])[:, None], np.array([0.0, 0.2, 0.4])[None, :])
    assert tab.shape == (2, 3) and np.all(tab[:, 0] == 1.0) and np.all(np.diff(tab, axis=1) <= 0)


def test_bowtie_csv(tmp_path):
    f = tmp_path / "bt.csv"
    f.write_text("fan_angle_deg,al_thickness_mm\n-10,5\n0,0\n10,5\n20,12\n")
    bt = bowtie_from_csv(f)
    assert bt.thickness_mm(math.radians(-5.0)) == pytest.approx(2.5)
    f.write_text("fan_angle_deg,al_thickness_mm\n-10,3\n0,0\n10,5\n")
    with pytest.raises(InputError, match="asymmetric"):
        bowtie_from_csv(f)
    with pytest.raises(InputError, match="no such bowtie file"):
        bowtie_from_csv(tmp_path / "x.csv")
    with pytest.raises(InputError):
        Bowtie(np.array([0.0, 0.1]), np.array([0.0, -1.0]))


def test_scanner_and_protocol_from_profile():
    cfg = load_profile("smoke")
    sc = scanner_from_profile(cfg)
    assert sc.source_to_isocentre_mm == pytest.approx(541.0) and sc.collimation_mm == pytest.approx(40.0)
    assert sc.spectrum.absolute and sc.spectrum.energy_kev.max() <= 120.0
    k0 = sc.air_kerma_gy_per_mas_at_isocentre(0.0)
    assert 1e-4 < k0 < 1e-3  # CT free-in-air kerma at isocentre: 0.1-1 mGy/mAs at 120 kVp
    assert sc.air_kerma_gy_per_mas_at_isocentre(0.4) < k0
    assert k0 == pytest.approx(sc.spectrum.air_kerma_gy_per_mas(1000.0) * (1000 / 541) ** 2)
    p = protocol_for_case(cfg, (50.0, -30.0))
    assert (p.z_start_mm, p.z_end_mm) == (-30.0, 50.0)
    assert p.projections_per_rotation == cfg["scanner"]["projections_per_rotation"]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("projections_per_rotation", 2.5, r"projections_per_rotation must be a positive integer, got 2\.5"),
        ("projections_per_rotation", 0, r"projections_per_rotation must be a positive integer, got 0"),
        ("projections_per_rotation", "many", r"projections_per_rotation must be a number, got 'many'"),
        ("pitch", "abc", r"pitch must be a number, got 'abc'"),
        ("pitch", True, r"pitch must be a number, got True"),
        ("pitch", 0.0, r"pitch must be > 0, got 0\.0"),
        ("rotation_time_s", -1.0, r"rotation_time_s must be > 0"),
        ("tube_current_ma", float("nan"), r"tube_current_ma must be > 0, got nan"),
        ("start_angle_deg", float("inf"), r"start_angle_deg must be finite"),
        ("mode", "spiral", r"mode must be 'axial' or 'helical', got 'spiral'"),
        ("rotation", "stepwise", r"rotation must be 'continuous' or 'discrete', got 'stepwise'"),
        ("tube_current_modulation", "auto", r"tube_current_modulation must be one of none, ct, got 'auto'"),
    ],
)
def test_bad_protocol_keys_of_a_profile_file_are_refused_naming_the_key(key, value, message):
    """Values a YAML file may hold (``--set`` checks types against the shipped profile; a file
    does not): each is refused up front, naming the key. A fractional projection count used to
    be truncated (2.5 projections ran as 2)."""
    cfg = load_profile("smoke")
    cfg["scanner"][key] = value
    with pytest.raises(ConfigError, match=message):
        check_protocol_profile(cfg)


def test_protocol_numbers_written_as_text_are_read():
    cfg = load_profile("smoke")
    cfg["scanner"].update(pitch="1.5", projections_per_rotation="8", mode="helical")
    check_protocol_profile(cfg)
    p = protocol_for_case(cfg, (0.0, 100.0))
    assert p.pitch == 1.5 and p.projections_per_rotation == 8 and type(p.projections_per_rotation) is int


def test_bad_profile_values():
    cfg = load_profile("smoke")
    cfg["scanner"]["source_to_isocentre_mm"] = -5.0
    with pytest.raises(ConfigError, match="source_to_isocentre_mm"):
        scanner_from_profile(cfg)
    with pytest.raises(ConfigError):
        scanner_from_profile({"name": "x"})


@pytest.mark.parametrize("value", [np.float32(40.0), np.int64(40), np.float16(40.0)])
def test_scanner_takes_numpy_numbers(value):
    spec = Spectrum(np.array([40.0, 60.0, 80.0]), np.array([1.0, 2.0, 1.0]))
    sc = CTScanner(spec, collimation_mm=value, fan_fov_mm=value * 10, source_to_isocentre_mm=value * 15)
    assert type(sc.collimation_mm) is float
    assert sc.z_half_angle_rad() == pytest.approx(math.atan(20.0 / 600.0))


@pytest.mark.parametrize("value", [True, "40", float("nan"), -40.0])
def test_scanner_refuses_what_is_not_a_positive_number(value):
    spec = Spectrum(np.array([40.0, 60.0, 80.0]), np.array([1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match=r"CTScanner: collimation_mm must be a positive number"):
        CTScanner(spec, collimation_mm=value)


def test_bowtie_csv_with_only_negative_angles_names_the_file(tmp_path):
    f = tmp_path / "neg.csv"
    f.write_text("fan_angle_deg,al_thickness_mm\n-20,5\n-10,2\n")
    with pytest.raises(InputError, match=r"bowtie file .*neg\.csv: no fan angle >= 0"):
        bowtie_from_csv(f)


def test_case_protocol_follows_a_tube_current_record_only_with_modulation_ct():
    from ctdose.physics.scanner import case_protocol
    from ctdose.physics.tube_current import TubeCurrentProfile

    record = TubeCurrentProfile([0.0, 120.0], [300.0, 500.0], "DICOM XRayTubeCurrent of dicom/")
    cfg = load_profile("smoke")
    plain, note = case_protocol(cfg, (0.0, 120.0))
    assert plain.current_profile_ma is None and note == "constant 200 mA"
    ignored, note = case_protocol(cfg, (0.0, 120.0), record)
    assert ignored.current_profile_ma is None and "record not used" in note
    cfg["scanner"]["tube_current_modulation"] = "ct"
    followed, note = case_protocol(cfg, (0.0, 120.0), record)
    np.testing.assert_array_equal(followed.current_profile_z_mm, record.z_mm)
    # three 40 mm rotations centred at 20, 60, 100 mm: recorded 333.3, 400, 466.7 mA, mean 400
    np.testing.assert_allclose(followed.current_profile_ma, record.current_ma * 200.0 / 400.0)
    assert note.startswith("the case's tube-current modulation (DICOM XRayTubeCurrent of dicom/; mean 400 mA")
    assert note.endswith("scaled to a mean of 200 mA")
    assert case_protocol(cfg, (0.0, 120.0))[0].current_profile_ma is None  # cases without a record
