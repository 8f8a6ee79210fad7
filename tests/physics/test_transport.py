"""Transport validation: Beer-Lambert, energy balance, estimators, absolute scaling, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.materials import Medium, filter_medium, get_medium
from ctdose.physics.mc import VoxelGeometry, simulate
from ctdose.physics.sources import CTSource, PointSource, rectangle_solid_angle_sr
from ctdose.physics.xsection import attenuation_table

SLICE_MM = 10.0
GAP_SLICES = 30  # 0.3 m of vacuum between slab and detector (2 mm wide): a narrow-beam geometry


def _narrow_beam_geometry(slab: Medium | None, mass_thickness_g_cm2: float, detector: Medium):
    """Column of 1 x 1 voxels (2 mm wide) along z: slab | 1 m vacuum | detector voxel.

    The slab is one 10 mm voxel whose density gives the wanted mass thickness; photons that
    scatter leave the 2 mm column long before the detector 0.3 m away (the detector subtends
    ~4e-5 sr from the slab).
    """
    n = 2 + GAP_SLICES
    media = [detector, slab or detector]
    mi = np.zeros((n, 1, 1), np.uint8)
    rho = np.zeros((n, 1, 1), np.float32)
    mi[0] = 1
    rho[0] = mass_thickness_g_cm2 / (SLICE_MM / 10.0)
    rho[-1] = detector.density_g_cm3
    return VoxelGeometry(mi, rho, media, (SLICE_MM, 2.0, 2.0), (0.0, 0.0, 0.0))


def _pencil(energy_kev=None, spectrum=None):
    return PointSource(
        (0.0, 0.0, -500.0), (0.0, 0.0, 1.0), energy_kev=energy_kev, spectrum=spectrum,
        collimation="cone", cone_half_angle_rad=1e-7,
    )


def _detector_signal(geo, src, n, seed):
    # majorant floor: enough track-length scoring sites in the (air) detector voxel
    res = simulate(geo, src, n, n_batches=10, seed=seed, keep_batches=True, majorant_floor_per_mm=0.2)
    w = np.zeros(geo.shape)
    w[-1] = 1.0
    return res.sum_with_sigma(w)


@pytest.mark.parametrize("energy_kev,thickness_cm", [(30.0, 2.0), (60.0, 10.0)])
def test_narrow_beam_transmission_is_beer_lambert(energy_kev, thickness_cm):
    water = get_medium("water")
    det = get_medium("water")
    mu_cm = float(attenuation_table([water], [energy_kev]).total_cm2_g[0, 0]) * water.density_g_cm3
    n = 60_000
    open_, s_open = _detector_signal(_narrow_beam_geometry(None, 0.0, det), _pencil(energy_kev), n, 1)
    slab, s_slab = _detector_signal(
        _narrow_beam_geometry(water, thickness_cm * water.density_g_cm3, det), _pencil(energy_kev), n, 2
    )
    ratio = slab / open_
    sigma = ratio * math.hypot(s_open / open_, s_slab / slab)
    expected = math.exp(-mu_cm * thickness_cm)
    print(f"transmission {energy_kev} keV, {thickness_cm} cm water: MC {ratio:.5f} +- {sigma:.5f}, exp(-mu t) {expected:.5f}")
    assert abs(ratio - expected) < 4 * sigma


@pytest.mark.parametrize("energy_kev", [33.10, 33.20])
def test_narrow_beam_transmission_is_beer_lambert_on_both_sides_of_iodines_k_edge(energy_kev):
    """2 % iodine in water, 1 cm, just below and just above the K edge (33.17 keV), inside one
    step of the tables' energy grid (33.00-33.25 keV): before the step was split at the edge,
    the transmission was exp(-1.51 mu t) and exp(-0.89 mu t)."""
    iodinated = Medium("iodinated water", 1.03, {1: 0.98 * 0.111894, 8: 0.98 * 0.888106, 53: 0.02})
    det = get_medium("water")
    mu_cm = float(attenuation_table([iodinated], [energy_kev]).total_cm2_g[0, 0]) * iodinated.density_g_cm3
    n = 60_000
    open_, s_open = _detector_signal(_narrow_beam_geometry(None, 0.0, det), _pencil(energy_kev), n, 1)
    slab, s_slab = _detector_signal(
        _narrow_beam_geometry(iodinated, iodinated.density_g_cm3, det), _pencil(energy_kev), n, 2
    )
    ratio = slab / open_
    sigma = ratio * math.hypot(s_open / open_, s_slab / slab)
    expected = math.exp(-mu_cm)
    print(f"transmission {energy_kev} keV, 1 cm 2 % iodine: MC {ratio:.5f} +- {sigma:.5f}, exp(-mu t) {expected:.5f}")
    assert abs(ratio - expected) < 4 * sigma


@pytest.mark.parametrize("estimator", ["expected_track_length", "track_length"])
def test_energy_balance_analogue_exact_and_track_length_statistical(estimator):
    water = get_medium("water")
    bone = get_medium("spine_bone")
    mi = np.zeros((12, 12, 12), np.uint8)
    mi[4:8, 4:8, 4:8] = 1
    rho = np.where(mi == 1, bone.density_g_cm3, water.density_g_cm3).astype(np.float32)
    geo = VoxelGeometry(mi, rho, [water, bone], (10.0, 10.0, 10.0), (-55.0, -55.0, -55.0))
    src = PointSource((0, 0, -300.0), (0, 0, 1), energy_kev=80.0, collimation="cone", cone_half_angle_rad=0.15)
    ana = simulate(geo, src, 40_000, n_batches=10, seed=3, estimator="analogue", keep_batches=True)
    assert ana.emitted_energy_ev == pytest.approx(80e3, rel=1e-9)
    # analogue: every keV is deposited or escapes (float32 transport, float64 tallies)
    assert ana.deposited_energy_ev + ana.escaped_energy_ev == pytest.approx(ana.emitted_energy_ev, rel=1e-5)
    trk = simulate(geo, src, 40_000, n_batches=10, seed=4, estimator=estimator, keep_batches=True)
    dep, sig = trk.sum_with_sigma(np.ones(geo.shape))
    dep_a, sig_a = ana.sum_with_sigma(np.ones(geo.shape))
    print(f"deposited per photon: analogue {dep_a:.1f} +- {sig_a:.1f} eV, {estimator} {dep:.1f} +- {sig:.1f} eV")
    # track length: deposited (expected value) + escaped (sampled) = emitted within the noise
    assert abs(dep + trk.escaped_energy_ev - trk.emitted_energy_ev) < 5 * max(sig, 1.0) + 0.01 * dep
    assert abs(dep - dep_a) < 4 * math.hypot(sig, sig_a)


@pytest.mark.parametrize("estimator", ["expected_track_length", "track_length", "collision"])
def test_expected_value_estimators_agree_with_analogue_per_region_and_are_less_noisy(estimator):
    water = get_medium("water")
    lung = get_medium("lung")
    mi = np.zeros((10, 10, 10), np.uint8)
    mi[:, :, 5:] = 1
    rho = np.where(mi == 1, lung.density_g_cm3, water.density_g_cm3).astype(np.float32)
    geo = VoxelGeometry(mi, rho, [water, lung], (10.0, 10.0, 10.0), (-45.0, -45.0, -45.0))
    src = PointSource((0, -400.0, 0), (0, 1, 0), energy_kev=50.0, collimation="fan", half_angles_rad=(0.12, 0.12))
    ana = simulate(geo, src, 50_000, seed=5, estimator="analogue", keep_batches=True)
    trk = simulate(geo, src, 50_000, seed=6, estimator=estimator, keep_batches=True)
    for region in (mi == 0, mi == 1):
        a, sa = ana.sum_with_sigma(region.astype(float))
        t, st = trk.sum_with_sigma(region.astype(float))
        assert abs(a - t) < 4 * math.hypot(sa, st), (a, sa, t, st)
    lung_vox = (mi == 1) & (ana.energy_ev > 0)
    assert np.median(trk.rel_sigma[lung_vox]) < np.median(ana.rel_sigma[lung_vox])


def test_dose_is_energy_over_mass_and_same_seed_same_result():
    water = get_medium("water")
    geo = VoxelGeometry(
        np.zeros((5, 5, 5), np.uint8), np.full((5, 5, 5), 1.0, np.float32), [water], (4.0, 4.0, 4.0), (-8.0, -8.0, -8.0)
    )
    src = PointSource((0, 0, -100.0), (0, 0, 1), energy_kev=40.0, collimation="cone", cone_half_angle_rad=0.05)
    a = simulate(geo, src, 5000, n_batches=5, seed=11)
    b = simulate(geo, src, 5000, n_batches=5, seed=11)
    c = simulate(geo, src, 5000, n_batches=5, seed=12)
    np.testing.assert_array_equal(a.energy_ev, b.energy_ev)
    assert not np.array_equal(a.energy_ev, c.energy_ev)
    mass_kg = 1.0 * 0.4**3 / 1000.0
    np.testing.assert_allclose(a.dose_gy, a.energy_ev * 1.602176634e-19 / mass_kg, rtol=1e-12)
    assert not a.per_mas
    with pytest.raises(InputError):
        _ = a.dose_gy_per_mas


def test_ct_source_absolute_air_kerma_across_the_fan():
    """Primary air kerma per mAs in the isocentre plane from MC equals the spectrum's own value.

    Independent path: B1's ``air_kerma_gy_per_mas_at_isocentre(gamma)`` (spectrum x bowtie x
    mu_en/rho of air, inverse square to distance D on the ray) times cos^2(gamma) for the
    plane y = 0, against the MC's track-length kerma in a row of 4 mm air voxels.
    """
    from ctdose.physics.scanner import CTScanner, Protocol, generic_body_bowtie
    from ctdose.physics.spectrum import spekpy_spectrum

    scanner = CTScanner(spekpy_spectrum(120.0), bowtie=generic_body_bowtie(), collimation_mm=10.0)
    protocol = Protocol(mode="axial", z_start_mm=-5.0, z_end_mm=5.0, projections_per_rotation=1, rotation="discrete",
                        tube_current_ma=100.0, rotation_time_s=0.5)
    air = get_medium("air")
    nx = 101
    geo = VoxelGeometry(np.zeros((1, 1, nx), np.uint8), np.full((1, 1, nx), air.density_g_cm3, np.float32),
                        [air], (4.0, 4.0, 4.0), (0.0, 0.0, -(nx - 1) / 2 * 4.0))
    src = CTSource(scanner, protocol)
    d = scanner.source_to_isocentre_mm
    assert src.solid_angle_sr == pytest.approx(
        rectangle_solid_angle_sr(scanner.fan_half_angle_rad(), math.atan(5.0 / d))
    )
    res = simulate(geo, src, 200_000, n_batches=10, seed=7, majorant_floor_per_mm=1.0, keep_batches=True)
    x = (np.arange(nx) - (nx - 1) / 2) * 4.0
    gamma = np.arctan(x / d)  # source at (0, -D): fan angle towards +x
    expected = np.array([scanner.air_kerma_gy_per_mas_at_isocentre(g) for g in gamma]) * np.cos(gamma) ** 2
    mc, sig = res.sum_with_sigma(np.ones(geo.shape), quantity="dose_gy")
    ratio = mc / expected.sum()
    rel = sig / mc
    print(f"air kerma across the fan, MC / spectrum model: {ratio:.4f} +- {rel:.4f}")
    assert abs(ratio - 1) < 4 * rel + 0.01
    # the bowtie shape: edges get far less than the centre in both
    prof = res.dose_gy_per_mas[0, 0]
    assert prof[:5].mean() / prof[48:53].mean() == pytest.approx(expected[:5].mean() / expected[48:53].mean(), rel=0.15)


def _small_geo():
    water = get_medium("water")
    return VoxelGeometry(
        np.zeros((3, 3, 3), np.uint8), np.ones((3, 3, 3), np.float32), [water], (10.0, 10.0, 10.0), (-10.0, -10.0, -10.0)
    )


def test_bad_input_is_refused_with_clear_errors():
    geo = _small_geo()
    src = PointSource((0, 0, -100.0), (0, 0, 1), energy_kev=60.0, collimation="cone", cone_half_angle_rad=0.1)
    with pytest.raises(InputError, match="n_photons"):
        simulate(geo, src, 0)
    bad = replace(geo, density_g_cm3=-np.ones((3, 3, 3), np.float32))
    with pytest.raises(InputError, match="negative density"):
        simulate(bad, src, 100)
    empty = Medium("nothing", 1.0, {})
    with pytest.raises(InputError, match="no elemental composition"):
        simulate(replace(geo, media=[empty]), src, 100)
    away = PointSource((0, 0, -100.0), (0, 0, -1), energy_kev=60.0, collimation="cone", cone_half_angle_rad=0.1)
    with pytest.raises(InputError, match="pointing away"):
        simulate(geo, away, 100)

    class NaNSpectrum:
        energy_kev = np.array([30.0, 40.0])
        fluence_per_mas_per_mm2_at_1m = np.array([1.0, np.nan])
        absolute = False

    with pytest.raises(InputError, match="NaN"):
        PointSource((0, 0, -100.0), (0, 0, 1), spectrum=NaNSpectrum(), collimation="cone")
    with pytest.raises(InputError, match="media_index"):
        simulate(replace(geo, media_index=np.full((3, 3, 3), 2, np.uint8)), src, 100)
    many = [get_medium("water")] * 300
    with pytest.raises(InputError, match="300 media given, at most 256"):
        simulate(replace(geo, media_index=np.full((3, 3, 3), 299, np.int16), media=many), src, 100)


def test_filter_hvl_of_spectrum_matches_transport():
    """HVL of B1's spectrum model (air-kerma weighted) reproduced by the MC (TG-195 Case 1 idea)."""
    from ctdose._data import read_table
    from ctdose.physics.spectrum import Spectrum

    t = read_table("tg195/spectrum_RQR8_100kVp_W_Al.csv")
    spec = Spectrum(t.iloc[:, 0].to_numpy(float) + 0.25, t.iloc[:, 1].to_numpy(float), "RQR8", absolute=False)
    al = filter_medium("aluminium")
    hvl_mm = spec.hvl_mm(al)
    air = get_medium("air")
    n = 60_000
    k0, s0 = _detector_signal(_narrow_beam_geometry(None, 0.0, air), _pencil(spectrum=spec), n, 8)
    k1, s1 = _detector_signal(_narrow_beam_geometry(al, hvl_mm / 10 * al.density_g_cm3, air), _pencil(spectrum=spec), n, 9)
    ratio = k1 / k0
    sigma = ratio * math.hypot(s0 / k0, s1 / k1)
    print(f"RQR8 HVL {hvl_mm:.3f} mm Al: MC air-kerma ratio {ratio:.4f} +- {sigma:.4f} (TG-195 EGSnrc 0.5002)")
    assert abs(ratio - 0.5) < 4 * sigma + 0.005


