"""Tests of ctdose.physics.kerma: primary air-kerma input maps (cylinder and patient modes)."""

import math

import numpy as np
import pytest
import torch
from scipy.constants import electron_volt
from scipy.integrate import quad

from ctdose.errors import InputError
from ctdose.materials import get_medium
from ctdose.physics.kerma import kerma_map
from ctdose.physics.scanner import CTScanner, Protocol, generic_body_bowtie
from ctdose.physics.spectrum import spekpy_spectrum
from ctdose.physics.xsection import mass_coefficients

D_MM = 541.0


@pytest.fixture(scope="module")
def scanner():
    return CTScanner(spectrum=spekpy_spectrum(120.0, bin_kev=2.0), bowtie=generic_body_bowtie())


def _centres(shape, spacing, origin):
    axes = [o + s * np.arange(n) for n, s, o in zip(shape, spacing, origin)]
    return np.meshgrid(*axes, indexing="ij")  # Z, Y, X


def _point_kerma(mode, scanner, protocol, xyz, **kw):
    """Map value at one point: a 1-voxel grid centred there."""
    x, y, z = xyz
    return float(kerma_map(mode, (1, 1, 1), (1.0, 1.0, 1.0), (z, y, x), scanner, protocol, **kw)[0, 0, 0])


def _reference_single_projection(scanner, x, y, z, radius=160.0):
    """Independent: chord by scipy quad of the cylinder indicator along the 3-D ray, spectrum sum."""
    s = np.array([0.0, -D_MM, 0.0])
    p = np.array([x, y, z])
    length = np.linalg.norm(p - s)
    inside = lambda t: float(np.hypot(*(s + t * (p - s))[:2]) <= radius)  # noqa: E731
    chord = quad(inside, 0.0, 1.0, limit=400, epsabs=1e-10)[0] * length
    spec = scanner.spectrum
    e = spec.energy_kev
    mu_w = mass_coefficients(get_medium("water"), e)["total"] / 10.0  # 1/mm
    en_air = mass_coefficients(get_medium("air"), e)["en"]
    gamma = math.atan2(x, D_MM + y)
    t_bowtie = scanner.bowtie.transmission(e, gamma)
    fluence_cm2 = spec.fluence_per_mas_per_mm2_at_1m * 100.0 * (1000.0 / length) ** 2
    return float(np.sum(fluence_cm2 * t_bowtie * np.exp(-mu_w * chord) * e * en_air) * 1e3 * electron_volt * 1e3)


def test_single_projection_matches_independent_line_integral(scanner):
    one = Protocol("axial", 0.0, 0.0, projections_per_rotation=1)
    for xyz in [(0.0, 0.0, 0.0), (3.0, -120.0, 5.0), (-90.0, 60.0, -12.0), (40.0, 140.0, 0.0), (0.0, -175.0, 0.0)]:
        ours = _point_kerma("cylinder", scanner, one, xyz)
        ref = _reference_single_projection(scanner, *xyz)
        assert ours == pytest.approx(ref, rel=3e-3), xyz


def test_free_in_air_equals_spectrum_air_kerma(scanner):
    one = Protocol("axial", 0.0, 0.0, projections_per_rotation=1)
    k = _point_kerma("cylinder", scanner, one, (0.0, 0.0, 0.0), cylinder_radius_mm=1e-6)
    assert k == pytest.approx(scanner.air_kerma_gy_per_mas_at_isocentre(), rel=1e-3)
    air = _point_kerma("patient", scanner, one, (0.0, 0.0, 0.0), labels=np.zeros((1, 1, 1), np.uint8),
                       medium_of_label=["air"])
    assert air == pytest.approx(scanner.air_kerma_gy_per_mas_at_isocentre(), rel=1e-3)


