"""Tests of ctdose.physics.mc's input checks: VoxelGeometry.validate and simulate's arguments."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.materials import Medium, get_medium, media_list
from ctdose.physics import mc
from ctdose.physics.mc import VoxelGeometry, resolve_device, simulate
from ctdose.physics.sources import PointSource


def _geo(**kw):
    args = dict(media_index=np.zeros((4, 4, 4), np.uint8), density_g_cm3=np.ones((4, 4, 4), np.float32),
                media=[get_medium("water")], spacing_mm=(5.0, 5.0, 5.0), origin_mm=(-7.5, -7.5, -7.5))
    args.update(kw)
    return VoxelGeometry(**args)


def _src(energy_kev=60.0):
    return PointSource((0, 0, -100.0), (0, 0, 1), energy_kev=energy_kev, collimation="cone", cone_half_angle_rad=0.05)


@pytest.fixture
def no_transport(monkeypatch):
    """Fail the test if simulate gets as far as building the transport tables."""

    def fail(*args, **kwargs):
        raise AssertionError("simulate started work before refusing its input")

    monkeypatch.setattr(mc, "prepare_transport", fail)


@pytest.mark.parametrize(
    "fractions, match",
    [
        ({1: 0.2, 8: 0.3}, r"VoxelGeometry: medium 'x': mass fractions sum to 0\.5000, expected 1"),
        ({1: float("nan")}, r"VoxelGeometry: medium 'x': mass fraction of Z=1 is nan"),
        ({1: -0.1, 8: 1.1}, r"VoxelGeometry: medium 'x': mass fraction of Z=1 is -0\.1"),
        ({200: 1.0}, r"VoxelGeometry: medium 'x': atomic number 200 outside 1\.\.98"),
    ],
)
def test_geometry_refuses_a_medium_whose_composition_custom_medium_would_refuse(fractions, match, no_transport):
    geo = _geo(media=[Medium("x", 1.0, fractions)])
    with pytest.raises(InputError, match=match):
        geo.validate()
    with pytest.raises(InputError, match=match):
        simulate(geo, _src(), 2000, n_batches=4)


@pytest.mark.parametrize("spacing", [(5.0, float("inf"), 5.0), ("a", 5.0, 5.0), (5.0, 5.0)])
def test_geometry_refuses_a_spacing_that_is_not_finite_and_positive(spacing):
    with pytest.raises(InputError, match=r"VoxelGeometry: spacing_mm .* must be 3 finite positive numbers"):
        _geo(spacing_mm=spacing).validate()


def test_ambient_medium_with_a_nan_composition_is_refused(no_transport):
    with pytest.raises(InputError, match=r"simulate: ambient medium 'x': mass fraction of Z=7 is nan"):
        simulate(_geo(), _src(), 2000, n_batches=4, ambient=Medium("x", 0.0012, {7: float("nan")}))
    with pytest.raises(InputError, match=r"simulate: ambient medium 'y': mass fractions sum to 0\.5000"):
        simulate(_geo(), _src(), 2000, n_batches=4, ambient=Medium("y", 0.0012, {7: 0.5}))


@pytest.mark.parametrize("cutoff", [60.0, 100.0])
def test_energy_cutoff_at_or_above_the_source_energy_is_refused(cutoff, no_transport):
    with pytest.raises(InputError, match=r"simulate: energy_cutoff_kev \(.* keV\) must be below the source's "
                                         r"highest energy \(60 keV\)"):
        simulate(_geo(), _src(60.0), 2000, n_batches=4, energy_cutoff_kev=cutoff)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_photons=3.9), r"simulate: n_photons must be a positive integer, got 3\.9"),
        (dict(n_photons=2000.7), r"n_photons must be a positive integer, got 2000\.7"),
        (dict(n_photons=float("nan")), r"n_photons must be a positive integer, got nan"),
        (dict(n_photons=float("inf")), r"n_photons must be a positive integer, got inf"),
        (dict(n_photons="abc"), r"n_photons must be a positive integer, got 'abc'"),
        (dict(n_photons=True), r"n_photons must be a positive integer, got True"),
        (dict(n_batches=2.5), r"n_batches must be in \[2, n_photons\], got 2\.5"),
        (dict(seed="abc"), r"simulate: seed must be an integer in \[0, 2\*\*63\), got 'abc'"),
        (dict(seed=1.9), r"seed must be an integer in \[0, 2\*\*63\), got 1\.9"),
        (dict(seed=2**70), r"seed must be an integer in \[0, 2\*\*63\), got 1180591620717411303424"),
        (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*63\), got -1"),
        (dict(workers=0), r"simulate: workers must be an integer >= 1, got 0"),
        (dict(workers=-3), r"workers must be an integer >= 1, got -3"),
        (dict(workers=1.5), r"workers must be an integer >= 1, got 1\.5"),
        (dict(pool_size=-5), r"simulate: pool_size must be None or an integer >= 2, got -5"),
        (dict(pool_size=0), r"pool_size must be None or an integer >= 2, got 0"),
        (dict(pool_size=1), r"pool_size must be None or an integer >= 2, got 1"),
        (dict(estimator="track_length", majorant="block", block_vox=0),
         r"simulate: block_vox must be an integer >= 1, got 0"),
        (dict(block_vox=-2), r"block_vox must be an integer >= 1, got -2"),
        (dict(estimator="collision", majorant_floor_per_mm=float("nan")),
         r"simulate: majorant_floor_per_mm must be a finite number >= 0, got nan"),
        (dict(estimator="collision", majorant_floor_per_mm=-1.0), r"majorant_floor_per_mm must be .*, got -1\.0"),
        (dict(estimator="track_length", track_spacing_mm=0.0),
         r"simulate: track_spacing_mm must be None or a finite number > 0, got 0\.0"),
        (dict(estimator="track_length", track_spacing_mm=float("nan")), r"track_spacing_mm must be .*, got nan"),
        (dict(estimator="track_length", track_spacing_mm=-1.0), r"track_spacing_mm must be .*, got -1\.0"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(kwargs, match, no_transport):
    args = dict(n_photons=2000, n_batches=4)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        simulate(_geo(), _src(), **args)


@pytest.mark.parametrize("device", ["tpu", "gpu", "mps", "meta", "cuda:x", None])
def test_unknown_device_is_refused(device, no_transport):
    match = r"device must be 'cpu', 'cuda', 'cuda:<n>' or 'auto', got "
    with pytest.raises(InputError, match=match):
        resolve_device(device)
    with pytest.raises(InputError, match=match):
        simulate(_geo(), _src(), 2000, n_batches=4, device=device)


def test_numpy_integers_and_integral_floats_are_taken_as_before():
    geo, src = _geo(), _src()
    plain = simulate(geo, src, 2000, n_batches=4, seed=3, pool_size=512, compile=False)
    numpy = simulate(geo, src, 2e3, n_batches=np.int64(4), seed=np.uint32(3), pool_size=np.int32(512),
                     workers=np.int64(1), block_vox=np.int16(8), majorant_floor_per_mm=np.float32(0.0), compile=False)
    assert numpy.n_photons == 2000 and numpy.n_batches == 4
    np.testing.assert_array_equal(numpy.energy_ev, plain.energy_ev)


def test_geometry_still_accepts_a_shipped_medium_and_a_renormalisable_composition():
    # custom_medium's tolerance: fractions summing to 1 within 1 % are taken
    geo = _geo(media=[Medium("near", 1.0, {1: 0.112, 8: 0.885})])
    geo.validate()
    replace(geo, media=media_list()).validate()  # every shipped medium


def test_rel_sigma_is_the_batch_method_standard_error_of_the_kept_batches():
    """Per voxel, rel_sigma = std(batch means, ddof=1) / sqrt(n_batches) / mean, recomputed here
    from the batches the run kept (the batch method's standard error of the mean)."""
    res = simulate(_geo(), _src(40.0), 8000, n_batches=8, seed=3, keep_batches=True)
    b = res.batch_energy_ev.astype(np.float64)
    mean = b.mean(0)
    scored = mean > 0
    assert scored.sum() > 20
    np.testing.assert_allclose(res.energy_ev[scored], mean[scored], rtol=1e-5)
    expect = b.std(0, ddof=1)[scored] / np.sqrt(b.shape[0]) / mean[scored]
    np.testing.assert_allclose(res.rel_sigma[scored], expect, rtol=1e-3)
    assert (res.rel_sigma[~scored] == 1.0).all()


def test_sum_with_sigma_of_known_batches():
    """Batch means 1, 2, 3, 4 eV in one voxel (weight 2): sum 5 eV, standard error of the mean
    2 std(ddof=1) / sqrt(4) = sqrt(5/3) = 1.2909944."""
    r = mc.DoseResult(energy_ev=np.full((1, 1, 1), 2.5), dose_gy=np.ones((1, 1, 1)), rel_sigma=np.zeros((1, 1, 1)),
                      escaped_energy_ev=0.0, emitted_energy_ev=0.0, deposited_energy_ev=2.5, n_photons=4,
                      n_batches=4, wall_s=0.0, per_mas=False, dose_scale_per_mas=None, estimator="analogue",
                      device="cpu", batch_energy_ev=np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1))
    total, sigma = r.sum_with_sigma(np.full((1, 1, 1), 2.0))
    assert total == pytest.approx(5.0, rel=1e-12)
    assert sigma == pytest.approx(np.sqrt(5.0 / 3.0), rel=1e-12)
    assert np.isnan(replace(r, batch_energy_ev=None).sum_with_sigma(np.ones((1, 1, 1)))[1])


