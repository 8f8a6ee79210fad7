"""AAPM TG-195 validation cases for the Monte Carlo engine (Cases 1, 2, 3, 4.1 and 4.2).

Reference data: ``ctdose/data/tg195/`` (AAPM Report 195, Sechopoulos et al., Med. Phys. 42
(2015) 5679; copies via XRayMClib, see the README there; validation only).

Case 4 geometry (as XRayMClib implements it; see the shared README): a PMMA cylinder
(H 8.0541 %, C 59.9846 %, O 31.9613 %, 1.19 g/cm^3) of radius 160 mm with its axis along z,
in air; an isotropic point source 600 mm from the axis at (x, y) = (-600, 0) pointing at
the axis, collimated to a fan of half-angle atan(160/600) in the axial plane and to 10 mm or
80 mm along z at the axis. VOIs:

* 4.1 (one projection): the whole cylinder cross-section in 10 mm slabs centred at
  z = 0, -10, -20, -30 mm;
* 4.2: cylinders of radius 5 mm and length 100 mm (|z| <= 50 mm) on the axis ("Center") and
  at 150 mm from the axis ("Periphery"); the reference lists the energy per source angle
  0..350 deg in 10 deg steps. By rotational symmetry one projection at angle 0 gives every
  row: the periphery VOI seen from source angle ``a`` equals the VOI rotated by ``-a``
  around the axis with the source fixed, so 36 peripheral VOIs are scored at once.

The world is air (``world="air"``, default): the voxel grid reaches from just behind the
source to the far side of the cylinder, so the 440 mm of air in front of the phantom
attenuates the beam (about 1 % at 56.4 keV) and scatters as it does in the reference codes.
``world="vacuum"`` crops the grid to the cylinder; it reads 0.6-1.2 % above EGSnrc in every
VOI, which is how the air was found to matter (``benchmarks/tg195.py --world vacuum``).
The cylinder is voxelised with partial-volume densities (the PMMA fraction of each voxel times
1.19 g/cm^3; boundary voxels hold no air, about 1e-3 of their mass), so the phantom mass is
exact; VOI energies are voxel energies weighted by the VOI's share of each voxel (exact where
the energy density is smooth within a voxel) and counted in PMMA voxels only, never in the
air. The XRayMClib cylinder is 3 m long; 600 mm is used here (scatter from beyond 300 mm of
PMMA into the VOIs is below 1e-4 of the signal).

Case 2 geometry (radiography; as XRayMClib implements it): a box of TG-195 soft tissue
(H 10.5, C 25.6, N 2.7, O 60.2, Na 0.1, P 0.2, S 0.3, Cl 0.2, K 0.2 % by weight, 1.03 g/cm^3),
390 x 390 mm across and 200 mm along the beam, its entrance face 1550 mm from an isotropic
point source whose square field is 390 x 390 mm at 1800 mm (the detector plane), in air.
VOIs: the whole box ("Total body") and nine 30 mm cubes, relative to the box centre (x, y
across the beam, z along it): VOI 3 at the centre, VOIs 6, 7, 8, 9 at z = -60, -30, +30,
+60 mm, VOIs 1, 5 at y = -150, +150 mm and VOIs 2, 4 at x = -150, +150 mm. With 5 mm voxels
every VOI face is a voxel face, so the VOIs are exact unions of voxels.

Case 3 geometry (mammography, radiography; as XRayMClib implements it): see
:func:`case3_geometry`. A half-cylinder breast (radius 100 mm, 50 mm thick, 2 mm skin around
20 % glandular tissue) between two 2 mm PMMA plates, a water box for the body behind the chest
wall, an isotropic source 660 mm above the chest wall edge of the detector plane whose field
just covers the 140 x 260 mm detector (an off-axis field), in air. VOIs: the breast tissue
("Total body", skin excluded) and seven 20 x 20 x 10 mm boxes. The 15 degree tomosynthesis
projection is not reproduced (its pivot and collimation are not in the reference data here).

Spectra: the TG-195 RQR-9 table lists 0.5 keV bins by their *lower* edges: only then do the
fluence-weighted mean (56.39 keV) and the tungsten K-beta lines (67.24, 69.1 keV) agree with
the report's stated mean 56.4 keV and the physics; bin centres are the listed values + 0.25.
The reference results agree: with lower edges the Case 1 air kerma ratio 100 kVp / 100 keV
(no filter) is 1.1916 against the codes' 1.1895, with centres 1.2037; Cases 2 and 4 agree
within their statistics. The Mo/Mo 30 kVp table is different: its K lines also point to lower
edges (mean 16.80 keV, the report's 16.8 keV), but the codes' Case 3 results are reproduced
only with the listed energies as bin centres (mean 16.55 keV): breast tissue energy +0.3 %
against EGSnrc, +3.3 % with lower edges, while the 16.8 keV monoenergetic beam reads +0.3 %
(``benchmarks/tg195.py --case3-photons``). So the codes evidently used that table as centres,
and so do we; the offset per file is ``_SPECTRUM_LISTED_TO_CENTRE_KEV``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._data import read_table
from ..errors import InputError
from .mc import DEFAULT_ESTIMATOR, DoseResult, VoxelGeometry, simulate
from .sources import PointSource

__all__ = [
    "CASE1_BEAMS",
    "CASE4_RADIUS_MM",
    "CASE4_WORLDS",
    "CASE2_ENERGIES",
    "CASE3_ENERGIES",
    "Case2Setup",
    "Case3Setup",
    "Case4Setup",
    "case2_geometry",
    "case2_reference",
    "case2_source",
    "case2_voi_energies",
    "breast_skin",
    "breast_tissue",
    "case3_geometry",
    "case3_reference",
    "case3_source",
    "case3_voi_energies",
    "case4_geometry",
    "case4_reference",
    "case4_source",
    "case4_voi_energies",
    "pmma",
    "soft_tissue",
    "run_case1",
    "run_case2",
    "run_case3",
    "run_case4",
    "tg195_spectrum",
]

CASE4_RADIUS_MM = 160.0
CASE4_SOURCE_DISTANCE_MM = 600.0
CASE4_LENGTH_MM = 600.0
CASE4_VOI_RADIUS_MM = 5.0
CASE4_VOI_HALF_LENGTH_MM = 50.0
CASE4_PERIPHERY_MM = 150.0
CASE41_SLAB_CENTRES_MM = (0.0, -10.0, -20.0, -30.0)
CASE41_SLAB_MM = 10.0
#: Offset (keV) from the energies listed in each TG-195 spectrum file to the centres of its
#: 0.5 keV bins, as the reference results show the codes used them (see the module notes):
#: the tungsten spectra list lower edges (+0.25), the Mo/Mo spectrum bin centres (0).
_SPECTRUM_LISTED_TO_CENTRE_KEV = {
    "spectrum_RQR9_120kVp_W_Al.csv": 0.25,
    "spectrum_RQR8_100kVp_W_Al.csv": 0.25,
    "spectrum_RQR-M3_30kVp_Mo_Mo.csv": 0.0,
}
#: PMMA of TG-195 (mass fractions, g/cm^3).
_PMMA_FRACTIONS = {1: 0.080541, 6: 0.599846, 8: 0.319613}
_PMMA_DENSITY = 1.19
#: Midpoint columns per pixel for the circle-in-pixel area fractions.
_CIRCLE_COLUMNS = 256
#: Case 4 worlds: the medium around the cylinder (``None``: vacuum).
CASE4_WORLDS = {"air": "air", "vacuum": None}
#: TG-195 soft tissue of Case 2 (mass fractions, g/cm^3).
_SOFT_TISSUE_FRACTIONS = {1: 0.105, 6: 0.256, 7: 0.027, 8: 0.602, 11: 0.001, 15: 0.002, 16: 0.003, 17: 0.002,
                          19: 0.002}
_SOFT_TISSUE_DENSITY = 1.03
#: Case 2: box width across the beam, its length along the beam, the source to its entrance
#: face and to the detector plane (mm); the field is the box width at the detector plane.
CASE2_BOX_WIDTH_MM = 390.0
CASE2_BOX_LENGTH_MM = 200.0
CASE2_SOURCE_TO_BOX_MM = 1550.0
CASE2_SOURCE_TO_DETECTOR_MM = 1800.0
#: Case 2 VOIs: 30 mm cubes, centres (x, y, z) in mm relative to the box centre (z along the beam).
CASE2_VOI_MM = 30.0
CASE2_VOI_CENTRES_MM = {
    1: (0.0, -150.0, 0.0), 2: (-150.0, 0.0, 0.0), 3: (0.0, 0.0, 0.0), 4: (150.0, 0.0, 0.0), 5: (0.0, 150.0, 0.0),
    6: (0.0, 0.0, -60.0), 7: (0.0, 0.0, -30.0), 8: (0.0, 0.0, 30.0), 9: (0.0, 0.0, 60.0),
}
#: Case 2 beams: reference label -> monoenergy (keV) or spectrum file
CASE2_ENERGIES = {"56.4 keV": 56.4, "120 kVp": "spectrum_RQR9_120kVp_W_Al.csv"}


def pmma():
    """The TG-195 PMMA medium."""
    from ..materials import custom_medium

    return custom_medium("pmma_tg195", _PMMA_DENSITY, _PMMA_FRACTIONS)


def soft_tissue():
    """The TG-195 soft tissue of Case 2."""
    from ..materials import custom_medium

    return custom_medium("soft_tissue_tg195", _SOFT_TISSUE_DENSITY, _SOFT_TISSUE_FRACTIONS)


def tg195_spectrum(name: str = "spectrum_RQR9_120kVp_W_Al.csv"):
    """A TG-195 spectrum as a relative :class:`~ctdose.physics.spectrum.Spectrum` (bin centres,
    from the listed energies by ``_SPECTRUM_LISTED_TO_CENTRE_KEV``)."""
    if name not in _SPECTRUM_LISTED_TO_CENTRE_KEV:
        raise InputError(f"TG-195 spectrum: unknown file {name!r}; known: {sorted(_SPECTRUM_LISTED_TO_CENTRE_KEV)}")
    from .spectrum import Spectrum

    t = read_table(f"tg195/{name}")
    e = t.iloc[:, 0].to_numpy(float) + _SPECTRUM_LISTED_TO_CENTRE_KEV[name]
    w = t.iloc[:, 1].to_numpy(float)
    return Spectrum(e, w, f"TG-195 {name}", absolute=False)


def _beam_kwargs(spec: float | str) -> dict:
    """PointSource keywords of a beam: a monoenergy (keV) or a TG-195 spectrum file."""
    return dict(energy_kev=spec) if isinstance(spec, float) else dict(spectrum=tg195_spectrum(spec))


def _circle_fraction(x_mm: np.ndarray, y_mm: np.ndarray, half: float, x0: float, y0: float, r: float) -> np.ndarray:
    """Area fraction [y, x] of square pixels (centres ``y_mm`` x ``x_mm``, half-width ``half``)
    inside the circle of radius ``r`` about (x0, y0).

    Exact in y (the chord's overlap with the pixel row) and integrated in x by the midpoint
    rule on ``_CIRCLE_COLUMNS`` columns per pixel: the area of a 5 mm circle on 2 mm pixels is
    within 1e-5 of pi r^2 (an 8 x 8 point supersampling, used before, gave it 0.6 % too large).
    """
    x_mm, y_mm = np.asarray(x_mm, float), np.asarray(y_mm, float)
    frac = np.zeros((y_mm.size, x_mm.size))
    ix = np.flatnonzero(np.abs(x_mm - x0) < r + half)
    iy = np.flatnonzero(np.abs(y_mm - y0) < r + half)
    if ix.size == 0 or iy.size == 0:
        return frac
    t = ((np.arange(_CIRCLE_COLUMNS) + 0.5) / _CIRCLE_COLUMNS * 2.0 - 1.0) * half
    xs = x_mm[ix][:, None] + t[None, :]  # [nx, columns]
    h = np.sqrt(np.clip(r * r - (xs - x0) ** 2, 0.0, None))
    yc = y_mm[iy][:, None, None]
    overlap = np.minimum(yc + half, y0 + h[None]) - np.maximum(yc - half, y0 - h[None])
    frac[np.ix_(iy, ix)] = np.clip(overlap, 0.0, None).mean(axis=-1) / (2.0 * half)
    return frac


@dataclass
class Case4Setup:
    """A voxelised Case 4 world: the geometry, voxel centres (mm) and the PMMA voxels.

    ``in_phantom`` [y, x] is True where a voxel holds PMMA (the same in every slice); VOI
    weights are multiplied by it so that energy deposited in air never counts.
    """

    geometry: VoxelGeometry
    x_mm: np.ndarray
    y_mm: np.ndarray
    z_mm: np.ndarray
    in_phantom: np.ndarray | None = None


def case4_geometry(pixel_mm: float = 2.0, slice_mm: float = 5.0, world: str = "air") -> Case4Setup:
    """Voxelised TG-195 Case 4 cylinder (partial-volume densities) in air or vacuum.

    Parameters
    ----------
    pixel_mm, slice_mm : float
        In-plane voxel size and slice thickness (mm). Slices have a face at z = 0 and
        ``slice_mm`` should divide 5 mm (default 5 mm): then every VOI face
        (z = +-5, -15, -25, -35, +-50 mm) is a voxel face.
    world : "air" or "vacuum"
        Medium around the cylinder. With air the grid spans x from one pixel behind the source
        (x = -600 mm) to the cylinder's far side, y and z over the cylinder; with vacuum it is
        the cylinder's bounding box.
    """
    if world not in CASE4_WORLDS:
        raise InputError(f"TG-195 Case 4: world must be one of {sorted(CASE4_WORLDS)}, got {world!r}")
    n_xy = int(math.ceil(CASE4_RADIUS_MM / pixel_mm)) * 2
    c = (np.arange(n_xy) - (n_xy - 1) / 2) * pixel_mm
    x = c
    if CASE4_WORLDS[world] is not None:
        n_front = int(math.ceil((CASE4_SOURCE_DISTANCE_MM - (-c[0] + pixel_mm / 2)) / pixel_mm)) + 1
        x = np.concatenate([c[0] - pixel_mm * np.arange(n_front, 0, -1), c])
    n_z = 2 * int(round(CASE4_LENGTH_MM / slice_mm / 2))
    z = (np.arange(n_z) - (n_z - 1) / 2) * slice_mm
    frac = _circle_fraction(x, c, pixel_mm / 2, 0.0, 0.0, CASE4_RADIUS_MM)
    inside = frac > 0
    media = [pmma()]
    rho2 = (frac * _PMMA_DENSITY).astype(np.float32)
    mi2 = np.zeros(rho2.shape, np.uint8)
    if CASE4_WORLDS[world] is not None:
        from ..materials import get_medium

        ambient = get_medium(CASE4_WORLDS[world])
        media.append(ambient)
        mi2[~inside] = 1
        rho2[~inside] = ambient.density_g_cm3
    shape = (n_z,) + rho2.shape
    rho = np.broadcast_to(rho2, shape).copy()
    mi = np.broadcast_to(mi2, shape).copy()
    geo = VoxelGeometry(mi, rho, media, (slice_mm, pixel_mm, pixel_mm), (z[0], c[0], x[0]))
    return Case4Setup(geo, x, c, z, inside)


def case4_source(energy: str, collimation_mm: float) -> PointSource:
    """Case 4 source at angle 0: (-600, 0, 0) mm towards +x, ``energy`` '56.4 keV' or '120 kVp'."""
    kw = dict(energy_kev=56.4) if energy == "56.4 keV" else dict(spectrum=tg195_spectrum())
    return PointSource(
        position_mm=(-CASE4_SOURCE_DISTANCE_MM, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0),
        collimation="fan",
        half_angles_rad=(
            math.atan(CASE4_RADIUS_MM / CASE4_SOURCE_DISTANCE_MM),
            math.atan(0.5 * collimation_mm / CASE4_SOURCE_DISTANCE_MM),
        ),
        fan_axis=(0.0, 1.0, 0.0),
        **kw,
    )


def _overlap(c: np.ndarray, step: float, lo: float, hi: float) -> np.ndarray:
    """Fraction of each voxel (centres ``c``, edge ``step``) inside [lo, hi]."""
    return np.clip((np.minimum(c + step / 2, hi) - np.maximum(c - step / 2, lo)) / step, 0.0, 1.0)


def case4_voi_energies(setup: Case4Setup, result: DoseResult) -> pd.DataFrame:
    """Energy (eV per source photon) in the Case 4.1 slabs and the Case 4.2 VOIs.

    Returns a table with columns ``case``, ``volume``, ``angle_deg``, ``ours`` and
    ``ours_sigma`` (batch method; NaN unless the run kept its batches).
    """
    x, y, z = setup.x_mm, setup.y_mm, setup.z_mm
    half = (y[1] - y[0]) / 2
    dz = z[1] - z[0] if z.size > 1 else 1.0
    rows = []

    mask = setup.in_phantom if setup.in_phantom is not None else np.ones((y.size, x.size), bool)

    def add(case, vol, ang, w3):
        val, sig = result.sum_with_sigma(np.broadcast_to(w3, (z.size, y.size, x.size)) * mask[None])
        rows.append(dict(case=case, volume=vol, angle_deg=ang, ours=val, ours_sigma=sig))

    for i, zc in enumerate(CASE41_SLAB_CENTRES_MM):
        lo, hi = zc - CASE41_SLAB_MM / 2, zc + CASE41_SLAB_MM / 2
        add("Case 4.1", f"VOI {i + 1}", np.nan, _overlap(z, dz, lo, hi)[:, None, None])
    zw = _overlap(z, dz, -CASE4_VOI_HALF_LENGTH_MM, CASE4_VOI_HALF_LENGTH_MM)
    centre = _circle_fraction(x, y, half, 0.0, 0.0, CASE4_VOI_RADIUS_MM)
    add("Case 4.2", "Center", np.nan, zw[:, None, None] * centre[None])
    for ang in range(0, 360, 10):
        a = math.radians(ang)
        # periphery at (-150, 0) seen from source angle a == VOI rotated by -a, source fixed
        px = -CASE4_PERIPHERY_MM * math.cos(a)
        py = CASE4_PERIPHERY_MM * math.sin(a)
        f = _circle_fraction(x, y, half, px, py, CASE4_VOI_RADIUS_MM)
        add("Case 4.2", "Periphery", float(ang), zw[:, None, None] * f[None])
    return pd.DataFrame(rows)


#: TG-195 Case 1 beams: reference label -> (mono energy keV or spectrum file)
CASE1_BEAMS = {
    "30 keV": 30.0,
    "100 keV": 100.0,
    "30 kVp": "spectrum_RQR-M3_30kVp_Mo_Mo.csv",
    "100 kVp": "spectrum_RQR8_100kVp_W_Al.csv",
}
#: Narrow-beam geometry of Case 1 here: 10 mm filter slab, vacuum gap, 10 mm air detector.
_CASE1_SLICE_MM = 10.0
_CASE1_GAP_SLICES = 30
_CASE1_COLUMN_MM = 2.0
_CASE1_FLOOR_PER_MM = 0.2


def run_case1(beam: str, n_photons: int, seed: int = 0, device: str = "cpu") -> pd.DataFrame:
    """TG-195 Case 1 HVL / QVL fractions: air kerma behind Al filters / without filter.

    A narrow beam (a 2 mm column of voxels: photons that scatter leave it) through one 10 mm
    voxel of aluminium whose density gives the filter's mass thickness, 300 mm of vacuum and a
    10 mm air detector scored by the track-length estimator (air kerma). HVL and QVL come from
    our own data: ln 2 / mu (mono) or the air-kerma-weighted spectrum (``Spectrum.hvl_mm``).

    Returns
    -------
    DataFrame with volume (HVL, QVL), ours, ours_sigma, the four codes and deviation_pct.
    """
    from ..materials import filter_medium, get_medium
    from .xsection import attenuation_table

    al, air = filter_medium("aluminium"), get_medium("air")
    spec = CASE1_BEAMS[beam]
    if isinstance(spec, float):
        mu = float(attenuation_table([al], [spec]).total_cm2_g[0, 0])
        thick = {"HVL": math.log(2.0) / mu, "QVL": 2 * math.log(2.0) / mu}  # g/cm^2
        kw = dict(energy_kev=spec)
    else:
        spectrum = tg195_spectrum(spec)
        thick = {k: spectrum.hvl_mm(al, f) / 10 * al.density_g_cm3 for k, f in (("HVL", 0.5), ("QVL", 0.25))}
        kw = dict(spectrum=spectrum)
    n = _CASE1_GAP_SLICES + 2
    signal = {}
    for i, (name, g_cm2) in enumerate((("none", 0.0), ("HVL", thick["HVL"]), ("QVL", thick["QVL"]))):
        mi = np.zeros((n, 1, 1), np.uint8)
        rho = np.zeros(mi.shape, np.float32)
        mi[0] = 1
        rho[0] = g_cm2 / (_CASE1_SLICE_MM / 10.0)
        rho[-1] = air.density_g_cm3
        geo = VoxelGeometry(mi, rho, [air, al], (_CASE1_SLICE_MM, _CASE1_COLUMN_MM, _CASE1_COLUMN_MM), (0.0, 0.0, 0.0))
        src = PointSource((0, 0, -500.0), (0, 0, 1), collimation="cone", cone_half_angle_rad=1e-7, **kw)
        res = simulate(geo, src, n_photons, seed=seed + i, device=device, keep_batches=True,
                       majorant_floor_per_mm=_CASE1_FLOOR_PER_MM)
        w = np.zeros(geo.shape)
        w[-1] = 1
        signal[name] = res.sum_with_sigma(w)
    ref = read_table("tg195/TG195results.csv")
    ref = ref[(ref["Case"] == "Case 1 HVL") & (ref["Specter"].str.strip() == beam)]
    k0, s0 = signal["none"]
    rows = []
    for name in ("HVL", "QVL"):
        k, s = signal[name]
        frac = k / k0
        row = dict(case="Case 1", volume=name, beam=beam, ours=frac, ours_sigma=frac * math.hypot(s / k, s0 / k0))
        rows.append(_with_reference(row, ref[ref["Volume"] == name]))
    return pd.DataFrame(rows)


#: The reference codes of TG-195 (columns ``<code>_Result`` of the reference table).
REFERENCE_CODES = ("EGSnrc", "Geant4", "MCNP", "Penelope")


def _with_reference(row: dict, ref_rows: pd.DataFrame) -> dict:
    """``row`` (with ``ours`` and ``ours_sigma``) plus each code's result (mean over
    ``ref_rows``), our deviation from EGSnrc and our 1 sd, both in %."""
    for code in REFERENCE_CODES:
        row[code] = float(ref_rows[f"{code}_Result"].mean())
    row["deviation_pct"] = 100.0 * (row["ours"] / row["EGSnrc"] - 1.0)
    row["sigma_pct"] = 100.0 * row["ours_sigma"] / row["ours"]
    return row


def case4_reference() -> pd.DataFrame:
    """TG-195 Case 4.1 and 4.2 rows (energy eV per photon) of the four codes."""
    t = read_table("tg195/TG195results.csv")
    t = t[t["Case"].isin(["Case 4.1", "Case 4.2"])].copy()
    t["collimation_mm"] = t["Mode"].str.extract(r"(\d+)mm").astype(float)
    t["energy"] = t["Specter"].str.strip()
    is42 = t["Case"] == "Case 4.2"
    t["volume"] = np.where(is42, np.where(t["Mode"].str.contains("Center"), "Center", "Periphery"), t["Volume"])
    t["angle_deg"] = np.where(is42, pd.to_numeric(t["Volume"], errors="coerce"), np.nan)
    return t.rename(columns={"Case": "case"}).reset_index(drop=True)


def run_case4(
    energy: str,
    collimation_mm: float,
    n_photons: int,
    pixel_mm: float = 2.0,
    slice_mm: float = 5.0,
    seed: int = 0,
    device: str = "cpu",
    estimator: str = DEFAULT_ESTIMATOR,
    n_batches: int = 10,
    world: str = "air",
    weight_window: bool = False,
) -> tuple[pd.DataFrame, DoseResult]:
    """Simulate one Case 4 configuration and join our VOI energies with the reference.

    ``world`` is the medium around the cylinder, see :func:`case4_geometry`;
    ``weight_window`` goes to :func:`ctdose.physics.mc.simulate`.

    Returns
    -------
    table : DataFrame
        Per VOI: ours, ours_sigma, EGSnrc, Geant4, MCNP, Penelope, deviation_pct (vs EGSnrc).
        Case 4.2 center rows are compared with the mean of the reference over angles.
    result : DoseResult
    """
    setup = case4_geometry(pixel_mm, slice_mm, world)
    src = case4_source(energy, collimation_mm)
    res = simulate(
        setup.geometry, src, n_photons, n_batches=n_batches, seed=seed, device=device,
        estimator=estimator, keep_batches=True, weight_window=weight_window,
    )
    ours = case4_voi_energies(setup, res)
    ref = case4_reference()
    ref = ref[(ref["energy"] == energy) & (ref["collimation_mm"] == collimation_mm)]
    out = []
    for _, r in ours.iterrows():
        if r["case"] == "Case 4.1":
            m = ref[(ref["case"] == "Case 4.1") & (ref["volume"] == r["volume"])]
        elif r["volume"] == "Center":
            m = ref[(ref["case"] == "Case 4.2") & (ref["volume"] == "Center")]
        else:
            m = ref[(ref["case"] == "Case 4.2") & (ref["volume"] == "Periphery") & (ref["angle_deg"] == r["angle_deg"])]
        row = _with_reference(dict(r, energy=energy, collimation_mm=collimation_mm), m)
        row["EGSnrc_rel_unc"] = float(m["EGSnrc_Uncertainty"].mean())
        out.append(row)
    return pd.DataFrame(out), res


#: Case 2 worlds: the medium around the box (``None``: vacuum).
CASE2_WORLDS = {"air": "air", "vacuum": None}


@dataclass
class Case2Setup:
    """A voxelised Case 2 world: the geometry, voxel centres (mm) and the slices of the box.

    ``box_slices`` is the slice range (start, stop) of the tissue box along the beam (z); the
    slices before it are air (``world="air"``) from just behind the source.
    """

    geometry: VoxelGeometry
    x_mm: np.ndarray
    y_mm: np.ndarray
    z_mm: np.ndarray
    box_slices: tuple[int, int]


def _whole_steps(length_mm: float, voxel_mm: float) -> int | None:
    k = length_mm / voxel_mm
    return int(round(k)) if abs(k - round(k)) < 1e-9 else None


def case2_geometry(voxel_mm: float = 5.0, world: str = "air") -> Case2Setup:
    """Voxelised TG-195 Case 2 (radiography): the soft-tissue box in air or vacuum.

    Parameters
    ----------
    voxel_mm : float
        Cubic voxel edge (mm); it must divide 15 mm and 200 mm (5, 2.5, 1 mm, ...) so that the
        box and every VOI face are voxel faces.
    world : "air" or "vacuum"
        With air (default) the grid reaches from one slice behind the source (z = 0) to the
        box's exit face, its cross-section the box's, so the 1550 mm of air in front of the box
        attenuates and scatters as in the reference codes; with vacuum it is the box alone.
    """
    if world not in CASE2_WORLDS:
        raise InputError(f"TG-195 Case 2: world must be one of {sorted(CASE2_WORLDS)}, got {world!r}")
    n_xy = _whole_steps(CASE2_BOX_WIDTH_MM, voxel_mm)
    n_box = _whole_steps(CASE2_BOX_LENGTH_MM, voxel_mm)
    if n_xy is None or n_box is None or _whole_steps(CASE2_VOI_MM / 2, voxel_mm) is None:
        raise InputError(f"TG-195 Case 2: voxel_mm must divide 15 mm and 200 mm (e.g. 5 or 2.5), got {voxel_mm!r}")
    c = (np.arange(n_xy) - (n_xy - 1) / 2) * voxel_mm
    n_front = 0
    if CASE2_WORLDS[world] is not None:
        n_front = int(math.ceil(CASE2_SOURCE_TO_BOX_MM / voxel_mm)) + 1
    z = CASE2_SOURCE_TO_BOX_MM + (np.arange(-n_front, n_box) + 0.5) * voxel_mm
    media = [soft_tissue()]
    mi = np.zeros((z.size, n_xy, n_xy), np.uint8)
    rho = np.full(mi.shape, _SOFT_TISSUE_DENSITY, np.float32)
    if n_front:
        from ..materials import get_medium

        ambient = get_medium(CASE2_WORLDS[world])
        media.append(ambient)
        mi[:n_front] = 1
        rho[:n_front] = ambient.density_g_cm3
    geo = VoxelGeometry(mi, rho, media, (voxel_mm,) * 3, (z[0], c[0], c[0]))
    return Case2Setup(geo, c.copy(), c.copy(), z, (n_front, n_front + n_box))


def case2_source(energy: str) -> PointSource:
    """Case 2 source at the origin towards +z, ``energy`` '56.4 keV' or '120 kVp' (radiography)."""
    if energy not in CASE2_ENERGIES:
        raise InputError(f"TG-195 Case 2: energy must be one of {sorted(CASE2_ENERGIES)}, got {energy!r}")
    spec = CASE2_ENERGIES[energy]
    kw = _beam_kwargs(spec)
    half = math.atan(0.5 * CASE2_BOX_WIDTH_MM / CASE2_SOURCE_TO_DETECTOR_MM)
    return PointSource(position_mm=(0.0, 0.0, 0.0), direction=(0.0, 0.0, 1.0), collimation="fan",
                       half_angles_rad=(half, half), fan_axis=(1.0, 0.0, 0.0), **kw)


def case2_voi_energies(setup: Case2Setup, result: DoseResult) -> pd.DataFrame:
    """Energy (eV per source photon) in the Case 2 box and VOIs: columns ``volume``, ``ours``,
    ``ours_sigma`` (batch method; NaN unless the run kept its batches)."""
    z0, z1 = setup.box_slices
    box = np.zeros(setup.geometry.shape, bool)
    box[z0:z1] = True
    zc = CASE2_SOURCE_TO_BOX_MM + CASE2_BOX_LENGTH_MM / 2
    half = CASE2_VOI_MM / 2
    rows = []
    val, sig = result.sum_with_sigma(box.astype(float))
    rows.append(dict(volume="Total body", ours=val, ours_sigma=sig))
    for k, (x, y, z) in sorted(CASE2_VOI_CENTRES_MM.items()):
        inz = np.abs(setup.z_mm - (zc + z)) < half
        iny = np.abs(setup.y_mm - y) < half
        inx = np.abs(setup.x_mm - x) < half
        w = (inz[:, None, None] & iny[None, :, None] & inx[None, None, :] & box).astype(float)
        val, sig = result.sum_with_sigma(w)
        rows.append(dict(volume=f"VOI {k}", ours=val, ours_sigma=sig))
    return pd.DataFrame(rows)


def _radiography_reference(case: str) -> pd.DataFrame:
    """The radiography rows of a TG-195 case (energy eV per photon) of the four codes."""
    t = read_table("tg195/TG195results.csv")
    t = t[(t["Case"] == case) & (t["Mode"].str.strip() == "radiography")].copy()
    t["energy"] = t["Specter"].str.strip()
    return t.rename(columns={"Case": "case", "Volume": "volume"}).reset_index(drop=True)


def _join_radiography(case: str, energy: str, ours: pd.DataFrame) -> pd.DataFrame:
    """Our volumes of a radiography case joined with the four codes' rows for ``energy``."""
    ref = _radiography_reference(case)
    ref = ref[ref["energy"] == energy]
    return pd.DataFrame([_with_reference(dict(case=case, energy=energy, **dict(r)), ref[ref["volume"] == r["volume"]])
                         for _, r in ours.iterrows()])


