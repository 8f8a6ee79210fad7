"""CTDI check: CTDI100 and CTDIw simulated in the 32 cm PMMA body phantom.

The standard body CTDI phantom (IEC 60601-2-44; AAPM Report 96): a PMMA cylinder of 320 mm
diameter and 150 mm length with chamber holes of 13.1 mm diameter at the centre and at 10 mm
below the surface at 0, 90, 180 and 270 degrees. A 100 mm pencil chamber in a hole measures
air kerma; for one axial rotation of nominal collimation N T

.. math:: CTDI_{100} = \\frac{1}{N T} \\int_{-50\\,mm}^{50\\,mm} K_{air}(z)\\, dz ,
          \\qquad CTDI_w = \\tfrac13 CTDI_{100,c} + \\tfrac23 \\overline{CTDI_{100,p}} .

Here the holes are air in the voxel phantom and the default (expected-track-length)
estimator scores the air kerma of every air voxel a photon's ray crosses (with the
track-length estimator a small majorant floor gives enough scoring sites in the air).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._data import table_row, table_source
from .mc import VoxelGeometry, simulate

__all__ = ["CTDIResult", "CTDISurvey", "ctdi_phantom", "ctdi_survey", "simulate_ctdi"]

_SURVEY_TABLE = "ctdi_body_survey.csv"

PHANTOM_DIAMETER_MM = 320.0
PHANTOM_LENGTH_MM = 150.0
HOLE_DIAMETER_MM = 13.1
HOLE_DEPTH_MM = 10.0
CHAMBER_LENGTH_MM = 100.0
MGY_PER_GY = 1e3
#: Tube load of the result (CTDI is commonly quoted per 100 mAs).
REFERENCE_MAS = 100.0
#: Majorant floor (1/mm) for enough track-length sites in the air holes.
_FLOOR_PER_MM = 0.05


@dataclass
class CTDIResult:
    """CTDI per 100 mAs (mGy) of one rotation, with 1-sd batch uncertainties."""

    ctdi100_center_mgy: float
    ctdi100_periphery_mgy: list
    ctdiw_mgy: float
    ctdiw_sigma_mgy: float
    collimation_mm: float
    n_photons: int
    wall_s: float
    #: 1-sd batch uncertainties of the centre and the four peripheral readings (mGy)
    ctdi100_center_sigma_mgy: float = float("nan")
    ctdi100_periphery_sigma_mgy: list | None = None


@dataclass(frozen=True)
class CTDISurvey:
    """Published CTDIvol per 100 mAs of clinical scanners in one CTDI phantom (a survey).

    Attributes
    ----------
    phantom : str
        ``"body"`` (320 mm) or ``"head"`` (160 mm).
    kvp : float
        Tube voltage of ``mean_mgy`` (kV).
    mean_mgy, sd_mgy : float
        Mean and 1-sd spread over the surveyed scanners, mGy per 100 mAs of one rotation
        (pitch 1: CTDIvol = CTDIw).
    kv_exponent : float
        CTDIvol proportional to ``kvp ** kv_exponent`` across tube voltages.
    source : str
        The table's citation.
    """

    phantom: str
    kvp: float
    mean_mgy: float
    sd_mgy: float
    kv_exponent: float
    source: str

    def at_kvp(self, kvp: float) -> tuple[float, float]:
        """The survey's mean and 1-sd spread at ``kvp`` (kV) by its power law, mGy per 100 mAs."""
        scale = (float(kvp) / self.kvp) ** self.kv_exponent
        return self.mean_mgy * scale, self.sd_mgy * scale


def ctdi_survey(phantom: str = "body") -> CTDISurvey:
    """The published CTDIvol range of clinical scanners (``ctdose/data/ctdi_body_survey.csv``).

    The reference a simulated CTDIw is checked against in notebook 02: a generic spectrum and
    bowtie are expected within the spread of real scanners, not equal to any one of them.

    Parameters
    ----------
    phantom : {"body", "head"}

    Returns
    -------
    CTDISurvey

    Examples
    --------
    >>> s = ctdi_survey("body")
    >>> [round(v, 2) for v in s.at_kvp(120.0)], round(s.at_kvp(140.0)[0] / s.at_kvp(80.0)[0], 2)
    ([7.8, 2.2], 4.28)
    """
    row = table_row(_SURVEY_TABLE, "phantom", phantom)
    return CTDISurvey(phantom, float(row["kvp"]), float(row["ctdivol_mgy_per_100mas"]), float(row["sd_mgy_per_100mas"]),
                      float(row["kv_exponent"]), table_source(_SURVEY_TABLE))