def _bone_in_water_in_air(n: int, water: slice, bone: slice, origin_mm: float):
    """Cube of ``n``^3 voxels of 8 mm: air around a water cube with a bone core (labels 0/1/2)."""
    media = [get_medium("air"), get_medium("water"), get_medium("spine_bone")]
    mi = np.zeros((n, n, n), np.uint8)
    mi[water, water, water] = 1
    mi[bone, bone, bone] = 2
    rho = np.array([media[0].density_g_cm3, 1.0, media[2].density_g_cm3], np.float32)[mi]
    return mi, VoxelGeometry(mi, rho, media, (8.0, 8.0, 8.0), (origin_mm,) * 3)


@pytest.mark.parametrize("estimator", ["track_length", "collision"])
def test_block_majorant_is_unbiased(estimator):
    mi, geo = _bone_in_water_in_air(16, slice(3, 13), slice(6, 9), -60.0)
    src = PointSource((0, -400.0, 0), (0, 1, 0), energy_kev=60.0, collimation="fan", half_angles_rad=(0.2, 0.2))
    glob = simulate(geo, src, 120_000, seed=1, keep_batches=True, estimator=estimator, majorant="global")
    blk = simulate(geo, src, 120_000, seed=2, keep_batches=True, estimator=estimator, majorant="block", block_vox=4)
    for region in (mi == 1, mi == 2, mi == 0):
        a, sa = glob.sum_with_sigma(region.astype(float))
        b, sb = blk.sum_with_sigma(region.astype(float))
        assert abs(a - b) < 4 * math.hypot(sa, sb), (a, sa, b, sb)
    assert blk.deposited_energy_ev + blk.escaped_energy_ev == pytest.approx(blk.emitted_energy_ev, rel=0.02)