def case2_reference() -> pd.DataFrame:
    """TG-195 Case 2 radiography rows (energy eV per photon) of the four codes."""
    return _radiography_reference("Case 2")


def run_case2(
    energy: str,
    n_photons: int,
    voxel_mm: float = 5.0,
    seed: int = 0,
    device: str = "cpu",
    n_batches: int = 10,
    world: str = "air",
) -> tuple[pd.DataFrame, DoseResult]:
    """Simulate TG-195 Case 2 (radiography) and join our VOI energies with the reference.

    Returns
    -------
    table : DataFrame
        Per VOI: ours, ours_sigma, EGSnrc, Geant4, MCNP, Penelope, deviation_pct (vs EGSnrc),
        sigma_pct.
    result : DoseResult
    """
    setup = case2_geometry(voxel_mm, world)
    res = simulate(setup.geometry, case2_source(energy), n_photons, n_batches=n_batches, seed=seed, device=device,
                   keep_batches=True)
    return _join_radiography("Case 2", energy, case2_voi_energies(setup, res)), res


#: TG-195 Case 3 media (mass fractions, g/cm^3): the breast tissue (20 % glandular) and the
#: breast skin of the report; XRayMClib encodes them as atom fractions, which convert back to
#: these weight fractions to four digits.
_BREAST_FRACTIONS = {1: 0.110, 6: 0.532, 7: 0.020, 8: 0.3362, 15: 0.00045, 16: 0.00045, 19: 0.00045, 20: 0.00045}
_BREAST_DENSITY = 0.952
_BREAST_SKIN_FRACTIONS = {1: 0.098, 6: 0.178, 7: 0.050, 8: 0.667, 15: 0.00175, 16: 0.00175, 19: 0.00175,
                          20: 0.00175}
