"""Photon sources: geometry conventions, field shapes, solid angles, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctdose.errors import InputError
from ctdose.physics.quasi_random import BatchSobol
from ctdose.physics.sources import CTSource, PointSource, rectangle_solid_angle_sr, tangent_rectangle_solid_angle_sr


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


#: Both ways of drawing source photons: independent random numbers, or a scrambled Sobol'
#: sequence mapped by inversion (simulate's default, ctdose.physics.quasi_random).
SAMPLING = ["random", "sobol"]


def _draw(src, n, seed, how):
    gen = _gen(seed)
    if how == "random":
        return src.sample(n, gen)
    return src.sample(n, gen, BatchSobol([n], src.sample_dims, gen).draw(n))


def test_rectangle_solid_angle_matches_numerical_integral():
    a1, a2 = 0.4, 0.1
    t1, t2 = math.tan(a1), math.tan(a2)
    a = np.linspace(-t1, t1, 2001)
    b = np.linspace(-t2, t2, 2001)
    aa, bb = np.meshgrid(a, b)
    integrand = (1 + aa**2 + bb**2) ** -1.5  # solid angle per unit tangent-plane area
    numeric = np.trapezoid(np.trapezoid(integrand, a, axis=1), b)
    assert rectangle_solid_angle_sr(a1, a2) == pytest.approx(numeric, rel=1e-5)


def test_off_axis_rectangle_solid_angle():
    # the symmetric field, a numerical integral of an off-axis one, and additivity
    assert tangent_rectangle_solid_angle_sr((-math.tan(0.4), math.tan(0.4)), (-math.tan(0.1), math.tan(0.1))) == (
        pytest.approx(rectangle_solid_angle_sr(0.4, 0.1), rel=1e-12))
    a = np.linspace(0.1, 0.5, 2001)
    b = np.linspace(-0.3, 0.2, 2001)
    aa, bb = np.meshgrid(a, b)
    numeric = np.trapezoid(np.trapezoid((1 + aa**2 + bb**2) ** -1.5, a, axis=1), b)
    assert tangent_rectangle_solid_angle_sr((0.1, 0.5), (-0.3, 0.2)) == pytest.approx(numeric, rel=1e-6)
    assert tangent_rectangle_solid_angle_sr((0.1, 0.5), (-0.3, 0.2)) == pytest.approx(
        tangent_rectangle_solid_angle_sr((0.1, 0.3), (-0.3, 0.2)) + tangent_rectangle_solid_angle_sr((0.3, 0.5), (-0.3, 0.2)))


@pytest.mark.parametrize("how", SAMPLING)
def test_off_axis_field_is_isotropic_and_bounded(how):
    field = ((0.1, 0.5), (-0.3, 0.2))
    src = PointSource((0, 0, 0), (0, 0, 1), energy_kev=20.0, fan_axis=(1, 0, 0), field_tan=field)
    assert src.solid_angle_sr == pytest.approx(tangent_rectangle_solid_angle_sr(*field))
    st = _draw(src, 400_000, 4, how)
    a, b = st.u.numpy() / st.w.numpy(), st.v.numpy() / st.w.numpy()  # e1 = +x, e2 = direction x e1 = +y
    assert a.min() >= 0.1 - 1e-5 and a.max() <= 0.5 + 1e-5 and b.min() >= -0.3 - 1e-5 and b.max() <= 0.2 + 1e-5
    # uniform per solid angle: the share of each half equals its solid angle share
    share = np.mean(a < 0.3)
    expected = tangent_rectangle_solid_angle_sr((0.1, 0.3), field[1]) / src.solid_angle_sr
    assert share == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / a.size))
    plane = PointSource((0, 0, 0), (0, 0, 1), energy_kev=20.0, fan_axis=(1, 0, 0), field_tan=field, sampling="plane")
    st = _draw(plane, 400_000, 5, how)
    assert np.mean(st.u.numpy() / st.w.numpy() < 0.3) == pytest.approx(0.5, abs=0.005)
    with pytest.raises(InputError, match="field_tan"):
        PointSource((0, 0, 0), (0, 0, 1), energy_kev=20.0, field_tan=((0.5, 0.1), (0, 1)))


@pytest.mark.parametrize("how", SAMPLING)
def test_fan_is_isotropic_within_the_field(how):
    src = PointSource((0, 0, 0), (1, 0, 0), energy_kev=50.0, collimation="fan", half_angles_rad=(0.5, 0.05),
                      fan_axis=(0, 1, 0))
    st = _draw(src, 200_000, 1, how)
    u, v, w = st.u.numpy(), st.v.numpy(), st.w.numpy()
    np.testing.assert_allclose(u**2 + v**2 + w**2, 1.0, atol=1e-5)
    assert np.all(np.abs(np.arctan2(v, u)) <= 0.5 + 1e-5) and np.all(np.abs(np.arctan2(w, u)) <= 0.05 + 1e-5)
    # isotropic: the density in u = cos(angle to the axis) is flat near the axis, so the fraction
    # within a small cone equals its solid angle over the field's
    c = 0.02
    frac = np.mean(u > math.cos(c))
    expected = 2 * math.pi * (1 - math.cos(c)) / src.solid_angle_sr
    assert frac == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("how", SAMPLING)
def test_cone_directions_and_spectrum_sampling(how):
    class Spec:
        energy_kev = np.array([30.0, 60.0])
        fluence_per_mas_per_mm2_at_1m = np.array([1.0, 3.0])
        absolute = True

    src = PointSource((1, 2, 3), (0, 0, -1), spectrum=Spec(), collimation="cone", cone_half_angle_rad=0.2)
    st = _draw(src, 100_000, 2, how)
    cos = -st.w.numpy()
    assert cos.min() >= math.cos(0.2) - 1e-6
    # uniform in cos within the cone
    assert np.mean(cos > (1 + math.cos(0.2)) / 2) == pytest.approx(0.5, abs=0.01)
    e = st.energy_kev.numpy()
    assert np.mean(e > 45.0) == pytest.approx(0.75, abs=0.01)  # bins of width 30 keV, 1:3
    assert src.photons_per_mas == pytest.approx(4.0 * 1e6 * src.solid_angle_sr)


def test_ct_source_geometry_follows_the_scanner_convention():
    from ctdose.physics.scanner import CTScanner, Protocol, generic_body_bowtie
    from ctdose.physics.spectrum import spekpy_spectrum

    scanner = CTScanner(spekpy_spectrum(120.0), bowtie=generic_body_bowtie())
    protocol = Protocol(mode="axial", z_start_mm=0.0, z_end_mm=80.0, projections_per_rotation=8, rotation="discrete")
    src = CTSource(scanner, protocol)
    st = src.sample(50_000, _gen(3))
    x, y, z = st.x.numpy(), st.y.numpy(), st.z.numpy()
    d = scanner.source_to_isocentre_mm
    np.testing.assert_allclose(np.hypot(x, y), d, rtol=1e-5)
    # central ray through the isocentre: direction ~ -(x, y)/D within the fan half-angle
    cosang = -(x * st.u.numpy() + y * st.v.numpy()) / d / np.hypot(st.u.numpy(), st.v.numpy())
    assert np.all(cosang >= math.cos(scanner.fan_half_angle_rad()) - 1e-5)
    ang = np.mod(np.arctan2(x, -y), 2 * math.pi)  # a from (D sin a, -D cos a)
    np.testing.assert_allclose(np.sort(np.unique(np.round(ang, 4))), np.round(src.angle_rad[:8], 4), atol=1e-3)
    assert set(np.round(np.unique(z), 3)) == set(np.round(src.z_mm, 3))
    # bowtie: weights below 1, smallest at the fan edges
    wt = st.weight.numpy()
    gamma = np.arccos(np.clip(cosang, -1, 1))
    assert wt.max() <= 1.0 + 1e-6 and wt[gamma > 0.35].mean() < wt[gamma < 0.05].mean()
    assert src.dose_scale_per_mas == pytest.approx(src.photons_per_mas * src.mas.sum() / (200.0 * 1.0))


def test_ct_source_weight_is_the_bowtie_transmission_at_each_photons_fan_angle():
    """A 60 keV CT source with the generic body bowtie, one projection from (0, -D): every
    photon's weight is the bowtie's transmission at its own in-plane fan angle atan2(u, v),
    within the source's lookup table's interpolation (largest deviation 0.8 %; a table over
    tan(gamma) instead of gamma is 16 % off near 0.2 rad)."""
    from ctdose.physics.scanner import CTScanner, Protocol, generic_body_bowtie
    from ctdose.physics.spectrum import Spectrum

    scanner = CTScanner(Spectrum(np.array([60.0]), np.array([1.0]), "60 keV", absolute=False),
                        bowtie=generic_body_bowtie(), collimation_mm=10.0)
    protocol = Protocol(mode="axial", z_start_mm=0.0, z_end_mm=0.0, projections_per_rotation=1, rotation="discrete")
    st = CTSource(scanner, protocol).sample(20_000, _gen(1))
    gamma = np.arctan2(st.u.numpy().astype(np.float64), st.v.numpy().astype(np.float64))
    assert np.abs(gamma).max() > 0.9 * scanner.fan_half_angle_rad()  # the whole fan
    np.testing.assert_allclose(st.weight.numpy(), scanner.bowtie.transmission(60.0, gamma), rtol=0.02)


def _gantry_angle(st) -> np.ndarray:
    """Gantry angle a of each photon's focal spot (D sin a, -D cos a)."""
    return np.mod(np.arctan2(st.x.numpy().astype(np.float64), -st.y.numpy().astype(np.float64)), 2 * math.pi)