def test_a_grid_without_matter_warns_and_gives_zero_dose():
    """Vacuum everywhere is legal input but almost surely a mistake (densities in kg/m^3 read
    as g/cm^3 and clipped, a wrong mask): the run warns, and every photon escapes."""
    geo = _geo(density_g_cm3=np.zeros((4, 4, 4), np.float32))
    with pytest.warns(RuntimeWarning, match=r"the voxel grid \(4, 4, 4\) has no matter"):
        res = simulate(geo, _src(), 2000, n_batches=4, seed=1, device="cpu", compile=False)
    assert res.deposited_energy_ev == 0.0 and not res.dose_gy.any()
    assert res.escaped_energy_ev == pytest.approx(res.emitted_energy_ev)


@pytest.mark.parametrize("estimator, weight_window", [("expected_track_length", False), ("expected_track_length", True),
                                                       ("collision", False), ("track_length", False)])
def test_batch_uncertainty_matches_the_spread_between_independent_runs(estimator, weight_window):
    """The batch method's standard error is only right if the batches are independent (though
    they share one photon pool, the kernels' random numbers, one scrambled Sobol' sequence per
    batch and, with weight windows, one pilot run) and if a region's error keeps the voxels'
    covariance. 100 runs with their own seeds: the spread of the energy in a bone core and in
    the water around it across the runs (standard deviation) equals the runs' own batch
    standard error (root mean square) within the statistics of 100 runs (the sample standard
    deviation's relative error is about 0.07, more for the skewed deposits in bone; these seeds
    give 0.91-1.18; 800 runs of the default estimator gave 0.92-1.04 over five regions). Summing
    the voxels' errors in quadrature instead (no covariance) gives 1.99 and fails; all batches
    of a run sharing one Sobol' scramble gave 1.06-1.26 in 30-60 runs, too little to resolve
    here (``test_quasi_random`` catches that one directly)."""
    from ctdose.physics.tg195 import tg195_spectrum

    mi = np.zeros((12, 12, 12), np.uint8)
    mi[4:8, 4:8, 4:8] = 1
    media = [get_medium("water"), get_medium("spine_bone")]
    rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi]
    geo = VoxelGeometry(mi, rho, media, (4.0, 4.0, 4.0), (-22.0, -22.0, -22.0))
    src = PointSource((0, 0, -300.0), (0, 0, 1), spectrum=tg195_spectrum(), collimation="fan",
                      half_angles_rad=(0.08, 0.08), fan_axis=(1, 0, 0))
    regions = {"bone": mi == 1, "water": mi == 0}
    sums = {k: [] for k in regions}
    sigmas = {k: [] for k in regions}
    for seed in range(100):
        res = simulate(geo, src, 10_000, n_batches=10, seed=seed, estimator=estimator, weight_window=weight_window,
                       keep_batches=True, device="cpu")
        for name, mask in regions.items():
            total, sigma = res.sum_with_sigma(mask.astype(float))
            sums[name].append(total)
            sigmas[name].append(sigma)
    for name in regions:
        spread = float(np.std(sums[name], ddof=1))
        reported = float(np.sqrt(np.mean(np.square(sigmas[name]))))
        print(f"{estimator}{' + window' if weight_window else ''}, {name}: spread between runs {spread:.4g}, "
              f"batch standard error {reported:.4g} eV per photon, ratio {spread / reported:.2f}")
        assert 0.7 < spread / reported < 1.4, (name, spread, reported)