_BREAST_SKIN_DENSITY = 1.09
#: Case 3 beams: reference label -> monoenergy (keV) or spectrum file (Mo/Mo 30 kVp)
CASE3_ENERGIES = {"16.8 keV": 16.8, "30 kVp": "spectrum_RQR-M3_30kVp_Mo_Mo.csv"}
#: Case 3 source: 660 mm above the chest wall edge of the detector plane (z = 0), the field just
#: covering the detector. Only the radiography orientation is reproduced: the 15 degree
#: tomosynthesis projection's pivot and collimation are not given by the reference data here
#: (the two XRayMClib versions differ; our readings bracket EGSnrc, -1.2 % to +1.5 %).
CASE3_SOURCE_HEIGHT_MM = 660.0
#: Case 3 boxes (x0, x1, y0, y1, z0, z1) in mm: z up from the detector plane (z = 0), x from the
#: chest wall (x = 0) towards the nipple, y across. The world is air, x and y over the body.
CASE3_WORLD_MM = (-170.0, 170.0, -150.0, 150.0)
CASE3_BODY_MM = (-170.0, 0.0, -150.0, 150.0, -110.0, 190.0)
CASE3_PLATES_MM = ((0.0, 140.0, -130.0, 130.0, 13.0, 15.0), (0.0, 140.0, -130.0, 130.0, 65.0, 67.0))
#: The detector rectangle (x0, x1, y0, y1) on z = 0 that the field just covers.
CASE3_FIELD_MM = (0.0, 140.0, -130.0, 130.0)
#: Breast: a half cylinder (x >= 0) about the z axis, skin radius and z range, tissue inside.
CASE3_SKIN_MM = (100.0, 15.0, 65.0)
CASE3_TISSUE_MM = (98.0, 17.0, 63.0)
#: VOIs in the breast tissue (x0, x1, y0, y1, z0, z1), mm.
CASE3_VOIS_MM = {
    1: (40.0, 60.0, -60.0, -40.0, 35.0, 45.0), 2: (10.0, 30.0, -10.0, 10.0, 35.0, 45.0),
    3: (40.0, 60.0, -10.0, 10.0, 35.0, 45.0), 4: (70.0, 90.0, -10.0, 10.0, 35.0, 45.0),
    5: (40.0, 60.0, 40.0, 60.0, 35.0, 45.0), 6: (40.0, 60.0, -10.0, 10.0, 20.0, 30.0),
    7: (40.0, 60.0, -10.0, 10.0, 50.0, 60.0),
}
#: Lowest slice face of the Case 3 grid: the bottom of the body, put on a face of the voxel grid
#: (odd mm for 2 mm voxels, so that every skin and plate face is a voxel face).
_CASE3_GRID_BOTTOM_MM = {2.0: -111.0, 1.0: -110.0}