def test_collision_steps_agree_fused_several_sites_and_one_site_per_call(monkeypatch):
    """The collision estimator's three steps, each forced through the thresholds on the last
    step's real fraction: flight and interaction in one kernel over the pool; up to
    ``COLLISION_SITES_PER_CALL`` flights per call, then the interaction kernel on the gathered
    real collisions; one flight per call, then the same. The same energy per region within
    the noise, and energy balance. The bone in this phantom keeps most sites virtual, so the
    default thresholds run the several-sites step after the first one (checked too)."""
    from ctdose.physics import kernels, transport

    mi, geo = _bone_in_water_in_air(16, slice(3, 13), slice(6, 9), -60.0)
    src = PointSource((0, -400.0, 0), (0, 1, 0), energy_kev=60.0, collimation="fan", half_angles_rad=(0.2, 0.2))
    calls = {"fused": [], "sites": []}
    fused_step = transport._step_collision_interact
    sites_kernel = kernels.advance_collision_sites

    def spy(st, *args):
        calls["fused"].append(len(st))
        return fused_step(st, *args)

    def sites_spy(*args):
        calls["sites"].append(len(args[0]))
        return sites_kernel(*args)

    monkeypatch.setattr(transport, "_step_collision_interact", spy)
    monkeypatch.setattr(kernels, "EAGER_KERNELS", kernels.EAGER_KERNELS[:8] + (sites_spy,))
    default = simulate(geo, src, 20_000, seed=3, estimator="collision", compile=False)
    assert len(calls["fused"]) <= 2  # the first step (real fraction unknown, 1) and not later ones
    assert len(calls["sites"]) > 10
    runs = {}
    for name, min_real, sites_max in [("fused", 0.0, 0.0), ("sites", 2.0, 2.0), ("one site", 2.0, 0.0)]:
        monkeypatch.setattr(transport, "_FUSED_INTERACTION_MIN_REAL", min_real)
        monkeypatch.setattr(transport, "_SITES_PER_CALL_MAX_REAL", sites_max)
        for c in calls.values():
            c.clear()
        runs[name] = simulate(geo, src, 120_000, seed=len(runs) + 1, keep_batches=True, estimator="collision",
                              compile=False)
        assert (len(calls["fused"]) > 10) == (name == "fused"), name
        assert (len(calls["sites"]) > 10) == (name == "sites"), name
    for name in ("fused", "sites"):
        for region in (mi == 1, mi == 2, mi == 0):
            a, sa = runs[name].sum_with_sigma(region.astype(float))
            b, sb = runs["one site"].sum_with_sigma(region.astype(float))
            print(f"{name}: {a:.1f} +- {sa:.1f}, one site: {b:.1f} +- {sb:.1f} eV per photon")
            assert abs(a - b) < 4 * math.hypot(sa, sb), (name, a, sa, b, sb)
    for res in (*runs.values(), default):
        assert res.deposited_energy_ev + res.escaped_energy_ev == pytest.approx(res.emitted_energy_ev, rel=0.02)