@pytest.mark.parametrize("how", SAMPLING)
def test_ct_source_continuous_rotation_is_uniform_over_the_rotation(how):
    # four positions per rotation, continuous: gantry angles uniform over 2 pi (24 bins,
    # chi-square), z only at the axial rotation centres; discrete: exactly the four angles
    from scipy import stats

    from ctdose.physics.scanner import CTScanner, Protocol
    from ctdose.physics.spectrum import spekpy_spectrum

    scanner = CTScanner(spekpy_spectrum(120.0))
    protocol = Protocol(mode="axial", z_start_mm=0.0, z_end_mm=80.0, projections_per_rotation=4, start_angle_deg=30.0)
    st = _draw(CTSource(scanner, protocol), 200_000, 5, how)
    counts = np.histogram(_gantry_angle(st), bins=24, range=(0.0, 2 * math.pi))[0]
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert stats.chi2.sf(chi2, 23) > 1e-4, (chi2, counts)
    assert set(np.round(np.unique(st.z.numpy()), 3)) == {20.0, 60.0}
    discrete = Protocol(mode="axial", z_start_mm=0.0, z_end_mm=80.0, projections_per_rotation=4, start_angle_deg=30.0,
                        rotation="discrete")
    ang = _gantry_angle(_draw(CTSource(scanner, discrete), 20_000, 5, how))
    np.testing.assert_allclose(np.unique(np.round(np.degrees(ang), 2)), [30.0, 120.0, 210.0, 300.0], atol=0.01)