def test_outside_fan_and_collimation_is_zero(scanner):
    one = Protocol("axial", 0.0, 0.0, projections_per_rotation=1)
    # fan edge at the isocentre plane: x = 250 mm; collimation edge at the isocentre: z = 20 mm
    assert _point_kerma("cylinder", scanner, one, (0.0, 0.0, 30.0)) == 0.0
    assert _point_kerma("cylinder", scanner, one, (300.0, 0.0, 0.0)) == 0.0
    assert _point_kerma("cylinder", scanner, one, (0.0, 0.0, 15.0)) > 0.0


def test_cylinder_map_rotationally_symmetric_for_full_rotation(scanner):
    shape, spacing, origin = (3, 41, 41), (10.0, 8.0, 8.0), (-10.0, -160.0, -160.0)
    p = Protocol("axial", 0.0, 0.0, projections_per_rotation=36)
    k = kerma_map("cylinder", shape, spacing, origin, scanner, p)
    # invariant under a rotation by 90 degrees (a multiple of 360/36)
    np.testing.assert_allclose(np.rot90(k, 1, axes=(1, 2)), k, rtol=1e-4, atol=1e-12)
    # and nearly under any rotation: points at the same radius, different angles
    vals = [_point_kerma("cylinder", scanner, p, (100.0 * math.cos(t), 100.0 * math.sin(t), 0.0))
            for t in np.linspace(0.0, 2 * math.pi, 7, endpoint=False)]
    assert np.ptp(vals) / np.mean(vals) < 0.02


def test_z_profile_integrates_to_collimation(scanner):
    shape, spacing, origin = (41, 1, 1), (2.0, 1.0, 1.0), (-40.0, 0.0, 0.0)
    p = Protocol("axial", 0.0, 0.0, projections_per_rotation=1)
    k = kerma_map("cylinder", shape, spacing, origin, scanner, p)[:, 0, 0]
    assert k.sum() * 2.0 / k[20] == pytest.approx(40.0, rel=0.01)


def test_patient_mode_on_water_cylinder_equals_cylinder_mode(scanner):
    shape, spacing, origin = (4, 84, 84), (10.0, 4.0, 4.0), (-15.0, -166.0, -166.0)
    z, y, x = _centres(shape, spacing, origin)
    labels = (x**2 + y**2 <= 160.0**2).astype(np.uint8)
    p = Protocol("axial", -20.0, 20.0, projections_per_rotation=8)
    kc = kerma_map("cylinder", shape, spacing, origin, scanner, p)
    kp = kerma_map("patient", shape, spacing, origin, scanner, p, labels=labels, medium_of_label=["air", "water"])
    inside = (x**2 + y**2 < 150.0**2) & (kc > 0)
    ratio = kp[inside] / kc[inside]
    assert abs(ratio.mean() - 1.0) < 0.02
    assert np.abs(ratio - 1.0).max() < 0.06
    outside = (x**2 + y**2 > 170.0**2) & (kc > 0)
    np.testing.assert_allclose(kp[outside], kc[outside], rtol=0.06)


def test_patient_mode_bone_attenuates_more(scanner):
    shape, spacing, origin = (1, 31, 31), (10.0, 10.0, 10.0), (0.0, -150.0, -150.0)
    z, y, x = _centres(shape, spacing, origin)
    body = (x**2 + y**2 <= 140.0**2).astype(np.uint8)
    p = Protocol("axial", 0.0, 0.0, projections_per_rotation=4)
    soft = kerma_map("patient", shape, spacing, origin, scanner, p, labels=body, medium_of_label=["air", "muscle"])
    bone = kerma_map("patient", shape, spacing, origin, scanner, p, labels=body, medium_of_label=["air", "spine_bone"])
    assert bone[0, 15, 15] < 0.2 * soft[0, 15, 15]


def test_helical_map_is_finite_and_positive_in_range(scanner):
    shape, spacing, origin = (12, 20, 20), (10.0, 20.0, 20.0), (-55.0, -190.0, -190.0)
    p = Protocol("helical", -40.0, 40.0, pitch=1.0, projections_per_rotation=8)
    k = kerma_map("cylinder", shape, spacing, origin, scanner, p)
    assert np.all(np.isfinite(k)) and k.dtype == np.float32
    assert np.all(k[2:10, 10, 10] > 0)


