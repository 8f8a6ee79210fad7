"""The medium around the voxel grid (``simulate(ambient=...)``): survival weighting over the
path from the source to the grid, checked against NIST attenuation coefficients."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.materials import custom_medium, get_medium
from ctdose.physics.mc import VoxelGeometry, simulate
from ctdose.physics.sources import PointSource

#: NIST XCOM total mass attenuation coefficients at 60 keV (cm^2/g), with coherent scattering.
NIST_MU_60KEV = {"water": 0.2059, "air": 0.1875}
#: Source-to-grid distance (mm).
GAP_MM = 300.0


def _slab_geometry():
    """A 40 mm water slab (4 x 5 x 5 voxels of 10 mm) starting at z = 0."""
    water = custom_medium("water_nist", 1.0, {1: 0.111894, 8: 0.888106})
    shape = (4, 5, 5)
    return VoxelGeometry(np.zeros(shape, np.uint8), np.ones(shape, np.float32), [water], (10.0, 10.0, 10.0), (5.0, -20.0, -20.0))


def _pencil(z_mm: float) -> PointSource:
    return PointSource((0.0, 0.0, z_mm), (0.0, 0.0, 1.0), energy_kev=60.0, collimation="cone", cone_half_angle_rad=1e-6)


@pytest.mark.parametrize("estimator", ["expected_track_length", "track_length", "analogue"])
@pytest.mark.parametrize("ambient", ["water", "air"])
def test_photons_reach_the_grid_attenuated_by_the_ambient_medium(ambient, estimator):
    geo = _slab_geometry()
    src = _pencil(-GAP_MM)
    medium = custom_medium("water_nist", 1.0, {1: 0.111894, 8: 0.888106}) if ambient == "water" else get_medium("air")
    vac = simulate(geo, src, 4000, n_batches=4, seed=2, estimator=estimator)
    amb = simulate(geo, src, 4000, n_batches=4, seed=2, estimator=estimator, ambient=medium)
    expected = math.exp(-NIST_MU_60KEV[ambient] * medium.density_g_cm3 * GAP_MM / 10.0)
    ratio = amb.deposited_energy_ev / vac.deposited_energy_ev
    print(f"{ambient}: survival {ratio:.6f}, NIST exp(-mu L) {expected:.6f}")
    # same seed, same histories: only the weights differ, by exp(-mu L) (NIST within 0.5 % in mu)
    assert ratio == pytest.approx(expected, rel=5e-3 * NIST_MU_60KEV[ambient] * medium.density_g_cm3 * GAP_MM / 10 + 1e-6)
    np.testing.assert_allclose(amb.energy_ev, vac.energy_ev * ratio, rtol=1e-5, atol=1e-12)
    # energy bookkeeping: what the ambient medium removes counts as escaped
    assert amb.emitted_energy_ev == pytest.approx(vac.emitted_energy_ev)
    removed = amb.emitted_energy_ev * (1.0 - ratio)
    assert amb.escaped_energy_ev == pytest.approx(vac.escaped_energy_ev * ratio + removed, rel=1e-5)


def test_photons_born_inside_the_grid_are_not_attenuated():
    geo = _slab_geometry()
    src = _pencil(6.0)
    vac = simulate(geo, src, 2000, n_batches=4, seed=4)
    amb = simulate(geo, src, 2000, n_batches=4, seed=4, ambient="water")
    np.testing.assert_array_equal(amb.energy_ev, vac.energy_ev)


def test_unknown_ambient_medium():
    with pytest.raises(InputError, match="ambient"):
        simulate(_slab_geometry(), _pencil(-GAP_MM), 100, n_batches=2, ambient="helium")