@pytest.mark.parametrize("how", SAMPLING)
def test_ct_source_continuous_helix(how):
    # each photon's focal spot lies on the helix z = z0 + feed * (a - a0) / 2 pi, and z is
    # uniform over the scan range (constant tube current)
    from scipy import stats

    from ctdose.physics.scanner import CTScanner, Protocol
    from ctdose.physics.spectrum import spekpy_spectrum

    scanner = CTScanner(spekpy_spectrum(120.0), collimation_mm=40.0)
    protocol = Protocol(mode="helical", z_start_mm=-30.0, z_end_mm=90.0, pitch=1.5, projections_per_rotation=6,
                        start_angle_deg=45.0)
    st = _draw(CTSource(scanner, protocol), 100_000, 6, how)
    z = st.z.numpy().astype(np.float64)
    turns_from_z = (z + 30.0) / (1.5 * 40.0)
    turns_from_angle = (_gantry_angle(st) - math.radians(45.0)) / (2 * math.pi)
    off = np.mod(turns_from_z - turns_from_angle + 0.5, 1.0) - 0.5  # circular difference, turns
    assert np.abs(off).max() < 1e-4
    assert stats.kstest((z + 30.0) / 120.0, "uniform").pvalue > 1e-3
    assert z.min() < -29.0 and z.max() > 89.0


def test_bad_source_parameters():
    with pytest.raises(InputError):
        PointSource((0, 0, 0), (0, 0, 0), energy_kev=50.0)
    with pytest.raises(InputError):
        PointSource((0, 0, 0), (0, 0, 1), energy_kev=float("nan"))
    with pytest.raises(InputError):
        PointSource((0, 0, 0), (0, 0, 1), energy_kev=50.0, half_angles_rad=(2.0, 0.1))


