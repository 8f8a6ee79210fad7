"""Analytic solids of the parametric phantoms and their voxelisation.

Every solid answers two questions: its axis-aligned bounding box in mm and, for voxel
centres given as broadcastable coordinate arrays ``z[:, None, None]``, ``y[None, :, None]``,
``x[None, None, :]`` (mm), whether each centre lies inside. A voxel belongs to a solid when
its centre does (centre sampling). Painting evaluates each solid only on the voxels of its
bounding box, so the cost is the sum of the bounding-box sizes, not organs x volume.

Coordinates follow ``docs/architecture.md``: z superior, y posterior, x to the patient's left,
all in mm. Solids are immutable; :meth:`Solid.scaled` returns a resized copy (used by the
volume calibration of :mod:`ctdose.anatomy.phantom`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

__all__ = [
    "Solid",
    "Ellipsoid",
    "EllipticCylinder",
    "EllipticRing",
    "Capsule",
    "Box",
    "Part",
    "tube",
    "lattice_axis",
    "paint",
    "union_mask",
]


class Solid:
    """Base class: a closed region of space (mm)."""

    def bbox(self) -> np.ndarray:  # pragma: no cover - interface
        """``[[z_lo, z_hi], [y_lo, y_hi], [x_lo, x_hi]]`` in mm."""
        raise NotImplementedError

    def contains(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        """Boolean array: voxel centres inside the solid (broadcast of z, y, x)."""
        raise NotImplementedError

    def scaled(self, factor: float) -> "Solid":  # pragma: no cover
        """Copy resized by ``factor`` along the calibrated dimensions (see subclasses)."""
        raise NotImplementedError

    #: volume ~ factor ** volume_exponent for :meth:`scaled`
    volume_exponent: float = 3.0

    def volume_mm3(self) -> float:  # pragma: no cover
        """Nominal (analytic) volume in mm^3."""
        raise NotImplementedError


def _ball_fraction_below(d: float) -> float:
    """Fraction of the unit ball with u <= d along one axis (spherical cap formula)."""
    d = min(max(d, -1.0), 1.0)
    return (2.0 + 3.0 * d - d**3) / 4.0


@dataclass(frozen=True)
class Ellipsoid(Solid):
    """Ellipsoid with optional axis-aligned cuts.

    Parameters
    ----------
    centre : (z, y, x) mm
    semi : (c, b, a) semi-axes along z, y, x in mm
    cuts : sequence of (axis, sign, d)
        Keep points with ``sign * u[axis] <= d`` where ``u = (p - centre) / semi`` is the
        normalised coordinate (axis 0 = z, 1 = y, 2 = x). ``(0, -1, 0)`` keeps the upper half.
    """

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    cuts: tuple[tuple[int, int, float], ...] = ()

    def bbox(self) -> np.ndarray:
        c = np.asarray(self.centre, float)[:, None]
        s = np.asarray(self.semi, float)[:, None]
        box = c + s * np.array([-1.0, 1.0])
        for axis, sign, d in self.cuts:
            edge = self.centre[axis] + sign * d * self.semi[axis]
            if sign > 0:
                box[axis, 1] = min(box[axis, 1], edge)
            else:
                box[axis, 0] = max(box[axis, 0], edge)
        return box

    def contains(self, z, y, x):
        uz = (z - self.centre[0]) / self.semi[0]
        uy = (y - self.centre[1]) / self.semi[1]
        ux = (x - self.centre[2]) / self.semi[2]
        inside = (uz * uz + uy * uy) + ux * ux <= 1.0
        u = (uz, uy, ux)
        for axis, sign, d in self.cuts:
            inside &= sign * u[axis] <= d
        return inside

    def scaled(self, factor: float) -> "Ellipsoid":
        return replace(self, semi=tuple(s * factor for s in self.semi))

    def volume_mm3(self) -> float:
        frac = 1.0
        for _, _, d in self.cuts:
            frac *= _ball_fraction_below(d)
        return 4.0 / 3.0 * math.pi * float(np.prod(self.semi)) * frac

    @classmethod
    def with_volume(cls, centre, aspect, volume_mm3: float, cuts=()) -> "Ellipsoid":
        """Ellipsoid of the given shape (``aspect`` = semi-axes up to a factor) and volume."""
        unit = cls(centre, tuple(float(a) for a in aspect), tuple(cuts))
        k = (volume_mm3 / unit.volume_mm3()) ** (1.0 / 3.0)
        return unit.scaled(k)


@dataclass(frozen=True)
class EllipticCylinder(Solid):
    """Elliptic cylinder along z: ``((y-cy)/b)^2 + ((x-cx)/a)^2 <= 1``, ``z0 <= z <= z1``.

    :meth:`scaled` scales the semi-axes (not the length; volume ~ factor ** 2), so that a
    calibration is not disturbed by whole slices entering or leaving the z range.
    """

    z_range: tuple[float, float]
    centre_yx: tuple[float, float]
    semi_yx: tuple[float, float]
    volume_exponent: float = 2.0

    def bbox(self) -> np.ndarray:
        (cy, cx), (b, a) = self.centre_yx, self.semi_yx
        return np.array([list(self.z_range), [cy - b, cy + b], [cx - a, cx + a]], float)

    def contains(self, z, y, x):
        uy = (y - self.centre_yx[0]) / self.semi_yx[0]
        ux = (x - self.centre_yx[1]) / self.semi_yx[1]
        return (uy * uy + ux * ux <= 1.0) & (z >= self.z_range[0]) & (z <= self.z_range[1])

    def scaled(self, factor: float) -> "EllipticCylinder":
        return replace(self, semi_yx=tuple(s * factor for s in self.semi_yx))

    def volume_mm3(self) -> float:
        return math.pi * self.semi_yx[0] * self.semi_yx[1] * (self.z_range[1] - self.z_range[0])


@dataclass(frozen=True)
class EllipticRing(Solid):
    """Region between two coaxial elliptic cylinders (a shell, a rib, a scapula).

    Points with ``inner <= 1`` excluded and ``outer <= 1`` included, ``z0 <= z <= z1``,
    ``y >= y_min`` and ``|x - cx| >= abs_x_min``. :meth:`scaled` changes the radial
    thickness about the mid ellipse by ``factor`` (the volume of a thin ring goes with
    ``factor``).
    """

    z_range: tuple[float, float]
    centre_yx: tuple[float, float]
    outer_yx: tuple[float, float]
    inner_yx: tuple[float, float]
    y_min: float = -np.inf
    abs_x_min: float = 0.0
    volume_exponent: float = 1.0

    def bbox(self) -> np.ndarray:
        (cy, cx), (b, a) = self.centre_yx, self.outer_yx
        return np.array(
            [list(self.z_range), [max(cy - b, self.y_min), cy + b], [cx - a, cx + a]], float
        )

    def contains(self, z, y, x):
        (cy, cx) = self.centre_yx
        dy, dx = y - cy, x - cx
        outer = (dy / self.outer_yx[0]) ** 2 + (dx / self.outer_yx[1]) ** 2 <= 1.0
        inner = (dy / self.inner_yx[0]) ** 2 + (dx / self.inner_yx[1]) ** 2 < 1.0
        m = outer & ~inner & (z >= self.z_range[0]) & (z <= self.z_range[1])
        if np.isfinite(self.y_min):
            m &= y >= self.y_min
        if self.abs_x_min > 0:
            m &= np.abs(dx) >= self.abs_x_min
        return m

    def scaled(self, factor: float) -> "EllipticRing":
        outer, inner = [], []
        for o, i in zip(self.outer_yx, self.inner_yx):
            m, t = (o + i) / 2.0, (o - i) / 2.0 * factor
            outer.append(m + t)
            inner.append(max(m - t, 1e-3))
        return replace(self, outer_yx=tuple(outer), inner_yx=tuple(inner))

    def volume_mm3(self) -> float:
        """Nominal volume of the full ring (ignores the ``y_min`` / ``abs_x_min`` cuts)."""
        area = math.pi * (self.outer_yx[0] * self.outer_yx[1] - self.inner_yx[0] * self.inner_yx[1])
        return area * (self.z_range[1] - self.z_range[0])


@dataclass(frozen=True)
class Capsule(Solid):
    """Points within ``radius`` of the segment ``p0``-``p1`` (a straight tube with round ends).

    :meth:`scaled` scales the radius only (volume ~ factor ** 2).
    """

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius: float
    volume_exponent: float = 2.0

    def bbox(self) -> np.ndarray:
        p = np.array([self.p0, self.p1], float)
        return np.stack([p.min(0) - self.radius, p.max(0) + self.radius], axis=1)

    def contains(self, z, y, x):
        d = np.subtract(self.p1, self.p0)
        dz, dy, dx = z - self.p0[0], y - self.p0[1], x - self.p0[2]
        dd = float(d @ d)
        if dd == 0.0:
            return dz * dz + dy * dy + dx * dx <= self.radius**2
        t = np.clip((dz * d[0] + dy * d[1] + dx * d[2]) / dd, 0.0, 1.0)
        rz, ry, rx = dz - t * d[0], dy - t * d[1], dx - t * d[2]
        return rz * rz + ry * ry + rx * rx <= self.radius**2

    def scaled(self, factor: float) -> "Capsule":
        return replace(self, radius=self.radius * factor)

    def volume_mm3(self) -> float:
        length = float(np.linalg.norm(np.subtract(self.p1, self.p0)))
        return math.pi * self.radius**2 * length + 4.0 / 3.0 * math.pi * self.radius**3


@dataclass(frozen=True)
class Box(Solid):
    """Axis-aligned box ``lo <= p <= hi`` (mm, (z, y, x)). Not resizable."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def bbox(self) -> np.ndarray:
        return np.array([self.lo, self.hi], float).T

    def contains(self, z, y, x):
        return (
            (z >= self.lo[0]) & (z <= self.hi[0]) & (y >= self.lo[1]) & (y <= self.hi[1])
            & (x >= self.lo[2]) & (x <= self.hi[2])
        )

    def scaled(self, factor: float) -> "Box":
        return self

    def volume_mm3(self) -> float:
        return float(np.prod(np.subtract(self.hi, self.lo)))