# -- input checks of the audit: compositions, densities, sources, cases, grids, flags, dtypes ---------------

_WATER = {1: 0.111894, 8: 0.888106}


@pytest.fixture
def transported(monkeypatch):
    """The media and ambient medium that simulate hands to the transport (stops it there)."""
    seen = {}

    class Stop(Exception):
        pass

    def capture(mi, rho, media, spacing, origin, max_energy, dev, estimator, majorant, block_vox, floor,
                track_spacing, compile, ambient, fluorescence):
        seen.update(media=media, ambient=ambient)
        raise Stop

    monkeypatch.setattr(mc, "prepare_transport", capture)

    def run(geo, **kw):
        with pytest.raises(Stop):
            simulate(geo, _src(), 2000, n_batches=4, compile=False, **kw)
        return seen

    return run


def test_a_direct_medium_summing_to_0991_is_transported_as_custom_medium_builds_it(transported):
    from ctdose.materials import custom_medium

    scaled = {z: w * 0.991 for z, w in _WATER.items()}
    ambient = {7: 0.755 * 0.995, 8: 0.232 * 0.995, 18: 0.013 * 0.995}
    seen = transported(_geo(media=[Medium("w", 1.0, scaled)]), ambient=Medium("a", 0.0012, ambient))
    assert dict(seen["media"][0].mass_fractions) == dict(custom_medium("w", 1.0, scaled).mass_fractions)
    assert dict(seen["ambient"].mass_fractions) == dict(custom_medium("a", 0.0012, ambient).mass_fractions)
    assert sum(seen["media"][0].mass_fractions.values()) == pytest.approx(1.0, abs=1e-15)