@pytest.mark.parametrize("field", [((-0.45, 0.45), (-0.04, 0.04)), ((0.1, 0.8), (-0.3, 0.2))])
def test_field_inversion_is_the_exact_inverse_of_the_solid_angle_distribution(field):
    """a(ua) splits the field's solid angle at ua (inclusion-exclusion of corner rectangles),
    and b(ub) given a splits the line's density (1 + a^2 + b^2)^(-3/2) at ub (numerical
    quadrature): both independent of the Newton / closed-form inversion."""
    from scipy import integrate

    from ctdose.physics.sources import _rectangle_from_uniforms

    (a0, a1), (b0, b1) = field
    omega = tangent_rectangle_solid_angle_sr(*field)
    ua = torch.tensor([1e-6, 0.1, 0.37, 0.5, 0.81, 0.999999], dtype=torch.float64)
    ub = torch.tensor([0.5, 0.02, 0.9, 0.3, 0.65, 0.5], dtype=torch.float64)
    a, b = _rectangle_from_uniforms(ua, ub, *field)
    for k in range(ua.numel()):
        ak, bk = float(a[k]), float(b[k])
        share = tangent_rectangle_solid_angle_sr((a0, ak), (b0, b1)) / omega
        assert share == pytest.approx(float(ua[k]), abs=2e-6)  # float32 a
        line = integrate.quad(lambda t: (1 + ak * ak + t * t) ** -1.5, b0, b1)[0]
        part = integrate.quad(lambda t: (1 + ak * ak + t * t) ** -1.5, b0, bk)[0]
        assert part / line == pytest.approx(float(ub[k]), abs=2e-6)
    # plane sampling: linear
    a, b = _rectangle_from_uniforms(ua, ub, *field, per_solid_angle=False)
    np.testing.assert_allclose(a.numpy(), a0 + ua.numpy() * (a1 - a0), atol=1e-6)


def test_sobol_photons_fill_the_spectrum_and_the_field_evenly():
    """2^14 Sobol' photons: every spectrum bin gets its share to within a few photons, and the
    four quadrants of the field their solid-angle shares to 1e-3 (random sampling: about 4e-3)."""
    class Spec:
        energy_kev = np.array([20.0, 40.0, 60.0, 80.0, 100.0])
        fluence_per_mas_per_mm2_at_1m = np.array([0.5, 3.0, 4.0, 2.0, 0.5])
        absolute = True

    field = ((0.1, 0.8), (-0.3, 0.2))
    src = PointSource((0, 0, 0), (0, 0, 1), spectrum=Spec(), fan_axis=(1, 0, 0), field_tan=field)
    n = 1 << 14
    st = _draw(src, n, 3, "sobol")
    e = st.energy_kev.numpy()
    p = Spec.fluence_per_mas_per_mm2_at_1m / Spec.fluence_per_mas_per_mm2_at_1m.sum()
    counts = np.histogram(e, bins=[10, 30, 50, 70, 90, 110])[0]
    assert np.abs(counts - n * p).max() <= 2
    assert e.mean() == pytest.approx(float((p * Spec.energy_kev).sum()), rel=2e-4)
    a, b = st.u.numpy() / st.w.numpy(), st.v.numpy() / st.w.numpy()
    for (alo, ahi), (blo, bhi) in (((0.1, 0.45), (-0.3, -0.05)), ((0.45, 0.8), (-0.05, 0.2))):
        share = np.mean((a >= alo) & (a < ahi) & (b >= blo) & (b < bhi))
        assert share == pytest.approx(tangent_rectangle_solid_angle_sr((alo, ahi), (blo, bhi)) / src.solid_angle_sr,
                                      abs=1e-3)


@pytest.mark.parametrize(
    "energies, match",
    [
        ([60.0, -40.0, 80.0], r"source spectrum: energies must be >= 1 keV, got -40 keV"),
        ([0.5, 60.0, 80.0], r"source spectrum: energies must be >= 1 keV, got 0\.5 keV"),
        ([60.0, 40.0, 80.0], r"source spectrum: energies must be strictly increasing"),
        ([60.0, 60.0, 80.0], r"source spectrum: energies must be strictly increasing"),
    ],
)
def test_spectrum_object_with_bad_energies_is_refused(energies, match):
    class Spec:  # not a Spectrum (which checks its energies itself)
        energy_kev = np.array(energies)
        fluence_per_mas_per_mm2_at_1m = np.array([1.0, 2.0, 1.0])
        absolute = False

    with pytest.raises(InputError, match=match):
        PointSource((0, 0, -100.0), (0, 0, 1), spectrum=Spec(), collimation="cone", cone_half_angle_rad=0.05)