def ctdi_phantom(pixel_mm: float = 2.0, slice_mm: float = 5.0, diameter_mm: float = PHANTOM_DIAMETER_MM):
    """The CTDI phantom as a :class:`VoxelGeometry` and the hole masks.

    Returns
    -------
    geometry : VoxelGeometry
        Media ``[air, pmma]`` (vacuum outside the phantom).
    holes : dict name -> bool array [z, y, x]
        ``center``, ``p0``, ``p90``, ``p180``, ``p270``: hole voxels within the 100 mm chamber.
    """
    from ..materials import get_medium

    pmma, air = get_medium("pmma"), get_medium("air")
    r = diameter_mm / 2
    n_xy = int(math.ceil(r / pixel_mm)) * 2
    c = (np.arange(n_xy) - (n_xy - 1) / 2) * pixel_mm
    n_z = 2 * int(round(PHANTOM_LENGTH_MM / slice_mm / 2))
    z = (np.arange(n_z) - (n_z - 1) / 2) * slice_mm
    yy, xx = np.meshgrid(c, c, indexing="ij")
    inside = xx**2 + yy**2 <= r * r
    mi = np.where(inside, 1, 0).astype(np.uint8)
    rho = np.where(inside, pmma.density_g_cm3, 0.0).astype(np.float32)
    centres = {"center": (0.0, 0.0)}
    rp = r - HOLE_DEPTH_MM
    for ang in (0, 90, 180, 270):
        a = math.radians(ang)
        # angle 0 = anterior (y negative), as the scanner convention
        centres[f"p{ang}"] = (rp * math.sin(a), -rp * math.cos(a))
    in_chamber = np.abs(z) < CHAMBER_LENGTH_MM / 2
    holes2d = {}
    for name, (hx, hy) in centres.items():
        h = (xx - hx) ** 2 + (yy - hy) ** 2 <= (HOLE_DIAMETER_MM / 2) ** 2
        holes2d[name] = h
        mi[h] = 0
        rho[h] = air.density_g_cm3
    mi3 = np.broadcast_to(mi, (n_z, n_xy, n_xy)).copy()
    rho3 = np.broadcast_to(rho, (n_z, n_xy, n_xy)).copy()
    holes = {k: (in_chamber[:, None, None] & v[None]) for k, v in holes2d.items()}
    geo = VoxelGeometry(mi3, rho3, [air, pmma], (slice_mm, pixel_mm, pixel_mm), (z[0], c[0], c[0]))
    return geo, holes


def simulate_ctdi(
    scanner,
    n_photons: int = 500_000,
    projections_per_rotation: int = 16,
    seed: int = 0,
    device: str = "cpu",
    pixel_mm: float = 2.0,
    ambient: str | None = "air",
    rotation: str = "continuous",
    start_angle_deg: float = 0.0,
) -> CTDIResult:
    """CTDI100 (centre, periphery) and CTDIw per 100 mAs for one axial rotation of ``scanner``.

    Parameters
    ----------
    scanner : ctdose.physics.scanner.CTScanner
        Needs an absolute spectrum.
    n_photons : int
    projections_per_rotation : int
    seed : int
    device : str
    pixel_mm : float
    ambient : str or None
        Medium between the focal spot and the phantom's grid (``simulate(ambient=...)``).
    rotation : {"continuous", "discrete"}
        The protocol's rotation (:class:`ctdose.physics.scanner.Protocol`). With
        ``"discrete"`` the peripheral readings depend on where the projections fall relative
        to the holes (``start_angle_deg``; angle 0 is the hole at 0 degrees).
    start_angle_deg : float

    Returns
    -------
    CTDIResult
    """
    from .scanner import Protocol
    from .sources import CTSource

    geo, holes = ctdi_phantom(pixel_mm=pixel_mm)
    protocol = Protocol(mode="axial", z_start_mm=0.0, z_end_mm=0.0, projections_per_rotation=projections_per_rotation,
                        rotation=rotation, start_angle_deg=start_angle_deg)
    src = CTSource(scanner, protocol)
    res = simulate(geo, src, n_photons, seed=seed, device=device, keep_batches=True, majorant_floor_per_mm=_FLOOR_PER_MM,
                   ambient=ambient)
    nt = float(scanner.collimation_mm)
    slice_mm = float(geo.spacing_mm[0])
    vals, sig = {}, {}
    for name, mask in holes.items():
        # mean kerma over the chamber: average over the hole cross-section, integral over z
        area_vox = mask[int(np.argmax(mask.any(axis=(1, 2))))].sum()
        w = mask.astype(float) / area_vox * slice_mm / nt
        v, s = res.sum_with_sigma(w, quantity="dose_gy")
        vals[name] = v * REFERENCE_MAS * MGY_PER_GY
        sig[name] = s * REFERENCE_MAS * MGY_PER_GY
    per = [vals[f"p{a}"] for a in (0, 90, 180, 270)]
    ctdiw = vals["center"] / 3 + 2 / 3 * float(np.mean(per))
    ctdiw_sig = math.sqrt((sig["center"] / 3) ** 2 + sum((2 / 3 / 4 * sig[f"p{a}"]) ** 2 for a in (0, 90, 180, 270)))
    return CTDIResult(
        ctdi100_center_mgy=vals["center"],
        ctdi100_periphery_mgy=per,
        ctdiw_mgy=ctdiw,
        ctdiw_sigma_mgy=ctdiw_sig,
        collimation_mm=nt,
        n_photons=int(n_photons),
        wall_s=res.wall_s,
        ctdi100_center_sigma_mgy=sig["center"],
        ctdi100_periphery_sigma_mgy=[sig[f"p{a}"] for a in (0, 90, 180, 270)],
    )
