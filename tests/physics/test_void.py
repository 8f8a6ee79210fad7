"""Void distances against a brute-force distance between voxel boxes; the void majorant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctdose.materials import get_medium
from ctdose.physics.transport import TransportGrid, build_tables, void_majorant, void_voxel_table
from ctdose.physics.void import VOID_DENSITY_G_CM3, VOID_MAJORANT_MIN_FRACTION, VOID_MARGIN_MM, void_distance_mm


def _box_gaps_brute_force(matter: np.ndarray, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel, over all matter voxels by trying every pair: the smallest distance between the
    voxel's box and a matter voxel's box (mm), and the smallest chessboard gap (voxels); the
    per-axis gap is max(|n_i| - 1, 0) voxel edges."""
    idx = np.argwhere(matter)
    euclid, chess = np.zeros(matter.shape), np.zeros(matter.shape)
    s = np.asarray(spacing_zyx, float)
    for p in np.ndindex(matter.shape):
        gap = np.maximum(np.abs(idx - np.asarray(p)) - 1, 0)
        euclid[p] = np.sqrt(((gap * s) ** 2).sum(1)).min()
        chess[p] = gap.max(1).min()
    return euclid, chess


def test_void_distance_is_a_lower_bound_of_the_distance_between_voxel_boxes():
    """Random matter in an anisotropic grid: in every void voxel not touching matter the
    distance is the brute-force chessboard gap times the smallest spacing (less the margin),
    never more than the Euclidean distance between the boxes and at least its share
    min(s) / (sqrt(3) max(s)); 0 elsewhere. A photon anywhere in the voxel is at least that
    far from every point of every matter voxel (random pairs of points)."""
    rng = np.random.default_rng(3)
    rho = np.full((9, 11, 13), 0.0012, np.float32)
    rho[rng.random(rho.shape) < 0.02] = 1.0
    spacing = (2.5, 1.0, 1.5)
    got = void_distance_mm(rho, spacing)
    matter = rho >= VOID_DENSITY_G_CM3
    euclid, chess = _box_gaps_brute_force(matter, spacing)
    free = chess > 0
    assert free.sum() > 300 and (~free & ~matter).sum() > 100  # both kinds of void voxel occur
    np.testing.assert_allclose(got[free], chess[free] * min(spacing) - VOID_MARGIN_MM, atol=1e-4)
    assert (got[~free] == 0).all()
    assert (got[free] <= euclid[free] - VOID_MARGIN_MM + 1e-4).all()
    assert (got[free] >= euclid[free] * min(spacing) / (math.sqrt(3) * max(spacing)) - VOID_MARGIN_MM - 1e-4).all()
    # random points in void voxels against random points in matter voxels: never nearer
    cells = np.argwhere(free)
    p = (cells[rng.integers(len(cells), size=4000)] + rng.random((4000, 3))) * spacing
    q_cells = np.argwhere(matter)
    q = (q_cells[rng.integers(len(q_cells), size=4000)] + rng.random((4000, 3))) * spacing
    d = got[tuple(np.floor(p / spacing).astype(int).T)]
    assert (np.linalg.norm(p - q, axis=1) >= d).all()


def test_void_distance_edge_cases():
    rho = np.zeros((1, 1, 6), np.float32)
    rho[..., 0] = 1.0  # matter, then five void voxels along x (2 mm each)
    np.testing.assert_allclose(void_distance_mm(rho, (2.0, 2.0, 2.0))[0, 0],
                               [0, 0, 2 - VOID_MARGIN_MM, 4 - VOID_MARGIN_MM, 6 - VOID_MARGIN_MM, 8 - VOID_MARGIN_MM])
    assert (void_distance_mm(np.ones((3, 4, 5), np.float32), (1.0, 1.0, 1.0)) == 0).all()  # no void
    # no matter at all: every flight of the grid's diagonal leaves it
    empty = void_distance_mm(np.zeros((3, 4, 5), np.float32), (1.0, 2.0, 3.0))
    assert empty.min() == pytest.approx(math.sqrt(3**2 + 8**2 + 15**2))
    # a void shell of one voxel around matter: every void voxel touches matter
    assert (void_distance_mm(np.pad(np.ones((2, 2, 2), np.float32), 1), (1.0, 1.0, 1.0)) == 0).all()
    with pytest.raises(ValueError, match="3-D"):
        void_distance_mm(np.zeros((4, 4), np.float32), (1.0, 1.0))


def test_void_majorant_covers_the_void_media_and_nothing_denser():
    """Air at two densities and vacuum in the void, water and bone outside it: the majorant is
    the denser air's mu (with the margin) or a tenth of the global majorant, whichever is
    larger, at every energy (air's mu is far below both), and at least the floor."""
    media = [get_medium("air"), get_medium("water"), get_medium("spine_bone")]
    mi = np.zeros((4, 4, 8), np.uint8)
    mi[..., 5:] = 1
    mi[..., 7] = 2
    rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi]
    rho[..., 0] = 0.0  # vacuum
    rho[..., 1] = 0.002  # denser air
    grid = TransportGrid.from_arrays(mi, rho, (5.0, 5.0, 5.0), (0.0, 0.0, 0.0), "cpu")  # isotropic: exact on axes
    tab = build_tables(media, np.array([0.002, 1.0, media[2].density_g_cm3]), 150.0, "cpu")
    air_mu = tab.total_ends[0] * 0.002  # at each table row's ends
    global_maj = tab.maj_ends
    assert (air_mu < 0.01 * global_maj).all()
    np.testing.assert_allclose(void_majorant(grid, tab), np.maximum(air_mu * (1 + 1e-5), 0.1 * global_maj),
                               rtol=1e-6)
    assert VOID_MAJORANT_MIN_FRACTION == 0.1
    np.testing.assert_allclose(void_majorant(grid, tab, majorant_floor_per_mm=0.5),
                               np.maximum(void_majorant(grid, tab), 0.5), rtol=1e-12)
    table = void_voxel_table(grid)
    assert table.shape == (grid.n_vox, 4) and table.dtype == torch.float32
    torch.testing.assert_close(table[:, :2], grid.voxel_table)
    dist = table[:, 2].view(4, 4, 8)
    assert (dist[..., 4:] == 0).all() and float(dist[..., 0].min()) == pytest.approx(20.0 - VOID_MARGIN_MM)
