"""Open parametric adult phantom (the XCAT stand-in), voxelised at any spacing.

The phantom is built from analytic solids (:mod:`ctdose.anatomy.shapes`) in the spirit of
the ORNL/MIRD stylised phantoms (Cristy & Eckerman 1987) but anatomically richer: trunk,
neck and head with skin, a subcutaneous fat layer and muscle; lungs, heart (wall and blood),
aorta and great vessels, trachea and bronchi, oesophagus, liver, gallbladder, stomach,
spleen, pancreas, kidneys, adrenals, colon, small intestine; spine (vertebral bodies with
red-marrow spongiosa, arches, spinal cord), twelve rib pairs and the sternum (with a
red-marrow core), clavicles, scapulae; arms (skin, fat, soft tissue, bones) along the body or
raised; skull and brain; breasts (female); optional visceral fat and patient table.
The reference layout is data: ``ctdose/data/phantom_geometry.csv``.

Parameters of one phantom (:class:`PhantomParams`)
--------------------------------------------------
- organ volumes (mL): every organ with a target is sized analytically to it and the
  voxelisation is then calibrated (below) so that the *voxelised* volume matches;
- height: z positions scale with ``height / 1.76 m``; in-plane positions and bone sizes with
  ``sqrt(height / reference height of the sex)`` (cross-section area ~ height at fixed BMI);
- fat scale: one factor multiplies the thickness of every fat layer (trunk, neck, arms);
- arms (``"down"``/``"raised"``), in-plane offsets of the body from the isocentre, a patient
  table, organ shifts, visceral fat and a diaphragm shift (used by the surrogate cohort).

Overlap priority (painting order, later wins)
---------------------------------------------
skin < subcutaneous fat < muscle / arm soft tissue < visceral fat < small intestine < colon <
liver < gallbladder < stomach < spleen < pancreas < kidneys < adrenals < lungs < heart wall <
heart blood < vessels < oesophagus < trachea < spine < ribs < sternum < clavicles < scapulae <
arm bones < skull < brain < table. Organs are clipped to the trunk's muscle region.

Volume calibration
------------------
Centre sampling on a grid and the carving by higher-priority organs change voxelised volumes.
:meth:`Phantom.voxelise` therefore counts, for every organ with a target, the voxels inside
the organ's own solids that keep its label (painting only the organ's bounding box with all
solids that reach into it, on the same lattice as the output) and rescales the organ by
``(target / count) ** (1 / exponent)`` (exponent 3 for ellipsoids, 2 for tubes and elliptic
cylinders - scaled in-plane only, 1 for thin rings); once a target is bracketed the factor is
bisected and the best factor seen is kept. Up to five rounds bring every organ within about
1 % at 2-2.5 mm (the red-marrow cores of spine, ribs and sternum are calibrated together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from .._data import read_table
from ..errors import InputError
from .organs import label_id
from .shapes import (
    Box,
    Ellipsoid,
    EllipticCylinder,
    EllipticRing,
    Part,
    Solid,
    lattice_axis,
    paint,
    tube,
    union_mask,
)

__all__ = [
    "PhantomParams",
    "Phantom",
    "build_phantom",
    "reference_organ_volumes_ml",
    "reference_height_m",
    "VOLUME_ORGANS",
    "VERTEBRAE",
]

MM_PER_CM = 10.0
ML_PER_MM3 = 1e-3

#: organ keys with a target volume (icrp_reference_organs.csv)
VOLUME_ORGANS = (
    "lungs", "heart_wall", "heart_blood", "liver", "stomach", "spleen", "pancreas", "kidneys",
    "adrenals", "gallbladder", "colon", "small_intestine", "oesophagus", "brain",
)
#: vertebrae from the sacrum upwards (z intervals from phantom_geometry.csv)
VERTEBRAE = (
    ("sacrum",) + tuple(f"L{i}" for i in range(5, 0, -1)) + tuple(f"T{i}" for i in range(12, 0, -1))
    + tuple(f"C{i}" for i in range(7, 0, -1))
)
#: organs moved by the diaphragm shift
_DIAPHRAGM_ORGANS = ("lungs", "heart", "liver", "gallbladder", "stomach", "spleen", "pancreas", "adrenals")
_ARMS = ("down", "raised")
_CALIBRATION_ROUNDS = 5
_CALIBRATION_TOL = 0.005
_MAX_STEP = 1.5  # largest factor applied in one calibration round
_MIN_VOXELS = 8  # organs with fewer expected voxels are not calibrated


@lru_cache(maxsize=1)
def _geometry() -> dict[str, float]:
    table = read_table("phantom_geometry.csv")
    scale = np.where(table["unit"].fillna("").str.strip() == "cm", MM_PER_CM, 1.0)
    return dict(zip(table["key"], table["value"].astype(float) * scale))


@lru_cache(maxsize=1)
def _paths() -> dict[str, list[tuple[float, float, float, bool, str]]]:
    table = read_table("phantom_paths.csv")
    out: dict[str, list] = {}
    for row in table.itertuples(index=False):
        moves = "" if not isinstance(row.moves_with, str) else row.moves_with
        out.setdefault(row.path, []).append(
            (row.z * MM_PER_CM, row.y * MM_PER_CM, row.x * MM_PER_CM, bool(row.mirror), moves))
    return out


def reference_height_m(sex: str) -> float:
    """Height (m) of the ICRP reference adult of ``sex`` (phantom_geometry.csv)."""
    if sex not in ("M", "F"):
        raise InputError(f"sex {sex!r}: expected 'M' or 'F'")
    return _geometry()["height_ref_male" if sex == "M" else "height_ref_female"] / 1000.0


def reference_organ_volumes_ml(sex: str) -> dict[str, float]:
    """ICRP reference organ volumes (mL) of an adult of ``sex`` ("M"/"F").

    Volume = ICRP 89 mass / ICRP 110 density (``icrp_reference_organs.csv``).
    """
    if sex not in ("M", "F"):
        raise InputError(f"sex {sex!r}: expected 'M' or 'F'")
    table = read_table("icrp_reference_organs.csv")
    rows = table[table["sex"] == sex]
    return {o: float(m / d) for o, m, d in zip(rows["organ"], rows["mass_g"], rows["density_g_cm3"])}


@dataclass
class PhantomParams:
    """Parameters of one phantom (lengths in mm unless stated).

    Attributes
    ----------
    sex : "M" or "F"
    height_m : body height in m
    fat_scale : factor on every fat-layer thickness
    organ_volumes_ml : target volumes (keys of :data:`VOLUME_ORGANS`); missing keys take the
        ICRP reference of the sex
    trunk_scale_x, trunk_scale_y : extra in-plane factors of the lean trunk (surrogate)
    arms : "down" (along the body) or "raised" (above the head)
    offset_x_mm, offset_y_mm : position of the trunk axis relative to the isocentre
        (+y = posterior = below the isocentre for a supine patient)
    table : add a carbon-fibre patient table under the back
    organ_shift_mm : organ name -> (dz, dy, dx) added to its centre (keys as in VOLUME_ORGANS,
        "kidneys", "adrenals" move both sides)
    diaphragm_shift_mm : z shift of lungs, heart and upper-abdominal organs
    visceral_fat_ml : volume of an abdominal visceral-fat region (0 = none)
    breast_scale : size factor of the breasts (female only)
    """

    sex: str
    height_m: float
    fat_scale: float = 1.0
    organ_volumes_ml: dict[str, float] = field(default_factory=dict)
    trunk_scale_x: float = 1.0
    trunk_scale_y: float = 1.0
    arms: str = "down"
    offset_x_mm: float = 0.0
    offset_y_mm: float = 0.0
    table: bool = False
    organ_shift_mm: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    diaphragm_shift_mm: float = 0.0
    visceral_fat_ml: float = 0.0
    breast_scale: float = 1.0

    def validate(self, where: str = "phantom") -> None:
        """Raise ``InputError`` for values no phantom can have."""
        if self.sex not in ("M", "F"):
            raise InputError(f"{where}: sex {self.sex!r}, expected 'M' or 'F'")
        if not (1.0 <= self.height_m <= 2.5):
            raise InputError(f"{where}: height_m={self.height_m} outside 1.0-2.5 m")
        if not (0.2 <= self.fat_scale <= 6.0):
            raise InputError(f"{where}: fat_scale={self.fat_scale} outside 0.2-6")
        if self.arms not in _ARMS:
            raise InputError(f"{where}: arms={self.arms!r}, expected one of {_ARMS}")
        for k, v in self.organ_volumes_ml.items():
            if k not in VOLUME_ORGANS:
                raise InputError(f"{where}: unknown organ {k!r} (known: {', '.join(VOLUME_ORGANS)})")
            if not (np.isfinite(v) and v > 0):
                raise InputError(f"{where}: organ volume {k}={v} mL must be positive")


def params_from_design(row, **extra) -> PhantomParams:
    """Phantom parameters from one row of a sampled cohort design.

    Takes ``sex``, ``height_m``, ``fat_scale`` and ``vol_<organ>_ml`` from ``row`` (a
    mapping or pandas Series); ``extra`` sets the cohort-specific fields.
    """
    row = dict(row)
    return PhantomParams(
        sex=str(row["sex"]),
        height_m=float(row["height_m"]),
        fat_scale=float(row["fat_scale"]),
        organ_volumes_ml={o: float(row[f"vol_{o}_ml"]) for o in VOLUME_ORGANS},
        **extra,
    )


@dataclass
class _Unit:
    """A calibrated organ: parts it resizes, the labels counted, its target."""

    name: str
    part_index: list[int]
    count_labels: tuple[int, ...]
    target_ml: float
    factor: float = 1.0


class Phantom:
    """A built phantom: ordered painting parts, calibrated organs, landmarks.

    Use :func:`build_phantom`; then :meth:`voxelise`.
    """

    def __init__(self, params: PhantomParams, parts: list[Part], units: list[_Unit],
                 vertebrae_z_mm: dict[str, tuple[float, float]]):
        self.params = params
        self.parts = parts
        self._base = [p.solid for p in parts]
        self.units = units
        self.vertebrae_z_mm = vertebrae_z_mm
        self._calibrated_for: tuple[float, float, float] | None = None

    # -- geometry ---------------------------------------------------------------------------
    def bbox_mm(self) -> np.ndarray:
        """Bounding box of the whole phantom ``[[z_lo, z_hi], [y_lo, y_hi], [x_lo, x_hi]]``."""
        boxes = np.stack([p.solid.bbox() for p in self.parts])
        return np.stack([boxes[:, :, 0].min(0), boxes[:, :, 1].max(0)], axis=1)

    def target_volumes_ml(self) -> dict[str, float]:
        """Target volume (mL) of every calibrated organ (sampled or nominal)."""
        return {u.name: u.target_ml for u in self.units}

    def landmarks_z_mm(self) -> dict[str, tuple[float, float]]:
        """z extents (mm) of the ROI landmarks: each vertebra and ``"adrenal"`` (both glands)."""
        out = dict(self.vertebrae_z_mm)
        ad = [label_id("adrenal_right"), label_id("adrenal_left")]
        boxes = [p.solid.bbox()[0] for p in self.parts if p.label in ad]
        out["adrenal"] = (min(b[0] for b in boxes), max(b[1] for b in boxes))
        return out

    def _set_factor(self, unit: _Unit, factor: float) -> None:
        unit.factor = factor
        for i in unit.part_index:
            self.parts[i].solid = self._base[i].scaled(factor)

    # -- voxelisation -----------------------------------------------------------------------
    def _axes(self, spacing, box) -> tuple[np.ndarray, ...]:
        return tuple(lattice_axis(lo, hi, d) for (lo, hi), d in zip(box, spacing))

    def _unit_count(self, unit: _Unit, spacing) -> int:
        box = np.stack([self.parts[i].solid.bbox() for i in unit.part_index])
        box = np.stack([box[:, :, 0].min(0), box[:, :, 1].max(0)], axis=1)
        axes = self._axes(spacing, box)
        labels = np.zeros(tuple(len(a) for a in axes), np.uint8)
        # parts painted before the organ cannot change whether its voxels keep its label
        paint(labels, axes, self.parts[min(unit.part_index):])
        inside = union_mask([self.parts[i].solid for i in unit.part_index], axes)
        return int(np.count_nonzero(inside & np.isin(labels, unit.count_labels)))

    def calibrate(self, spacing_mm: float | Sequence[float], rounds: int = _CALIBRATION_ROUNDS) -> dict[str, float]:
        """Resize organs so that their voxel volumes at ``spacing_mm`` match the targets.

        Each round counts the organs not yet within tolerance and rescales them; once a
        target is bracketed (one factor too small, one too large) the factor is bisected, and
        every organ keeps the best factor seen (voxel counts change in steps).

        Returns
        -------
        dict
            Relative deviation (voxelised / target - 1) per organ after calibration (NaN for
            organs of fewer than a few voxels, which are not calibrated).
        """
        spacing = _spacing3(spacing_mm)
        voxel_ml = float(np.prod(spacing)) * ML_PER_MM3
        best: dict[str, tuple[float, float]] = {}
        bracket = {u.name: [0.0, np.inf] for u in self.units}
        active = [u for u in self.units if u.target_ml / voxel_ml >= _MIN_VOXELS]
        for _ in range(rounds):
            for u in active:
                dev = self._unit_count(u, spacing) * voxel_ml / u.target_ml - 1.0
                if u.name not in best or abs(dev) < abs(best[u.name][1]):
                    best[u.name] = (u.factor, dev)
                lo, hi = bracket[u.name]
                if dev < 0:
                    lo = max(lo, u.factor)
                else:
                    hi = min(hi, u.factor)
                bracket[u.name] = [lo, hi]
                if dev <= -1.0:
                    step = _MAX_STEP
                else:
                    exponent = max(self._base[i].volume_exponent for i in u.part_index)
                    step = min(max((1.0 / (1.0 + dev)) ** (1.0 / exponent), 1.0 / _MAX_STEP), _MAX_STEP)
                new = u.factor * step
                if np.isfinite(hi) and lo > 0 and not (lo < new < hi):
                    new = 0.5 * (lo + hi)
                self._set_factor(u, new)
            # a voxel count cannot resolve better than about one voxel in the organ
            active = [u for u in active
                      if abs(best[u.name][1]) > max(_CALIBRATION_TOL, voxel_ml / u.target_ml)]
            if not active:
                break
        for u in self.units:
            if u.name in best:
                self._set_factor(u, best[u.name][0])
        self._calibrated_for = tuple(spacing)
        return {u.name: best[u.name][1] if u.name in best else float("nan") for u in self.units}

    def voxelise(
        self,
        spacing_mm: float | Sequence[float],
        z_range_mm: tuple[float, float] | None = None,
        calibrate: bool = True,
    ) -> tuple[np.ndarray, tuple[float, float, float]]:
        """Label volume of the phantom.

        Parameters
        ----------
        spacing_mm : float or (dz, dy, dx)
            Voxel size in mm.
        z_range_mm : (lo, hi), optional
            Only voxelise slices whose centres lie in ``[lo, hi]`` (mm); the slab is exactly
            the corresponding part of the full voxelisation (shared lattice).
        calibrate : bool
            Calibrate organ volumes at this spacing first (see module docstring).

        Returns
        -------
        labels : uint8 array [z, y, x]
        origin_mm : (z0, y0, x0), centre of voxel [0, 0, 0]
        """
        spacing = _spacing3(spacing_mm)
        if calibrate and self._calibrated_for != tuple(spacing):
            self.calibrate(spacing)
        box = self.bbox_mm()
        if z_range_mm is not None:
            lo, hi = float(z_range_mm[0]), float(z_range_mm[1])
            if not hi >= lo:
                raise InputError(f"z_range_mm={z_range_mm}: expected lo <= hi")
            box[0] = [max(box[0, 0], lo), min(box[0, 1], hi)]
        axes = list(self._axes(spacing, box))
        if z_range_mm is not None:
            axes[0] = axes[0][(axes[0] >= z_range_mm[0] - 1e-9) & (axes[0] <= z_range_mm[1] + 1e-9)]
            if axes[0].size == 0:
                raise InputError(f"z_range_mm={z_range_mm}: no slice of the phantom in this range")
        labels = np.zeros(tuple(len(a) for a in axes), np.uint8)
        paint(labels, tuple(axes), self.parts)
        return labels, (float(axes[0][0]), float(axes[1][0]), float(axes[2][0]))


def _spacing3(spacing_mm) -> tuple[float, float, float]:
    s = np.broadcast_to(np.asarray(spacing_mm, float), (3,))
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InputError(f"spacing_mm={spacing_mm}: must be positive")
    return tuple(float(v) for v in s)


class _Builder:
    """Turns parameters + reference geometry into ordered parts (internal)."""

    def __init__(self, p: PhantomParams):
        p.validate()
        self.p = p
        self.g = g = _geometry()
        sex = "male" if p.sex == "M" else "female"
        ref_h = g[f"height_ref_{sex}"]
        sxy = math.sqrt(p.height_m * 1000.0 / ref_h)
        self.kz = p.height_m * 1000.0 / g["height_ref_male"]
        self.kx = sxy * p.trunk_scale_x * g[f"muscle_semi_x_{sex}"] / g["muscle_semi_x_male"]
        self.ky = sxy * p.trunk_scale_y * g[f"muscle_semi_y_{sex}"] / g["muscle_semi_y_male"]
        self.kr = math.sqrt(self.kx * self.ky)  # radial sizes (bones, tubes)
        self.fat = g[f"fat_thickness_{sex}"] * p.fat_scale
        self.arm_fat = g[f"arm_fat_thickness_{sex}"] * p.fat_scale
        self.arm_r = g[f"arm_muscle_radius_{sex}"] * sxy
        vols = reference_organ_volumes_ml(p.sex)
        vols.update(p.organ_volumes_ml)
        self.vol_mm3 = {k: v / ML_PER_MM3 for k, v in vols.items()}
        self.parts: list[Part] = []
        self.units: list[_Unit] = []
        self.L = {n: label_id(n) for n in _LABELS}
        # trunk ellipses
        self.mx, self.my = g["muscle_semi_x_male"] * self.kx, g["muscle_semi_y_male"] * self.ky
        self.ox = self.mx + self.fat + g["skin_thickness"]
        self.oy = self.my + self.fat + g["skin_thickness"]
        self.trunk_top = g["trunk_top_z"] * self.kz
        self.muscle = EllipticCylinder((0.0, self.trunk_top), self._yx(0, 0), (self.my, self.mx))

    # coordinates ---------------------------------------------------------------------------
    def _yx(self, y_cm_scaled, x_cm_scaled):
        return (self.p.offset_y_mm + y_cm_scaled, self.p.offset_x_mm + x_cm_scaled)

    def pos(self, z, y, x, organ: str | None = None) -> tuple[float, float, float]:
        """Frame position (mm, male reference) -> patient mm, with organ shifts."""
        zz, yy, xx = z * self.kz, self.p.offset_y_mm + y * self.ky, self.p.offset_x_mm + x * self.kx
        if organ is not None:
            dz, dy, dx = self.p.organ_shift_mm.get(organ, (0.0, 0.0, 0.0))
            if organ in _DIAPHRAGM_ORGANS:
                dz += self.p.diaphragm_shift_mm
            zz, yy, xx = zz + dz, yy + dy, xx + dx
        return (zz, yy, xx)

    def path(self, name: str, side: float = 1.0) -> list[tuple[float, float, float]]:
        """Centre line of a tubular structure (phantom_paths.csv) in patient mm; ``side`` mirrors x."""
        return [self.pos(z, y, (side if mirror else 1.0) * x, moves or None)
                for z, y, x, mirror, moves in _paths()[name]]

    def centre(self, name: str, side: float = 1.0, organ: str | None = None):
        g = self.g
        return self.pos(g[f"{name}_centre_z"], g[f"{name}_centre_y"], side * g[f"{name}_centre_x"],
                        organ or name)

    def aspect(self, name: str):
        g = self.g
        return (g[f"{name}_semi_z"], g[f"{name}_semi_y"], g[f"{name}_semi_x"])

    # parts ---------------------------------------------------------------------------------
    def add(self, solid: Solid, label: str, only_over=None, contained: bool = False) -> int:
        only = None if only_over is None else tuple(self.L[n] for n in only_over)
        self.parts.append(Part(solid, self.L[label], only, self.muscle if contained else None))
        return len(self.parts) - 1

    def unit(self, name: str, idx: list[int], target_mm3: float, count: Sequence[str] | None = None):
        labels = tuple(self.L[n] for n in (count or [_label_of(self.parts[idx[0]].label)]))
        self.units.append(_Unit(name, idx, labels, target_mm3 * ML_PER_MM3))

    def nominal(self, idx: list[int]) -> float:
        return sum(self.parts[i].solid.volume_mm3() for i in idx)

    def build(self) -> Phantom:
        self._body()
        self._arms()
        if self.p.sex == "F":
            self._breasts()
        self._visceral_fat()
        self._abdomen()
        self._thorax()
        self._skeleton()
        self._head()
        if self.p.table:
            self._table()
        return Phantom(self.p, self.parts, self.units, self._vertebrae())

    def _body(self):
        g, sk = self.g, self.g["skin_thickness"]
        top, c = self.trunk_top, self._yx(0, 0)
        self.add(EllipticCylinder((0.0, top), c, (self.oy, self.ox)), "skin")
        self.add(EllipticCylinder((0.0, top), c, (self.my + self.fat, self.mx + self.fat)), "subcutaneous_fat")
        self.add(self.muscle, "muscle")
        # neck
        nc = self._yx(g["neck_centre_y"] * self.ky, 0)
        nr = g["neck_muscle_radius"] * self.kr
        nf = g["neck_fat_thickness"] * self.p.fat_scale
        zr = (top - sk, g["neck_top_z"] * self.kz)
        self.add(EllipticCylinder(zr, nc, (nr + nf + sk,) * 2), "skin", only_over=["air_outside"])
        self.add(EllipticCylinder(zr, nc, (nr + nf,) * 2), "subcutaneous_fat", only_over=["air_outside", "skin"])
        self.add(EllipticCylinder(zr, nc, (nr,) * 2), "muscle")

    def _arms(self):
        g, sk = self.g, self.g["skin_thickness"]
        r_out = self.arm_r + self.arm_fat + sk
        raised = self.p.arms == "raised"
        head_x = (g["brain_semi_x"] * self._brain_k() + g["skull_thickness"] + g["scalp_thickness"])
        for side in (-1.0, 1.0):
            if raised:
                cx = side * (head_x + g["raised_arm_gap"] + r_out)
                zr = (g["raised_arm_bottom_z"] * self.kz, g["raised_arm_top_z"] * self.kz)
                zb = (g["arm_top_z"] * self.kz, g["raised_humerus_top_z"] * self.kz)
                zf = None
            else:
                cx = side * (self.ox + r_out)
                zr = (g["arm_bottom_z"] * self.kz, g["arm_top_z"] * self.kz)
                zb = (g["humerus_bottom_z"] * self.kz, zr[1] - g["humerus_radius"])
                zf = (zr[0] + g["forearm_bone_radius"], zb[0])
            c = self._yx(g["arm_centre_y"] * self.ky, cx)
            self.add(EllipticCylinder(zr, c, (r_out,) * 2), "skin", only_over=["air_outside"])
            self.add(EllipticCylinder(zr, c, (r_out - sk,) * 2), "subcutaneous_fat",
                     only_over=["air_outside", "skin"])
            self.add(EllipticCylinder(zr, c, (self.arm_r,) * 2), "arm_soft_tissue",
                     only_over=["air_outside", "skin", "subcutaneous_fat"])
            self.add(EllipticCylinder(zb, c, (g["humerus_radius"] * self.kr,) * 2), "arm_bones")
            if zf is not None:
                self.add(EllipticCylinder(zf, c, (g["forearm_bone_radius"] * self.kr,) * 2), "arm_bones")

    def _breasts(self):
        g, sk = self.g, self.g["skin_thickness"]
        for side in (-1.0, 1.0):
            s = self.p.breast_scale
            semi = (g["breast_semi_z"] * s, g["breast_semi_y"] * s, g["breast_semi_x"] * s)
            c = (g["breast_centre_z"] * self.kz, self.p.offset_y_mm - self.oy + g["breast_inset_fraction"] * semi[1],
                 self.p.offset_x_mm + side * g["breast_centre_x"] * self.kx)
            self.add(Ellipsoid(c, tuple(v + sk for v in semi)), "skin", only_over=["air_outside"])
            self.add(Ellipsoid(c, semi), "breast", only_over=["air_outside", "skin"])

    def _visceral_fat(self):
        if self.p.visceral_fat_ml <= 0:
            return
        g = self.g
        z0, z1 = g["visceral_fat_bottom_z"] * self.kz, g["visceral_fat_top_z"] * self.kz
        ax, ay = g["small_intestine_semi_x"], g["small_intestine_semi_y"]
        k = math.sqrt(self.p.visceral_fat_ml / ML_PER_MM3 / (math.pi * ax * ay * (z1 - z0)))
        c = self._yx(g["visceral_fat_centre_y"] * self.ky, 0)
        self.add(EllipticCylinder((z0, z1), c, (ay * k, ax * k)), "visceral_fat", contained=True)

    def _ellipsoid_organ(self, key, label, vol_mm3, side=1.0, centre_key=None, cuts=(), organ=None):
        ck = centre_key or key
        c = self.centre(ck, side, organ or key)
        i = self.add(Ellipsoid.with_volume(c, self.aspect(ck), vol_mm3, cuts), label, contained=True)
        return i

    def _abdomen(self):
        g, v = self.g, self.vol_mm3
        # small intestine: elliptic cylinder region sized to its volume
        z0, z1 = g["small_intestine_bottom_z"] * self.kz, g["small_intestine_top_z"] * self.kz
        ax, ay = g["small_intestine_semi_x"], g["small_intestine_semi_y"]
        k = math.sqrt(v["small_intestine"] / (math.pi * ax * ay * (z1 - z0)))
        c = self._yx(g["small_intestine_centre_y"] * self.ky, 0)
        dz, dy, dx = self.p.organ_shift_mm.get("small_intestine", (0.0, 0.0, 0.0))
        i = self.add(EllipticCylinder((z0 + dz, z1 + dz), (c[0] + dy, c[1] + dx), (ay * k, ax * k)),
                     "small_intestine", contained=True)
        self.unit("small_intestine", [i], v["small_intestine"])
        # colon: ascending, transverse, descending, sigmoid
        idx = [self.add(s, "colon", contained=True) for s in tube(self.path("colon"), g["colon_radius"])]
        self._tube_to_volume(idx, v["colon"])
        self.unit("colon", idx, v["colon"])
        i = self._ellipsoid_organ("liver", "liver", v["liver"], cuts=((2, 1, g["liver_cut_x"]),))
        self.unit("liver", [i], v["liver"])
        for key in ("gallbladder", "stomach", "spleen", "pancreas"):
            i = self._ellipsoid_organ(key, key, v[key])
            self.unit(key, [i], v[key])
        for key, organ in (("kidney", "kidneys"), ("adrenal", "adrenals")):
            for side, name in ((-1.0, f"{key}_right"), (1.0, f"{key}_left")):
                i = self._ellipsoid_organ(key, name, v[organ] / 2.0, side=side, organ=organ)
                self.unit(name, [i], v[organ] / 2.0)

    def _tube_to_volume(self, idx, vol_mm3):
        """Set the radius of a tube so that its nominal volume is ``vol_mm3`` (bisection)."""
        base = [self.parts[i].solid for i in idx]
        lo, hi = 1e-3, 10.0
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            if sum(b.scaled(mid).volume_mm3() for b in base) > vol_mm3:
                hi = mid
            else:
                lo = mid
        for i, b in zip(idx, base):
            self.parts[i].solid = b.scaled(lo)

    def _thorax(self):
        g, v = self.g, self.vol_mm3
        cut = ((0, -1, 0.0),)  # upper half-ellipsoid
        frac = {"lung_right": g["lung_right_fraction"], "lung_left": 1.0 - g["lung_right_fraction"]}
        for side, name in ((-1.0, "lung_right"), (1.0, "lung_left")):
            c = self.pos(g["lung_base_z"], g["lung_centre_y"], side * g["lung_centre_x"], "lungs")
            aspect = (g["lung_semi_z"], g["lung_semi_y"], g["lung_semi_x"])
            i = self.add(Ellipsoid.with_volume(c, aspect, v["lungs"] * frac[name], cut), name, contained=True)
            self.unit(name, [i], v["lungs"] * frac[name])
        total = v["heart_wall"] + v["heart_blood"]
        c = self.centre("heart")
        outer = Ellipsoid.with_volume(c, self.aspect("heart"), total)
        i = self.add(outer, "heart_wall", contained=True)
        self.unit("heart", [i], total, count=["heart_wall", "heart_blood"])
        j = self.add(outer.scaled((v["heart_blood"] / total) ** (1.0 / 3.0)), "heart_blood", contained=True)
        self.unit("heart_blood", [j], v["heart_blood"])
        # vessels: aorta, arch branches, venae cavae
        r, rb, rv = g["vessel_radius"] * self.kr, g["branch_radius"] * self.kr, g["vena_cava_radius"] * self.kr
        vessels = tube(self.path("aorta"), r) + tube(self.path("branch_right"), rb) \
            + tube(self.path("branch_left"), rb) + tube(self.path("superior_vena_cava"), rv) \
            + tube(self.path("inferior_vena_cava"), rv)
        idx = [self.add(s, "aorta_great_vessels") for s in vessels]
        self.unit("aorta_great_vessels", idx, self.nominal(idx))
        # oesophagus (sized to its volume) and airways
        idx = [self.add(s, "oesophagus") for s in tube(self.path("oesophagus"), g["oesophagus_radius"])]
        self._tube_to_volume(idx, v["oesophagus"])
        self.unit("oesophagus", idx, v["oesophagus"])
        airway = tube(self.path("trachea"), g["trachea_radius"] * self.kr)
        for side in (-1.0, 1.0):
            airway += tube(self.path("bronchus", side), g["bronchus_radius"] * self.kr)
        for s in airway:
            self.add(s, "trachea")

    def _vertebrae(self) -> dict[str, tuple[float, float]]:
        g = self.g
        heights = [g["sacrum_top_z"] - g["spine_bottom_z"]] + [g["lumbar_height"]] * 5 \
            + [g["thoracic_height"]] * 12 + [g["cervical_height"]] * 7
        edges = g["spine_bottom_z"] + np.concatenate([[0.0], np.cumsum(heights)])
        return {n: (float(lo * self.kz), float(hi * self.kz)) for n, lo, hi in zip(VERTEBRAE, edges[:-1], edges[1:])}

    def _skeleton(self):
        g, kx, ky, kz, kr = self.g, self.kx, self.ky, self.kz, self.kr
        vert = self._vertebrae()
        z0, z1 = vert["sacrum"][0], vert["C1"][1]
        cort = g["cortex_thickness"] * kr
        self.add(EllipticCylinder((z0, z1), self._yx(g["arch_centre_y"] * ky, 0),
                                  (g["arch_semi_y"] * ky, g["arch_semi_x"] * kx)), "spine_bone")
        self.add(EllipticCylinder((z0, z1), self._yx(g["canal_centre_y"] * ky, 0),
                                  (g["canal_radius"] * kr,) * 2), "spinal_cord")
        bc = self._yx(g["vertebral_body_centre_y"] * ky, 0)
        bs = (g["vertebral_body_semi_y"] * ky, g["vertebral_body_semi_x"] * kx)
        self.add(EllipticCylinder((z0, z1), bc, bs), "spine_bone")
        marrow = [self.add(EllipticCylinder((z0 + cort, z1 - cort), bc, tuple(s - cort for s in bs)), "red_marrow")]
        marrow_mm3 = self.nominal(marrow)
        # ribs with marrow cores
        inset = g["marrow_inset"] * kr
        rib_out = ((g["muscle_semi_y_male"] - g["rib_inset_y"]) * ky, (g["muscle_semi_x_male"] - g["rib_inset_x"]) * kx)
        rc = self._yx(g["rib_centre_y"] * ky, 0)
        n_true, n = int(g["rib_true_count"]), int(g["rib_count"])
        for k in range(1, n + 1):
            zk = (g["rib1_z"] - (k - 1) * g["rib_pitch"]) * kz
            s = 1.0 - g["rib_upper_narrowing"] * math.exp(-(k - 1) / g["rib_narrowing_length"])
            outer = (rib_out[0] * s, rib_out[1] * s)
            inner = tuple(o - g["rib_thickness"] * kr for o in outer)
            cut = g["rib_anterior_cut_true"] if k <= n_true else g["rib_anterior_cut_true"] + (
                g["rib_anterior_cut_last"] - g["rib_anterior_cut_true"]) * (k - n_true) / (n - n_true)
            y_min = rc[0] + cut * outer[0]
            h = g["rib_height"] * kz / 2.0
            self.add(EllipticRing((zk - h, zk + h), rc, outer, inner, y_min=y_min), "ribs")
            core = EllipticRing((zk - h + inset, zk + h - inset), rc, tuple(o - inset for o in outer),
                                tuple(i + inset for i in inner), y_min=y_min)
            marrow.append(self.add(core, "red_marrow"))
            marrow_mm3 += _ring_volume(core)
        # sternum with marrow core
        sc = self._yx(-(g["muscle_semi_y_male"] - g["sternum_inset_y"]) * ky, 0)
        ss = (g["sternum_semi_y"] * ky, g["sternum_semi_x"] * kx)
        sz = (g["sternum_bottom_z"] * kz, g["sternum_top_z"] * kz)
        self.add(EllipticCylinder(sz, sc, ss), "sternum")
        marrow.append(self.add(EllipticCylinder((sz[0] + inset, sz[1] - inset), sc, tuple(s - inset for s in ss)),
                               "red_marrow"))
        # red marrow = spongiosa cores of vertebral bodies, ribs and sternum, calibrated together
        self.unit("red_marrow", marrow, marrow_mm3 + self.nominal(marrow[-1:]))
        # clavicles and scapulae
        for side in (-1.0, 1.0):
            pts = self.path("clavicle", side)
            for s in tube(pts, g["clavicle_radius"] * kr):
                self.add(s, "clavicles")
        so = ((g["muscle_semi_y_male"] - g["scapula_inset"]) * ky, (g["muscle_semi_x_male"] - g["scapula_inset"]) * kx)
        si = tuple(o - g["scapula_thickness"] * kr for o in so)
        self.add(EllipticRing((g["scapula_bottom_z"] * kz, g["scapula_top_z"] * kz), self._yx(0, 0), so, si,
                              y_min=self.p.offset_y_mm + g["scapula_min_y"] * ky,
                              abs_x_min=g["scapula_medial_x"] * kx), "scapulae")

    def _brain_k(self) -> float:
        g = self.g
        unit = 4.0 / 3.0 * math.pi * g["brain_semi_x"] * g["brain_semi_y"] * g["brain_semi_z"]
        return (self.vol_mm3["brain"] / unit) ** (1.0 / 3.0)

    def _head(self):
        g, sk = self.g, self.g["skin_thickness"]
        k = self._brain_k()
        brain_semi = tuple(s * k for s in self.aspect("brain"))
        c = (g["brain_centre_z"] * self.kz, self.p.offset_y_mm + g["brain_centre_y"] * self.ky, self.p.offset_x_mm)
        skull = tuple(s + g["skull_thickness"] for s in brain_semi)
        head = tuple(s + g["scalp_thickness"] for s in skull)
        fc = (g["face_centre_z"] * self.kz, self.p.offset_y_mm + g["face_centre_y"] * self.ky, self.p.offset_x_mm)
        face = self.aspect("face")
        self.add(Ellipsoid(c, head), "skin", only_over=["air_outside"])
        self.add(Ellipsoid(fc, tuple(s + sk for s in face)), "skin", only_over=["air_outside"])
        self.add(Ellipsoid(c, tuple(s - sk for s in head)), "other_soft_tissue")
        self.add(Ellipsoid(fc, face), "other_soft_tissue")
        self.add(Ellipsoid(c, skull), "skull")
        i = self.add(Ellipsoid(c, brain_semi), "brain")
        self.unit("brain", [i], self.vol_mm3["brain"])

    def _table(self):
        g = self.g
        box = np.stack([p.solid.bbox() for p in self.parts])
        z_lo, z_hi = box[:, 0, 0].min(), box[:, 0, 1].max()
        y0 = self.p.offset_y_mm + self.oy
        w = g["table_width"] / 2.0
        self.add(Box((z_lo, y0, -w), (z_hi, y0 + g["table_thickness"], w)), "table", only_over=["air_outside"])


def _ring_volume(ring: EllipticRing) -> float:
    """Volume of a rib core: ring area on the kept side of ``y_min`` (numerical, fine grid)."""
    (cy, cx), (bo, ao) = ring.centre_yx, ring.outer_yx
    y = np.linspace(cy - bo, cy + bo, 801)[:, None]
    x = np.linspace(cx - ao, cx + ao, 801)[None, :]
    m = ring.contains(np.array(ring.z_range[0] + 1e-9), y, x)
    area = m.mean() * (2 * bo) * (2 * ao)
    return float(area * (ring.z_range[1] - ring.z_range[0]))


_LABELS = (
    "air_outside", "skin", "subcutaneous_fat", "muscle", "lung_right", "lung_left", "heart_wall", "heart_blood",
    "aorta_great_vessels", "trachea", "oesophagus", "liver", "stomach", "spleen", "pancreas", "kidney_right",
    "kidney_left", "adrenal_right", "adrenal_left", "gallbladder", "colon", "small_intestine", "spine_bone",
    "red_marrow", "ribs", "sternum", "clavicles", "scapulae", "arm_bones", "arm_soft_tissue", "skull", "brain",
    "spinal_cord", "visceral_fat", "other_soft_tissue", "breast", "table",
)


def _label_of(label: int) -> str:
    from .organs import label_name

    return label_name(label)


def build_phantom(params: PhantomParams) -> Phantom:
    """Build a phantom from its parameters (no voxels yet; see :meth:`Phantom.voxelise`)."""
    return _Builder(params).build()