def test_max_energy_is_that_of_the_highest_bin_with_weight():
    from ctdose.materials import get_medium
    from ctdose.physics.mc import VoxelGeometry, simulate
    from ctdose.physics.scanner import CTScanner, Protocol
    from ctdose.physics.spectrum import Spectrum

    e = np.arange(10.0, 161.0)  # 1 keV bins up to 160 keV (beyond the tables' 150 keV), no weight above 140
    spec = Spectrum(e, np.where(e <= 140.0, 1.0, 0.0), absolute=False)
    src = PointSource((0, 0, -100.0), (0, 0, 1), spectrum=spec, collimation="cone", cone_half_angle_rad=0.05)
    assert src.max_energy_kev == pytest.approx(140.5)
    protocol = Protocol(mode="axial", z_start_mm=0.0, z_end_mm=10.0, projections_per_rotation=4, rotation="discrete")
    assert CTSource(CTScanner(spec), protocol).max_energy_kev == pytest.approx(140.5)
    for how in ("random", "sobol"):
        assert float(_draw(src, 20_000, 1, how).energy_kev.max()) <= 140.5
    geo = VoxelGeometry(np.zeros((4, 4, 4), np.uint8), np.ones((4, 4, 4), np.float32), [get_medium("water")],
                        (5.0, 5.0, 5.0), (-7.5, -7.5, -7.5))
    res = simulate(geo, src, 2000, n_batches=4, compile=False)  # was: "exceed the tables' 150 keV"
    assert res.deposited_energy_ev > 0


@pytest.mark.parametrize("energy", [0.5, 0.999])
def test_monoenergetic_source_below_the_tables_is_refused(energy):
    with pytest.raises(InputError, match=rf"source energy_kev must be >= 1 keV .*, got {energy}"):
        PointSource((0, 0, -100.0), (0, 0, 1), energy_kev=energy, collimation="cone", cone_half_angle_rad=0.05)
    PointSource((0, 0, -100.0), (0, 0, 1), energy_kev=1.0, collimation="cone", cone_half_angle_rad=0.05)


def test_ct_source_whose_bowtie_transmits_nothing_is_refused():
    from ctdose.physics.scanner import Bowtie, CTScanner, Protocol
    from ctdose.physics.spectrum import Spectrum

    spec = Spectrum(np.array([60.0, 80.0]), np.array([1.0, 1.0]), "flat", absolute=False)
    opaque = Bowtie(np.array([0.0, 0.5]), np.array([1e6, 1e6]), "1 km Al")
    with pytest.raises(InputError, match=r"CT scanner bowtie \(1 km Al\): its transmission is 0 .* emits nothing"):
        CTSource(CTScanner(spec, bowtie=opaque), Protocol())
    thick = Bowtie(np.array([0.0, 0.5]), np.array([0.0, 1e6]), "opaque at the edge only")
    CTSource(CTScanner(spec, bowtie=thick), Protocol())  # the centre of the fan still emits


@pytest.mark.parametrize("how", SAMPLING)
@pytest.mark.parametrize("energies, weights, low, high", [
    ([2.0, 3.0, 100.0], [0.0, 1.0, 0.0], 2.5, 51.5),  # np.gradient's bin at 3 keV spanned -21.5 to 27.5 keV
    ([30.0, 40.0, 200.0], [1.0, 1.0, 0.0], 25.0, 120.0),  # 1.5 % of the photons were below 0 keV
])
def test_uneven_spectrum_bins_emit_photons_only_between_their_edges(how, energies, weights, low, high):
    from ctdose.physics.spectrum import Spectrum

    spec = Spectrum(np.array(energies), np.array(weights), absolute=False)
    src = PointSource((0, 0, -100.0), (0, 0, 1), spectrum=spec, collimation="cone", cone_half_angle_rad=0.05)
    assert src.max_energy_kev == high
    e = _draw(src, 50_000, 1, how).energy_kev.numpy()
    assert e.min() >= low and e.max() <= high
    assert e.min() < low + 0.01 * (high - low) and e.max() > high - 0.01 * (high - low)  # the whole bins