def test_bad_input(scanner):
    p = Protocol("axial", 0.0, 0.0, projections_per_rotation=2)
    with pytest.raises(InputError, match="mode"):
        kerma_map("sphere", (1, 1, 1), (1, 1, 1), (0, 0, 0), scanner, p)
    with pytest.raises(InputError, match="labels"):
        kerma_map("patient", (1, 1, 1), (1, 1, 1), (0, 0, 0), scanner, p)
    with pytest.raises(InputError, match="shape"):
        kerma_map("patient", (1, 2, 2), (1, 1, 1), (0, 0, 0), scanner, p, labels=np.zeros((1, 1, 1), np.uint8),
                  medium_of_label=["air"])
    with pytest.raises(InputError, match="no medium"):
        kerma_map("patient", (1, 1, 2), (1, 1, 1), (0, 0, 0), scanner, p, labels=np.array([[[0, 5]]], np.uint8),
                  medium_of_label=["air"])
    with pytest.raises(InputError, match="spacing"):
        kerma_map("cylinder", (1, 1, 1), (0, 1, 1), (0, 0, 0), scanner, p)
    for step in (-1.0, 0.0, float("nan"), "2"):  # a negative step used to fail deep in the ray set-up
        with pytest.raises(InputError, match=r"ray_step_mm must be None or a number > 0 \(mm\), got"):
            kerma_map("patient", (1, 1, 1), (1, 1, 1), (0, 0, 0), scanner, p, labels=np.zeros((1, 1, 1), np.uint8),
                      medium_of_label=["air"], ray_step_mm=step)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu(scanner):  # pragma: no cover - needs a GPU
    shape, spacing, origin = (3, 30, 30), (10.0, 10.0, 10.0), (-10.0, -145.0, -145.0)
    z, y, x = _centres(shape, spacing, origin)
    labels = (x**2 + y**2 <= 140.0**2).astype(np.uint8)
    p = Protocol("axial", 0.0, 0.0, projections_per_rotation=4)
    for mode in ("cylinder", "patient"):
        a = kerma_map(mode, shape, spacing, origin, scanner, p, labels=labels, medium_of_label=["air", "water"])
        b = kerma_map(mode, shape, spacing, origin, scanner, p, labels=labels, medium_of_label=["air", "water"],
                      device="cuda")
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-12)


def test_case_kerma_map_uses_profile_and_case_grid():
    from ctdose.config import load_profile
    from ctdose.physics.kerma import case_kerma_map
    from ctdose.physics.scanner import protocol_for_case, scanner_from_profile
    from ctdose.store import make_case

    cfg = load_profile("smoke", {"scanner.projections_per_rotation": 4, "inputs.kerma_grid_mm": 8.0})
    labels = np.zeros((3, 8, 8), np.uint8)
    ds = make_case(labels, (20.0, 40.0, 40.0), (-20.0, -140.0, -140.0), case_id="t1", roi_z_mm=[-20.0, 20.0])
    k = case_kerma_map(cfg, ds, "cylinder")
    direct = kerma_map("cylinder", labels.shape, (20.0, 40.0, 40.0), (-20.0, -140.0, -140.0),
                       scanner_from_profile(cfg), protocol_for_case(cfg, (-20.0, 20.0)), grid_mm=8.0)
    np.testing.assert_array_equal(k, direct)
    assert k.shape == labels.shape and k.max() > 0