def breast_tissue():
    """The TG-195 Case 3 breast tissue (20 % glandular by weight, 0.952 g/cm^3)."""
    from ..materials import custom_medium

    return custom_medium("breast_tg195", _BREAST_DENSITY, _BREAST_FRACTIONS)


def breast_skin():
    """The TG-195 Case 3 breast skin (1.09 g/cm^3)."""
    from ..materials import custom_medium

    return custom_medium("breast_skin_tg195", _BREAST_SKIN_DENSITY, _BREAST_SKIN_FRACTIONS)


@dataclass
class Case3Setup:
    """A voxelised Case 3 world: the geometry and its voxel centres (mm); ``tissue`` marks the
    breast tissue voxels (the "Total body" of the reference, skin excluded)."""

    geometry: VoxelGeometry
    x_mm: np.ndarray
    y_mm: np.ndarray
    z_mm: np.ndarray
    tissue: np.ndarray


def _in(c: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (c >= lo) & (c < hi)


def case3_geometry(voxel_mm: float = 2.0) -> Case3Setup:
    """Voxelised TG-195 Case 3 (mammography, as XRayMClib implements it) in air.

    A water box for the body (x < 0: the chest wall is the plane x = 0), two 2 mm PMMA plates
    (breast support and compression paddle), and between them a 50 mm thick half-cylinder
    breast of radius 100 mm: 2 mm of skin around breast tissue (20 % glandular). The grid
    spans the world's x and y and z from the bottom of the body up to just below the source
    (the 600 mm of air above the paddle are voxelised, as the reference codes model them; a
    photon leaving the grid has escaped, so the air below the body, which XRayMClib's world
    also holds, is left out).

    Parameters
    ----------
    voxel_mm : float
        Cubic voxel edge, 2 mm (default) or 1 mm: every box face (plates, skin, tissue, VOIs)
        is a voxel face, except the z faces of VOIs 6 and 7 at 2 mm (they cut slices in half;
        :func:`case3_voi_energies` weights those slices by their overlap) and the body's
        bottom and top, moved 1 mm down at 2 mm (irrelevant: they are 10 cm from the breast).
        The curved skin and tissue surfaces are voxelised by the voxel centres.
    """
    bottom = _CASE3_GRID_BOTTOM_MM.get(float(voxel_mm))
    if bottom is None:
        raise InputError(f"TG-195 Case 3: voxel_mm must be 1 or 2, got {voxel_mm!r}")
    x0, x1, y0, y1 = CASE3_WORLD_MM
    x = np.arange(x0 + voxel_mm / 2, x1, voxel_mm)
    y = np.arange(y0 + voxel_mm / 2, y1, voxel_mm)
    top = bottom + voxel_mm * math.floor((CASE3_SOURCE_HEIGHT_MM - bottom) / voxel_mm - 1e-9)
    z = np.arange(bottom + voxel_mm / 2, top, voxel_mm)
    from ..materials import get_medium

    media = [get_medium("air"), get_medium("water"), pmma(), breast_skin(), breast_tissue()]
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    mi = np.zeros((z.size, y.size, x.size), np.uint8)

    def box(b):
        return _in(xx, b[0], b[1]) & _in(yy, b[2], b[3]) & _in(zz, b[4], b[5])

    mi[box(CASE3_BODY_MM)] = 1
    for plate in CASE3_PLATES_MM:
        mi[box(plate)] = 2
    r2 = xx**2 + yy**2
    half = xx > 0
    mi[half & (r2 < CASE3_SKIN_MM[0] ** 2) & _in(zz, CASE3_SKIN_MM[1], CASE3_SKIN_MM[2])] = 3
    tissue = half & (r2 < CASE3_TISSUE_MM[0] ** 2) & _in(zz, CASE3_TISSUE_MM[1], CASE3_TISSUE_MM[2])
    mi[tissue] = 4
    rho = np.array([m.density_g_cm3 for m in media], np.float32)[mi]
    geo = VoxelGeometry(mi, rho, media, (voxel_mm,) * 3, (z[0], y[0], x[0]))
    return Case3Setup(geo, x, y, z, mi == 4)


def case3_source(energy: str) -> PointSource:
    """Case 3 source (radiography): isotropic, 660 mm above the chest wall edge of the detector
    plane, pointing down, its field just covering the detector rectangle ``CASE3_FIELD_MM`` on
    z = 0 (an off-axis pyramid: ``PointSource(field_tan=...)``); ``energy`` '16.8 keV' or
    '30 kVp'."""
    if energy not in CASE3_ENERGIES:
        raise InputError(f"TG-195 Case 3: energy must be one of {sorted(CASE3_ENERGIES)}, got {energy!r}")
    spec = CASE3_ENERGIES[energy]
    kw = _beam_kwargs(spec)
    h = CASE3_SOURCE_HEIGHT_MM
    fx0, fx1, fy0, fy1 = CASE3_FIELD_MM
    # direction -z, e1 = +x, e2 = direction x e1 = -y: b = -y / h
    return PointSource(position_mm=(0.0, 0.0, h), direction=(0.0, 0.0, -1.0), collimation="fan",
                       fan_axis=(1.0, 0.0, 0.0), field_tan=((fx0 / h, fx1 / h), (-fy1 / h, -fy0 / h)), **kw)


def case3_voi_energies(setup: Case3Setup, result: DoseResult) -> pd.DataFrame:
    """Energy (eV per source photon) in the Case 3 breast tissue ("Total body") and VOIs 1-7:
    columns ``volume``, ``ours``, ``ours_sigma`` (batch method; NaN unless batches were kept).
    VOI weights are each voxel's overlap with the VOI box, in breast tissue voxels only."""
    step = setup.geometry.spacing_mm[0]
    rows = []
    val, sig = result.sum_with_sigma(setup.tissue.astype(float))
    rows.append(dict(volume="Total body", ours=val, ours_sigma=sig))
    for k, (x0, x1, y0, y1, z0, z1) in sorted(CASE3_VOIS_MM.items()):
        w = (_overlap(setup.z_mm, step, z0, z1)[:, None, None] * _overlap(setup.y_mm, step, y0, y1)[None, :, None]
             * _overlap(setup.x_mm, step, x0, x1)[None, None, :])
        val, sig = result.sum_with_sigma(w * setup.tissue)
        rows.append(dict(volume=f"VOI {k}", ours=val, ours_sigma=sig))
    return pd.DataFrame(rows)


def case3_reference() -> pd.DataFrame:
    """TG-195 Case 3 radiography rows (energy eV per photon) of the four codes."""
    return _radiography_reference("Case 3")


def run_case3(
    energy: str,
    n_photons: int,
    voxel_mm: float = 2.0,
    seed: int = 0,
    device: str = "cpu",
    n_batches: int = 10,
    setup: Case3Setup | None = None,
) -> tuple[pd.DataFrame, DoseResult]:
    """Simulate TG-195 Case 3 (mammography, radiography) and join our energies with the reference.

    ``setup``: a :func:`case3_geometry` to reuse (it does not depend on the beam).

    Returns
    -------
    table : DataFrame
        Per volume: ours, ours_sigma, EGSnrc, Geant4, MCNP, Penelope, deviation_pct (vs EGSnrc),
        sigma_pct.
    result : DoseResult
    """
    src = case3_source(energy)
    setup = setup if setup is not None else case3_geometry(voxel_mm)
    res = simulate(setup.geometry, src, n_photons, n_batches=n_batches, seed=seed, device=device, keep_batches=True)
    return _join_radiography("Case 3", energy, case3_voi_energies(setup, res)), res
