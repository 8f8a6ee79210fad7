"""Table rows split at absorption edges: the edges against published energies, the tables exact
on both sides of an edge (against the exact mixture-rule coefficients), the row of an energy
the same in numpy, the eager tables and the kernels, snapped edges, and the majorant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctdose.materials import custom_medium, get_medium
from ctdose.physics import kernels
from ctdose.physics.energy_rows import MAX_SPLITS_PER_STEP, SNAP_FRACTION, absorption_edges, energy_rows
from ctdose.physics.transport import MM_PER_CM, TrackLengthSetup, TransportGrid, build_tables
from ctdose.physics.xsection import default_energy_grid, mass_coefficients

#: K edges (keV), X-ray Data Booklet (LBNL, 2009), Table 1-1 (after Bearden and Burr, Rev. Mod.
#: Phys. 39 (1967) 125): iodine, gadolinium, calcium.
K_EDGE_KEV = {53: 33.169, 64: 50.239, 20: 4.0381}

#: Water with 2 % iodine, or 1 % gadolinium, by mass (contrast media).
WATER_H, WATER_O = 0.111894, 0.888106


def _contrast_water(z: int, fraction: float):
    rest = 1.0 - fraction
    return custom_medium(f"water with {fraction:.0%} of Z={z}", 1.03,
                         {1: rest * WATER_H, 8: rest * WATER_O, z: fraction})


def _table_value(tab, a, b, medium: int, energy_kev: np.ndarray) -> np.ndarray:
    row, f = tab.energy_index(torch.tensor(energy_kev, dtype=torch.float32))
    flat = medium * tab.n_rows + row
    return (a[flat].double() + f.double() * b[flat].double()).numpy()


@pytest.mark.parametrize("z", [53, 64, 20])
def test_the_k_edges_lie_at_the_published_energies(z):
    edges = absorption_edges([_contrast_water(z, 0.02)], 1.0, 150.0)
    k = min(edges, key=lambda e: abs(e.at_kev - K_EDGE_KEV[z]))
    print(f"Z={z}: K edge split at {k.at_kev:.4f} keV, published {K_EDGE_KEV[z]} keV")
    # xraylib's photoelectric data jump within a few eV of the published edge (gadolinium: 2.4
    # eV below it, iodine 0.1-0.6 eV above it)
    assert abs(k.at_kev - K_EDGE_KEV[z]) < 3e-3
    assert k.below_kev < k.at_kev <= k.above_kev and k.above_kev - k.below_kev < 3e-3
    assert k.weight > 0


@pytest.mark.parametrize("z,fraction,energies", [
    (53, 0.02, [33.0, 33.05, 33.10, 33.16, 33.168, 33.172, 33.18, 33.20, 33.25]),
    (64, 0.01, [50.0, 50.1, 50.2, 50.235, 50.245, 50.25]),
])
def test_the_tables_are_exact_on_both_sides_of_an_edge(z, fraction, energies):
    """Before the rows were split, the grid step holding iodine's K edge interpolated across
    it: mu/rho 51 % too high at 33.10 keV and 11 % too low at 33.20 keV."""
    medium = _contrast_water(z, fraction)
    tab = build_tables([medium], np.array([medium.density_g_cm3]), 150.0, "cpu")
    e = np.array(energies)
    exact = mass_coefficients(medium, e)
    for name, a, b in [("total", tab.total_a, tab.total_b), ("photo", tab.photo_a, tab.photo_b),
                       ("incoh", tab.incoh_a, tab.incoh_b)]:
        ours = _table_value(tab, a, b, 0, e) * MM_PER_CM
        err = ours / exact[name] - 1.0
        print(name, " ".join(f"{x:.2f}:{d:+.1e}" for x, d in zip(e, err)))
        np.testing.assert_allclose(ours, exact[name], rtol=5e-4)


def test_water_has_one_row_per_step_and_iodine_a_row_more_per_edge():
    e = default_energy_grid()
    assert energy_rows(e, [get_medium("water")]).n_rows == e.size
    iodine = _contrast_water(53, 0.02)
    rows = energy_rows(e, [iodine])
    # iodine's K, L1-L3 and M1 edges lie above 1 keV, each inside a step
    assert [round(x.at_kev, 1) for x in rows.edges] == [1.1, 4.6, 4.9, 5.2, 33.2]
    assert rows.n_rows == e.size + 5
    assert np.all(np.diff(rows.lookup[:, 0]) >= 1)


def test_an_energy_finds_the_same_row_in_numpy_the_eager_tables_and_the_kernels():
    media = [get_medium("water"), get_medium("spine_bone"), _contrast_water(53, 0.02), _contrast_water(64, 0.01)]
    tab = build_tables(media, np.array([1.0, 1.4, 1.03, 1.03]), 150.0, "cpu")
    grid = TransportGrid.from_arrays(np.zeros((2, 2, 2), np.uint8), np.ones((2, 2, 2), np.float32),
                                     (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "cpu")
    setup = TrackLengthSetup.build(grid, tab, None, compile=False)
    rng = np.random.default_rng(3)
    edges = np.array([x.at_kev for x in tab.rows.edges])
    e = np.concatenate([rng.uniform(1.0, 150.0, 20_000), edges - 1e-3, edges + 1e-3]).astype(np.float32)
    row_np, f_np = tab.rows.row_of(e.astype(np.float64))
    row_t, f_t = tab.energy_index(torch.from_numpy(e))
    row_k, f_k = kernels._energy_index(torch.from_numpy(e), setup.energy_f)
    np.testing.assert_array_equal(row_t.numpy(), row_k.numpy())
    np.testing.assert_array_equal(f_t.numpy(), f_k.numpy())
    # numpy in float64, the tables in float32: the same rows but where a fraction lies within
    # float32's rounding of a split
    assert np.mean(row_np == row_t.numpy()) > 0.9999
    below = np.searchsorted(tab.rows.lookup[:, 0], row_t.numpy(), side="right") - 1
    assert np.all(row_t.numpy() - tab.rows.lookup[below, 0] <= MAX_SPLITS_PER_STEP)
    np.testing.assert_allclose(f_np, f_t.numpy(), atol=1e-4)


def test_an_edge_next_to_a_grid_point_moves_onto_it():
    """A grid shifted so that iodine's K edge lies 1e-5 keV above a grid point: no split (the
    piece would be too thin for float32 fractions), and the grid point takes the values from
    below the edge for the step before it and from above the edge for the step after it."""
    iodine = _contrast_water(53, 0.02)
    at = next(x.at_kev for x in absorption_edges([iodine], 30.0, 40.0))
    step = 0.25
    grid = at - 1e-5 + step * np.arange(-8, 9)
    assert 1e-5 / step < SNAP_FRACTION
    rows = energy_rows(grid, [iodine])
    assert rows.n_rows == grid.size and any(abs(x.at_kev - at) < 1e-9 for x in rows.edges)
    energies, start, end = rows.evaluation_energies()
    total = mass_coefficients(iodine, energies)["total"]
    a, b = rows.value_slope(total[start], total[end])
    e = np.array([at - 0.2, at - 0.05, at + 0.01, at + 0.2])
    row, f = rows.row_of(e)
    np.testing.assert_allclose(a[row] + f * b[row], mass_coefficients(iodine, e)["total"], rtol=5e-4)


def test_the_majorant_bounds_every_medium_at_every_energy():
    media = [get_medium("air"), get_medium("lung"), _contrast_water(53, 0.05), get_medium("rib_bone")]
    rho_max = np.array([0.0012, 0.3, 1.05, 1.9])
    tab = build_tables(media, rho_max, 150.0, "cpu")
    e = np.sort(np.concatenate([np.linspace(1.0, 149.9, 5000),
                                [x.at_kev + d for x in tab.rows.edges for d in (-1e-3, 1e-3)]]))
    maj = _table_value(tab, tab.maj_a, tab.maj_b, 0, e)
    for m in range(len(media)):
        mu = _table_value(tab, tab.total_a, tab.total_b, m, e) * rho_max[m]
        assert np.all(mu <= maj), media[m].name