def test_a_direct_medium_summing_to_0991_gives_the_dose_of_the_custom_medium():
    from ctdose.materials import custom_medium

    scaled = {z: w * 0.991 for z, w in _WATER.items()}
    direct = simulate(_geo(media=[Medium("w", 1.0, scaled)]), _src(), 2000, n_batches=4, seed=2, compile=False)
    built = simulate(_geo(media=[custom_medium("w", 1.0, scaled)]), _src(), 2000, n_batches=4, seed=2, compile=False)
    np.testing.assert_array_equal(direct.energy_ev, built.energy_ev)


def test_shipped_media_and_custom_media_are_transported_exactly_as_given(transported):
    from ctdose.materials import DENSITY_SETS, custom_medium, media_names

    for density_set in DENSITY_SETS:
        media = media_list(density_set=density_set) + [custom_medium("odd", 1.1, {1: 0.3, 6: 0.3, 8: 0.4000001})]
        n = len(media)
        mi = (np.arange(4 * 4 * n) % n).reshape(4, 4, n).astype(np.uint8)
        rho = np.ones(mi.shape, np.float32)
        geo = VoxelGeometry(mi, rho, media, (5.0, 5.0, 5.0), (-7.5, -7.5, -2.5 * n))
        seen = transported(geo, ambient="air")
        assert all(a is b for a, b in zip(seen["media"], media)) and len(seen["media"]) == n
        assert [m.name for m in media[:-1]] == media_names()


def test_text_mass_fractions_are_refused_with_a_clear_message(no_transport):
    geo = _geo(media=[Medium("w", 1.0, {1: "0.111", 8: "0.889"})])
    match = r"VoxelGeometry: medium 'w': mass fraction of Z=1 is '0\.111' \(str\), not a number"
    with pytest.raises(InputError, match=match):
        geo.validate()
    with pytest.raises(InputError, match=match):
        simulate(geo, _src(), 2000, n_batches=4)


@pytest.mark.parametrize("density", [1e39, 1000.0, 150.0])
def test_a_density_above_any_material_is_refused(density, no_transport):
    geo = _geo(density_g_cm3=np.full((4, 4, 4), density))
    match = r"VoxelGeometry: density .* g/cm\^3 is above 100 g/cm\^3 \(the densest element, osmium"
    with pytest.raises(InputError, match=match):
        geo.validate()
    with pytest.raises(InputError, match=match):
        simulate(geo, _src(), 2000, n_batches=4)
    with pytest.raises(InputError, match=r"simulate: ambient medium 'a': density must be finite, > 0 and at most 100"):
        simulate(_geo(), _src(), 2000, n_batches=4, ambient=Medium("a", density, {7: 1.0}))


def test_osmium_dense_voxels_are_still_taken():
    _geo(density_g_cm3=np.full((4, 4, 4), 22.59)).validate()