def test_cylinder_single_projection_is_shared_by_similar_grids_only(scanner):
    """Cases of one cohort reuse the single-projection map; another bowtie does not."""
    from dataclasses import replace

    from ctdose.physics import kerma
    from ctdose.physics.scanner import Bowtie

    kerma._SINGLE_MAPS.clear()
    prot = Protocol("axial", 0.0, 0.0, projections_per_rotation=8)
    a = kerma_map("cylinder", (2, 30, 40), (5.0, 6.0, 6.0), (0.0, -87.0, -117.0), scanner, prot)
    b = kerma_map("cylinder", (3, 31, 41), (5.0, 6.0, 6.0), (0.0, -90.0, -120.0), scanner, prot)
    assert len(kerma._SINGLE_MAPS) == 1  # the second grid (a few mm wider) used the same map
    flat = replace(scanner, bowtie=Bowtie.flat())
    c = kerma_map("cylinder", (2, 30, 40), (5.0, 6.0, 6.0), (0.0, -87.0, -117.0), flat, prot)
    assert len(kerma._SINGLE_MAPS) == 2
    assert float(c.sum()) > float(a.sum())  # no bowtie: more kerma
    assert np.all(np.isfinite(b)) and float(b.max()) > 0
    kerma._SINGLE_MAPS.clear()
    fresh = kerma_map("cylinder", (2, 30, 40), (5.0, 6.0, 6.0), (0.0, -87.0, -117.0), scanner, prot)
    np.testing.assert_array_equal(fresh, a)


def test_kerma_follows_the_case_tube_current_exactly(scanner):
    """Two axial rotations (z = -20 and +20 mm, 40 mm beams) under a step profile of 100 and
    300 mA: the beam of one rotation does not reach the other's centre plane (its divergent
    width at y = +160 mm is 52 mm), so there the kerma is the constant protocol's times
    100/200 and 300/200 (the mean current over the scan stays 200 mA)."""
    from ctdose.physics.tube_current import TubeCurrentProfile, modulated_protocol

    constant = Protocol("axial", -40.0, 40.0, tube_current_ma=200.0, projections_per_rotation=8)
    profile = TubeCurrentProfile([-40.0, -1.0, 1.0, 40.0], [100.0, 100.0, 300.0, 300.0], "step")
    modulated, mean_ma = modulated_protocol(constant, profile, scanner.collimation_mm)
    assert mean_ma == pytest.approx(200.0)
    for z_mm, ratio in ((-20.0, 0.5), (20.0, 1.5)):  # one 1 mm slice in each centre plane
        shape, spacing, origin = (1, 9, 9), (1.0, 40.0, 40.0), (z_mm, -160.0, -160.0)
        for mode in ("cylinder", "patient"):
            labels = np.full(shape, 2, np.uint8) if mode == "patient" else None
            a = kerma_map(mode, shape, spacing, origin, scanner, constant, labels=labels)
            b = kerma_map(mode, shape, spacing, origin, scanner, modulated, labels=labels)
            assert np.all(a > 0)
            np.testing.assert_allclose(b / a, ratio, rtol=1e-5)


def test_case_kerma_map_follows_the_case_record_only_when_asked():
    from ctdose.config import load_profile
    from ctdose.physics.kerma import case_kerma_map
    from ctdose.physics.tube_current import TubeCurrentProfile
    from ctdose.store import make_case

    profile = TubeCurrentProfile([-40.0, -1.0, 1.0, 40.0], [100.0, 100.0, 300.0, 300.0], "step")
    labels = np.zeros((3, 8, 8), np.uint8)  # slices at z = -20, 0, +20 mm
    ds = make_case(labels, (20.0, 40.0, 40.0), (-20.0, -140.0, -140.0), case_id="clinical_t", roi_z_mm=[-40.0, 40.0],
                   **profile.to_attrs())
    over = {"scanner.projections_per_rotation": 4, "inputs.kerma_grid_mm": 8.0}
    constant = case_kerma_map(load_profile("smoke", over), ds, "cylinder")
    followed = case_kerma_map(load_profile("smoke", {**over, "scanner.tube_current_modulation": "ct"}), ds, "cylinder")
    # the outer 20 mm slices lie beyond the other rotation's beam; the middle one (z = 0)
    # gets the two halves of both beams alike: (0.5 + 1.5) / 2
    for k, ratio in enumerate((0.5, 1.0, 1.5)):
        assert float(followed[k].sum() / constant[k].sum()) == pytest.approx(ratio, rel=1e-5)