def test_collision_void_flights_change_no_region_s_energy(monkeypatch):
    """A water cube with a bone core in a wide air box (56 mm of air beyond the water's
    neighbours): the collision estimator's void flights (the default) against the same runs
    with every void distance 0 (no void flights): the same energy per region (air included)
    within the noise, energy balance, and fewer flights per photon."""
    from ctdose.physics import kernels, void

    mi, geo = _bone_in_water_in_air(20, slice(8, 12), slice(9, 11), -76.0)
    src = PointSource((0, -400.0, 0), (0, 1, 0), energy_kev=60.0, collimation="fan", half_angles_rad=(0.2, 0.2))
    sites_kernel = kernels.EAGER_KERNELS[8]
    flights = []

    def count(*args):
        out = sites_kernel(*args)
        flights.append(int(out[10].sum()))
        return out

    monkeypatch.setattr(kernels, "EAGER_KERNELS", kernels.EAGER_KERNELS[:8] + (count,))
    runs, per_photon = {}, {}
    for name in ("void flights", "none"):
        if name == "none":
            monkeypatch.setattr(void, "void_distance_mm", lambda rho, spacing: np.zeros(np.shape(rho), np.float32))
        flights.clear()
        runs[name] = simulate(geo, src, 100_000, seed=len(runs) + 5, keep_batches=True, estimator="collision",
                              compile=False)
        per_photon[name] = sum(flights) / 100_000
    print(f"flights per photon in the several-flights steps: {per_photon}")
    assert per_photon["void flights"] < 0.8 * per_photon["none"]
    for label, region in (("water", mi == 1), ("bone", mi == 2), ("air", mi == 0)):
        a, sa = runs["void flights"].sum_with_sigma(region.astype(float))
        b, sb = runs["none"].sum_with_sigma(region.astype(float))
        print(f"{label}: {a:.3f} +- {sa:.3f} with void flights, {b:.3f} +- {sb:.3f} without (eV per photon)")
        assert abs(a - b) < 4 * math.hypot(sa, sb), (label, a, sa, b, sb)
    for res in runs.values():
        assert res.deposited_energy_ev + res.escaped_energy_ev == pytest.approx(res.emitted_energy_ev, rel=0.02)