def test_spectrum_object_whose_lowest_bin_reaches_below_1_kev_is_refused():
    class Spec:  # not a Spectrum: 1 and 2 keV bins span 0.5-1.5 and 1.5-2.5 keV
        energy_kev = np.array([1.0, 2.0])
        fluence_per_mas_per_mm2_at_1m = np.array([1.0, 1.0])

    with pytest.raises(InputError, match=r"source spectrum: the lowest bin, at 1 keV, reaches down to 0.5 keV"):
        PointSource((0, 0, -100.0), (0, 0, 1), spectrum=Spec(), collimation="cone")


def test_spectrum_object_whose_weights_overflow_is_refused():
    class Spec:
        energy_kev = np.array([30.0, 40.0])
        fluence_per_mas_per_mm2_at_1m = np.array([1e308, 1e308])

    with pytest.raises(InputError, match=r"source spectrum: the weights' sum overflows"):
        PointSource((0, 0, -100.0), (0, 0, 1), spectrum=Spec(), collimation="cone")


def test_an_energy_and_a_spectrum_together_are_refused():
    from ctdose.physics.spectrum import Spectrum

    with pytest.raises(InputError, match=r"give energy_kev \(monoenergetic\) or a spectrum, not both "
                                         r"\(got energy_kev=60"):
        PointSource((0, 0, 0), (0, 0, 1), energy_kev=60.0, spectrum=Spectrum(np.array([30.0, 40.0]), np.ones(2)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(position_mm=(0, 0)), r"PointSource.position_mm: must be three numbers \(x, y, z\), got 2 \(\(0, 0\)\)"),
    (dict(direction=(0, 1)), r"PointSource.direction: must be three numbers \(x, y, z\), got 2 \(\(0, 1\)\)"),
    (dict(direction=("a", 0, 1)), r"PointSource.direction: must be three numbers \(x, y, z\), got \('a', 0, 1\)"),
    (dict(fan_axis=(1, 0)), r"PointSource.fan_axis: must be three numbers \(x, y, z\), got 2"),
    (dict(half_angles_rad=(0.1,)), r"PointSource.half_angles_rad must be two numbers \(fan, perpendicular\) in "
                                   r"radians, got \(0.1,\)"),
    (dict(half_angles_rad=0.1), r"PointSource.half_angles_rad must be two numbers .*, got 0.1$"),
])
def test_source_vectors_of_the_wrong_shape_are_refused_clearly(kwargs, match):
    args = dict(position_mm=(0, 0, 0), direction=(0, 0, 1), energy_kev=60.0) | kwargs
    with pytest.raises(InputError, match=match):
        PointSource(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(half_angles_rad=(1.57, 1.57)), r"the field reaches a tangent of 1255.77 \(89.9544 degrees from the axis\); "
                                         r"at most 1000 \(89.94 degrees\)"),
    (dict(half_angles_rad=(1.57, 0.01)), r"tangent of 1255.77"),
    (dict(field_tan=((-1e30, 1e30), (-1, 1))), r"PointSource.field_tan=.*tangent of 1e\+30"),
    (dict(field_tan=((-1e30, 1e30), (-1, 1)), sampling="plane"), r"tangent of 1e\+30"),
    (dict(half_angles_rad=(math.radians(86), math.radians(86))), r"too wide to sample per solid angle: .* only 0.0072 "
                                                                 r"of the tangent-plane draws"),
])
def test_fields_too_wide_to_sample_are_refused_instead_of_hanging(kwargs, match):
    with pytest.raises(InputError, match=match):
        PointSource((0, 0, 0), (0, 0, 1), energy_kev=60.0, **kwargs)


def test_a_square_field_of_85_degrees_is_still_sampled():
    half = math.radians(85)
    src = PointSource((0, 0, 0), (0, 0, 1), energy_kev=60.0, half_angles_rad=(half, half), fan_axis=(1, 0, 0))
    st = src.sample(2000, _gen(0))
    assert np.all(np.abs(np.arctan2(st.u.numpy(), st.w.numpy())) <= half + 1e-5)


def test_the_rejection_loop_gives_up_with_an_error_instead_of_hanging():
    from ctdose.physics.sources import _sample_rectangle

    with pytest.raises(InputError, match=r"only \d+ of 100 directions after 1000 rounds of rejection sampling"):
        _sample_rectangle(100, (-1255.0, 1255.0), (-1255.0, 1255.0), _gen(0), torch.device("cpu"))