def tube(points: Sequence[Sequence[float]], radius: float) -> list[Capsule]:
    """A curved tube through ``points`` ((z, y, x) mm) as a chain of capsules."""
    pts = [tuple(float(v) for v in p) for p in points]
    return [Capsule(a, b, float(radius)) for a, b in zip(pts[:-1], pts[1:])]


@dataclass
class Part:
    """One painting step: ``solid`` gets ``label`` where allowed.

    ``only_over`` restricts painting to voxels that currently hold one of these labels;
    ``container`` restricts it to voxels inside another solid (e.g. organs stay inside the
    trunk's muscle region).
    """

    solid: Solid
    label: int
    only_over: tuple[int, ...] | None = None
    container: Solid | None = None


def lattice_axis(lo_mm: float, hi_mm: float, step_mm: float) -> np.ndarray:
    """Voxel centres ``k * step`` (k integer) whose voxels overlap ``[lo, hi]``.

    All phantom grids share this lattice anchored at 0 mm, so a z-range voxelisation is
    exactly a slab of the full one.
    """
    k0 = math.floor(lo_mm / step_mm + 0.5)
    k1 = math.ceil(hi_mm / step_mm - 0.5)
    return np.arange(k0, k1 + 1) * step_mm


def _index_range(axis: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    return int(np.searchsorted(axis, lo, "left")), int(np.searchsorted(axis, hi, "right"))


def _box_slices(solid: Solid, axes, box: np.ndarray | None = None) -> tuple[slice, slice, slice] | None:
    sl = []
    for ax, (lo, hi) in zip(axes, solid.bbox() if box is None else box):
        i0, i1 = _index_range(ax, lo, hi)
        if i1 <= i0:
            return None
        sl.append(slice(i0, i1))
    return tuple(sl)


def _sub_mask(solid: Solid, axes, sl) -> np.ndarray:
    z = axes[0][sl[0]][:, None, None]
    y = axes[1][sl[1]][None, :, None]
    x = axes[2][sl[2]][None, None, :]
    m = solid.contains(z, y, x)
    shape = (len(z), y.shape[1], x.shape[2])
    return m if m.shape == shape else np.broadcast_to(m, shape)


def union_mask(solids: Sequence[Solid], axes) -> np.ndarray:
    """Boolean volume on the grid ``axes``: centres inside any of ``solids``."""
    out = np.zeros(tuple(len(a) for a in axes), bool)
    for solid in solids:
        sl = _box_slices(solid, axes)
        if sl is not None:
            out[sl] |= _sub_mask(solid, axes, sl)
    return out


def paint(
    labels: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    parts: Sequence[Part],
) -> np.ndarray:
    """Paint ``parts`` in order into ``labels`` (later parts win) on the grid ``axes``.

    Parameters
    ----------
    labels : uint8 array [z, y, x], modified in place
    axes : voxel-centre coordinates (z, y, x) in mm, each increasing
    parts : painting order = overlap priority (last wins)

    Returns
    -------
    labels
    """
    if not parts:
        return labels
    boxes = np.stack([p.solid.bbox() for p in parts])
    extent = np.array([[a[0], a[-1]] for a in axes])
    hit = np.all((boxes[:, :, 1] >= extent[:, 0]) & (boxes[:, :, 0] <= extent[:, 1]), axis=1)
    for part, box, ok in zip(parts, boxes, hit):
        if not ok:
            continue
        sl = _box_slices(part.solid, axes, box)
        if sl is None:
            continue
        m = _sub_mask(part.solid, axes, sl)
        if part.container is not None:
            z = axes[0][sl[0]][:, None, None]
            y = axes[1][sl[1]][None, :, None]
            x = axes[2][sl[2]][None, None, :]
            m = m & part.container.contains(z, y, x)
        view = labels[sl]
        if part.only_over is not None:
            m = m & np.isin(view, part.only_over)
        view[m] = part.label
    return labels