class _Duck:
    """A user's source: a PointSource's photons, changed by ``edit``, with its own max_energy_kev."""

    def __init__(self, edit=None, max_energy_kev=60.0):
        self.base, self.edit, self.max_energy_kev, self.dose_scale_per_mas = _src(), edit, max_energy_kev, None

    def sample(self, n, gen):
        p = self.base.sample(n, gen)
        if self.edit is not None:
            self.edit(p)
        return p


@pytest.mark.parametrize("max_energy", [float("nan"), float("inf"), 200.0, -5.0, "abc", None])
def test_a_source_max_energy_that_is_not_a_number_within_the_tables_is_refused(max_energy, no_transport):
    with pytest.raises(InputError, match=r"simulate: the source's max_energy_kev must be a finite number in "
                                         r"\(0, 150\] keV .*, got "):
        simulate(_geo(), _Duck(max_energy_kev=max_energy), 2000, n_batches=4)


def _set(field, value):
    def edit(p):
        getattr(p, field)[: 100] = value
    return edit


def _scale_directions(p):
    p.u.mul_(2.0), p.v.mul_(2.0), p.w.mul_(2.0)


def _above_declared(p):
    p.energy_kev.fill_(300.0)


@pytest.mark.parametrize(
    "edit, max_energy, match",
    [
        (_set("energy_kev", float("nan")), 60.0, r"energies must be finite and in \(0, 60\] keV"),
        (_above_declared, 100.0, r"energies must be finite and in \(0, 100\] keV .*got 300\.\.300 keV"),
        (_set("energy_kev", 61.0), 60.0, r"energies must be finite and in \(0, 60\] keV"),
        (_set("energy_kev", 0.0), 60.0, r"energies must be finite and in \(0, 60\] keV"),
        (_set("weight", float("nan")), 60.0, r"weights must be finite and >= 0"),
        (_set("weight", -1.0), 60.0, r"weights must be finite and >= 0, got -1\.\.1"),
        (_set("weight", float("inf")), 60.0, r"weights must be finite and >= 0"),
        (_scale_directions, 60.0, r"directions \(u, v, w\) must be unit vectors \(within 1e-05\), got lengths 2\.\.2"),
        (_set("u", float("nan")), 60.0, r"directions \(u, v, w\) must be unit vectors"),
        (_set("x", float("nan")), 60.0, r"100 have NaN or infinite positions"),
    ],
)
def test_a_source_whose_photons_are_bad_is_refused_before_any_work(edit, max_energy, match, no_transport):
    with pytest.raises(InputError, match=r"simulate: the source's photons \(a probe of 4096 from sample\(n, gen\)\): "
                                         + match):
        simulate(_geo(), _Duck(edit, max_energy), 2000, n_batches=4)


def test_a_correct_user_source_gives_the_result_of_the_source_it_wraps():
    """The probe uses a generator of its own: the run's random stream is the wrapped source's."""
    a = simulate(_geo(), _Duck(), 2000, n_batches=4, seed=4, compile=False, source_sampling="random")
    b = simulate(_geo(), _src(), 2000, n_batches=4, seed=4, compile=False, source_sampling="random")
    np.testing.assert_array_equal(a.energy_ev, b.energy_ev)


def _case(z, spacing_attr=True, origin_attr=False):
    import xarray as xr

    attrs = {"case_id": "c7"}
    if spacing_attr:
        attrs["spacing_mm"] = [2.0, 1.5, 1.5]
    if origin_attr:
        attrs["origin_mm"] = [0.0, 0.0, 0.0]
    labels = np.ones((len(z), 2, 2), np.uint8)
    coords = {} if z is None else {"z": np.asarray(z, float), "y": [0.0, 1.5], "x": [3.0, 4.5]}
    return xr.Dataset({"labels": (("z", "y", "x"), labels)}, coords=coords, attrs=attrs)


def test_a_case_with_non_uniform_coordinates_is_refused():
    with pytest.raises(InputError, match=r"case c7: the 'z' coordinates are not uniformly spaced \(steps 5\.\.45 mm\)"):
        mc.geometry_from_case(_case([0.0, 5.0, 50.0], spacing_attr=False))


def test_a_single_slice_case_without_spacing_is_refused_and_with_it_takes_it():
    with pytest.raises(InputError, match=r"case c7: the 'z' axis has one voxel and the case no 'spacing_mm' attribute"):
        mc.geometry_from_case(_case([10.0], spacing_attr=False))
    geo = mc.geometry_from_case(_case([10.0]))
    assert geo.spacing_mm == (2.0, 1.5, 1.5) and geo.origin_mm == (10.0, 0.0, 3.0)