def test_several_free_paths_per_step_equal_one_path_per_step(monkeypatch):
    """The photon tail samples many free paths per step: the same process as one per step."""
    from ctdose.physics import transport

    mi, geo = _bone_in_water_in_air(12, slice(2, 10), slice(5, 7), -44.0)
    src = PointSource((0, -400.0, 0), (0, 1, 0), energy_kev=60.0, collimation="fan", half_angles_rad=(0.15, 0.15))
    many = simulate(geo, src, 30_000, seed=11, keep_batches=True, estimator="analogue")
    monkeypatch.setattr(transport, "_PATH_SITES_PER_STEP", 1)  # one free path per photon and step
    one = simulate(geo, src, 30_000, seed=12, keep_batches=True, estimator="analogue")
    for region in (mi == 1, mi == 2):
        a, sa = many.sum_with_sigma(region.astype(float))
        b, sb = one.sum_with_sigma(region.astype(float))
        assert abs(a - b) < 4 * math.hypot(sa, sb), (a, sa, b, sb)


def test_block_majorant_is_the_largest_mu_of_each_block():
    """Every block's majorant bounds mu of each of its voxels and touches the largest (brute force)."""
    from ctdose.physics.transport import _MAJORANT_MARGIN, build_block_majorant, build_tables

    rng = np.random.default_rng(5)
    names = ["air", "lung", "water", "spine_bone", "rib_bone"]
    media = [get_medium(n) for n in names]
    shape, b = (11, 7, 13), 4  # not multiples of the block edge: partial blocks at the far faces
    mi = rng.integers(0, len(media), shape).astype(np.uint8)
    mi[:4, :4, :4] = 2  # one block of water only
    rho = (rng.uniform(0.0, 2.0, shape) * (rng.random(shape) > 0.2)).astype(np.float32)
    tab = build_tables(media, np.full(len(media), 2.0), 150.0, "cpu")
    blk = build_block_majorant(mi, rho, tab, b)
    assert blk.n_blocks == (3, 2, 4)
    # at the start of every table row (just inside it, past an absorption edge)
    n_rows = tab.n_rows
    total = tab.total_ends[:, :, 0]
    f_start = tab.rows.f_start
    maj = (blk.maj_a.numpy().astype(np.float64).reshape(-1, n_rows)
           + f_start * blk.maj_b.numpy().astype(np.float64).reshape(-1, n_rows))
    for bz in range(3):
        for by in range(2):
            for bx in range(4):
                sl = np.s_[bz * b:(bz + 1) * b, by * b:(by + 1) * b, bx * b:(bx + 1) * b]
                mu = rho[sl].ravel()[:, None].astype(np.float64) * total[mi[sl].ravel()]
                expect = np.maximum(mu.max(axis=0) * _MAJORANT_MARGIN, 1e-12)
                np.testing.assert_allclose(maj[(bz * 2 + by) * 4 + bx], expect, rtol=2e-6)
    water = total[2] * rho[:4, :4, :4].max() * _MAJORANT_MARGIN
    np.testing.assert_allclose(maj[0], water, rtol=2e-6)


