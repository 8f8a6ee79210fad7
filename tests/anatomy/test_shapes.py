import math

import numpy as np

from ctdose.anatomy.shapes import Box, Capsule, Ellipsoid, EllipticCylinder, EllipticRing, Part, lattice_axis, paint


def _count(solid, step):
    box = solid.bbox()
    axes = tuple(lattice_axis(lo, hi, step) for lo, hi in box)
    lab = np.zeros(tuple(len(a) for a in axes), np.uint8)
    paint(lab, axes, [Part(solid, 1)])
    return lab.sum() * step**3


def test_voxel_volumes_converge_to_analytic_volumes():
    solids = [
        Ellipsoid((3.3, -1.7, 2.1), (40.0, 25.0, 30.0)),
        Ellipsoid((0.0, 0.0, 0.0), (40.0, 25.0, 30.0), cuts=((0, -1, 0.0),)),  # upper half
        Ellipsoid((0.0, 0.0, 0.0), (40.0, 25.0, 30.0), cuts=((2, 1, 0.5),)),  # cap formula
        EllipticCylinder((-20.0, 35.0), (1.1, 0.3), (12.0, 20.0)),
        Capsule((0.0, 0.0, 0.0), (30.0, 10.0, -20.0), 6.0),
    ]
    for s in solids:
        assert abs(_count(s, 0.5) / s.volume_mm3() - 1) < 0.01, s


def test_ellipsoid_with_volume_and_scaling():
    e = Ellipsoid.with_volume((0, 0, 0), (3, 2, 1), 5000.0)
    assert math.isclose(e.volume_mm3(), 5000.0, rel_tol=1e-12)
    assert math.isclose(e.scaled(2.0).volume_mm3(), 8 * 5000.0, rel_tol=1e-12)
    ring = EllipticRing((0, 10), (0, 0), (20, 30), (18, 28))
    assert abs(ring.scaled(1.5).volume_mm3() / ring.volume_mm3() - 1.5) < 0.01  # thin ring: ~ thickness


def test_paint_priority_only_over_and_lattice_slab():
    axes = tuple(lattice_axis(-10, 10, 1.0) for _ in range(3))
    lab = np.zeros(tuple(len(a) for a in axes), np.uint8)
    big = Box((-5, -5, -5), (5, 5, 5))
    small = Ellipsoid((0, 0, 0), (2, 2, 2))
    paint(lab, axes, [Part(big, 1), Part(small, 2), Part(Box((-10, -10, -10), (10, 10, 10)), 3, only_over=(0,))])
    assert lab[10, 10, 10] == 2 and lab[10, 10, 14] == 1 and lab[0, 0, 0] == 3
    assert np.count_nonzero(lab == 1) + np.count_nonzero(lab == 2) == 11**3
    z = lattice_axis(2.2, 7.9, 2.5)
    assert np.allclose(z, [2.5, 5.0, 7.5]) and np.allclose(z / 2.5, np.round(z / 2.5))