def test_a_case_without_coordinates_or_grid_attributes_is_refused():
    import xarray as xr

    ds = xr.Dataset({"labels": (("z", "y", "x"), np.ones((2, 2, 2), np.uint8))}, attrs={"case_id": "c7"})
    with pytest.raises(InputError, match=r"case c7: no 'spacing_mm'/'origin_mm' attributes and no 'z' coordinates"):
        mc.geometry_from_case(ds)


def test_a_case_with_uniform_coordinates_or_both_attributes_keeps_its_grid():
    assert mc.geometry_from_case(_case([0.0, 2.5, 5.0], spacing_attr=False)).spacing_mm == (2.5, 1.5, 1.5)
    assert mc.geometry_from_case(_case([0.0, 5.0, 50.0], origin_attr=True)).spacing_mm == (2.0, 1.5, 1.5)


@pytest.mark.parametrize("spacing, origin", [((1e38,) * 3, (0.0,) * 3), ((5.0,) * 3, (0.0, 0.0, 2e6)),
                                             ((3e5,) * 3, (0.0,) * 3)])
def test_a_grid_reaching_beyond_a_kilometre_is_refused(spacing, origin, no_transport):
    match = r"VoxelGeometry: the grid .* reaches .* mm from the origin of coordinates; at most 1e\+06 mm \(1 km\)"
    with pytest.raises(InputError, match=match):
        _geo(spacing_mm=spacing, origin_mm=origin).validate()
    with pytest.raises(InputError, match=match):
        simulate(_geo(spacing_mm=spacing, origin_mm=origin), _src(), 2000, n_batches=4)


def test_a_voxel_smaller_than_a_tenth_of_a_micrometre_is_refused():
    with pytest.raises(InputError, match=r"VoxelGeometry: spacing_mm .*: every voxel edge must be at least 0\.0001 mm"):
        _geo(spacing_mm=(1e-40, 5.0, 5.0)).validate()


@pytest.mark.parametrize("flag, value", [("weight_window", "no"), ("compile", "no"), ("keep_batches", "no"),
                                         ("progress", "yes"), ("weight_window", 1), ("compile", 0)])
def test_a_flag_that_is_not_a_bool_is_refused(flag, value, no_transport):
    with pytest.raises(InputError, match=rf"simulate: {flag} must be True or False.*, got {value!r}"):
        simulate(_geo(), _src(), 2000, n_batches=4, **{flag: value})


def test_window_min_weight_needs_a_weight_window_and_a_number(no_transport):
    with pytest.raises(InputError, match=r"simulate: window_min_weight \(5\.0\) is given but weight_window is off"):
        simulate(_geo(), _src(), 2000, n_batches=4, window_min_weight=5.0)
    with pytest.raises(InputError, match=r"window_min_weight \('abc'\) is given but weight_window is off"):
        simulate(_geo(), _src(), 2000, n_batches=4, window_min_weight="abc")
    with pytest.raises(InputError, match=r"simulate: window_min_weight must be in \(0, 1\], got 'abc'"):
        simulate(_geo(), _src(), 2000, n_batches=4, weight_window=True, window_min_weight="abc")


def test_numpy_bools_are_taken_as_flags():
    plain = simulate(_geo(), _src(), 2000, n_batches=4, seed=3, compile=False, keep_batches=True)
    numpy = simulate(_geo(), _src(), 2000, n_batches=4, seed=3, compile=np.False_, keep_batches=np.True_)
    np.testing.assert_array_equal(numpy.batch_energy_ev, plain.batch_energy_ev)


def test_a_medium_name_instead_of_a_medium_says_so_and_suggests_get_medium():
    with pytest.raises(InputError, match=r"VoxelGeometry: media\[0\] is the string 'water', not a Medium: use "
                                         r"ctdose\.materials\.get_medium\('water'\)"):
        _geo(media=["water"]).validate()


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object])
def test_a_density_or_media_index_of_a_non_real_dtype_is_refused(dtype, no_transport):
    with pytest.raises(InputError, match=r"VoxelGeometry: density_g_cm3 must hold real numbers \(g/cm\^3\), got dtype"):
        simulate(_geo(density_g_cm3=np.ones((4, 4, 4), dtype)), _src(), 2000, n_batches=4)
    with pytest.raises(InputError, match=r"VoxelGeometry: media_index must hold non-negative integers, got dtype"):
        _geo(media_index=np.zeros((4, 4, 4), dtype)).validate()