def test_tables_share_the_media_part_and_scale_the_majorant_with_density():
    from ctdose.physics.transport import build_tables

    media = [get_medium("water"), get_medium("spine_bone")]
    a = build_tables(media, np.array([1.0, 0.0]), 150.0, "cpu")
    b = build_tables(media, np.array([2.0, 0.0]), 150.0, "cpu")
    assert a.total_a is b.total_a and a.scatter is b.scatter  # built once
    np.testing.assert_allclose(b.maj_a.numpy(), 2.0 * a.maj_a.numpy(), rtol=1e-6)
    water = a.total_a.numpy()[: a.n_rows]
    np.testing.assert_allclose(a.maj_a.numpy(), water * 1.00001, rtol=1e-6)


def test_batches_of_a_large_grid_run_one_at_a_time_and_agree(monkeypatch):
    """Above the tally budget each batch runs alone and its tally is released before the next."""
    import gc
    import weakref

    import ctdose.physics.mc as mc

    geo = VoxelGeometry(np.zeros((6, 6, 6), np.uint8), np.ones((6, 6, 6), np.float32), [get_medium("water")],
                        (5.0, 5.0, 5.0), (-12.5, -12.5, -12.5))
    src = PointSource((0, 0, -100.0), (0, 0, 1), energy_kev=60.0, collimation="cone", cone_half_angle_rad=0.1)
    shared = simulate(geo, src, 40_000, n_batches=8, seed=3, keep_batches=True)
    live, batch_counts = [], []
    real = mc.run_transport

    def spy(grid, tab, sample, batch_sizes, *args, **kwargs):
        gc.collect()
        live.append(sum(r() is not None for r in refs))
        batch_counts.append(len(batch_sizes))
        tally = real(grid, tab, sample, batch_sizes, *args, **kwargs)
        refs.append(weakref.ref(tally.energy_kev))
        return tally

    refs = []
    monkeypatch.setattr(mc, "run_transport", spy)
    monkeypatch.setattr(mc, "_MAX_TALLY_BYTES", 8 * 216)  # one batch of this grid
    alone = simulate(geo, src, 40_000, n_batches=8, seed=3, keep_batches=True)
    assert batch_counts == [1] * 8 and live == [0] * 8
    body = alone.energy_ev.sum()
    sigma = math.hypot(*(r.sum_with_sigma(np.ones(geo.shape, bool))[1] for r in (alone, shared)))
    assert abs(body - shared.energy_ev.sum()) < 4 * sigma
