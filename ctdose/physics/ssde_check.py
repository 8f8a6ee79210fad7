"""The Monte Carlo against AAPM Report 204's size-specific dose estimates: water cylinders
(:func:`cylinder_ssde_check`) and stored cases (:func:`case_ssde_check`).

In a cylinder, a helical scan (pitch 1) over ``scan_mm`` at the middle of a water cylinder of diameter D
and length ``length_mm``; the mean dose to water over the cylinder's cross-section in the
central ``feed`` (one table feed, so that the helix's start angle averages out) is the dose
at the centre of the scan range that an SSDE estimates (:mod:`ctdose.ssde`):

.. math:: SSDE = f(D_w) \\, CTDI_{vol}, \\qquad CTDI_{vol} = CTDI_w \\text{ at pitch 1},

with CTDIw simulated for the same scanner in the 32 cm PMMA phantom
(:func:`ctdose.physics.ctdi.simulate_ctdi`). The ratio tests the absolute scale (spectrum per
mAs, bowtie, kerma) and the dependence on size (attenuation, scatter) together, against a fit
to four independent groups' measurements and Monte Carlo (the report's), not against this
code's own assumptions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import InputError
from ..materials import get_medium
from ..ssde import effective_energy_kev, ssde_conversion_factor, water_equivalent_diameter_cm
from .ctdi import MGY_PER_GY, REFERENCE_MAS
from .mc import VoxelGeometry, simulate

if TYPE_CHECKING:
    import xarray as xr

    from .scanner import CTScanner

__all__ = ["case_ssde_check", "cylinder_ssde_check", "water_cylinder"]

#: Default phantom length (mm): long enough that the scan's scatter does not leave it.
CYLINDER_LENGTH_MM = 600.0
#: Default helical scan length (mm): the 32 cm cylinder's central dose is within 1 % of its value
#: for a scan over the whole 600 mm (``benchmarks/bench_ssde.py``: 1.283 against 1.295 times
#: CTDIw at 560 mm).
SCAN_LENGTH_MM = 400.0


def water_cylinder(diameter_mm: float, length_mm: float = CYLINDER_LENGTH_MM, pixel_mm: float = 5.0,
                   slice_mm: float = 10.0) -> tuple[VoxelGeometry, np.ndarray]:
    """A water cylinder along z, centred on the isocentre, in air; and its voxel mask.

    Parameters
    ----------
    diameter_mm, length_mm, pixel_mm, slice_mm : float
        mm. The grid has an even number of slices and pixels, so z = 0 and the axis lie on
        voxel faces.

    Returns
    -------
    geometry : VoxelGeometry
        Media ``[air, water]``.
    mask : ndarray [z, y, x] bool
        The water voxels.
    """
    r = diameter_mm / 2.0
    n_xy = 2 * int(math.ceil(r / pixel_mm)) + 2
    n_z = 2 * int(round(length_mm / slice_mm / 2.0))
    c = (np.arange(n_xy) - (n_xy - 1) / 2.0) * pixel_mm
    z = (np.arange(n_z) - (n_z - 1) / 2.0) * slice_mm
    yy, xx = np.meshgrid(c, c, indexing="ij")
    mask = np.broadcast_to(xx**2 + yy**2 <= r * r, (n_z, n_xy, n_xy)).copy()
    air, water = get_medium("air"), get_medium("water")
    rho = np.where(mask, water.density_g_cm3, air.density_g_cm3).astype(np.float32)
    geometry = VoxelGeometry(mask.astype(np.uint8), rho, [air, water], (slice_mm, pixel_mm, pixel_mm),
                             (float(z[0]), float(c[0]), float(c[0])))
    return geometry, mask


def cylinder_ssde_check(scanner: "CTScanner", ctdiw_mgy: float,
                        diameters_cm: Sequence[float] = (10.0, 16.0, 24.0, 32.0, 40.0), n_photons: int = 1_000_000,
                        scan_mm: float = SCAN_LENGTH_MM, pixel_mm: float = 5.0, slice_mm: float = 10.0, seed: int = 0,
                        **simulate_kw) -> pd.DataFrame:
    """Monte Carlo central dose of water cylinders against AAPM Report 204's SSDE.

    Parameters
    ----------
    scanner : ctdose.physics.scanner.CTScanner
        Needs an absolute spectrum.
    ctdiw_mgy : float
        The scanner's CTDIw in the 32 cm phantom, mGy per 100 mAs
        (:func:`ctdose.physics.ctdi.simulate_ctdi`); CTDIvol at pitch 1.
    diameters_cm : sequence of float
        Within the report's 8-45 cm.
    n_photons : int
        Histories per cylinder.
    scan_mm : float
        Helical scan length (beam centre travel, mm).
    pixel_mm, slice_mm : float
    seed : int
    **simulate_kw
        Passed to :func:`ctdose.physics.mc.simulate` (``workers``, ``device``, ...).

    Returns
    -------
    pandas.DataFrame
        One row per diameter: ``diameter_cm``, ``d_w_cm`` (AAPM 220, at the scan's centre),
        ``mc_mgy`` and ``mc_sigma_mgy`` (mean dose to water in the central table feed, mGy per
        100 mAs of one rotation, 1 sd), ``f`` (AAPM 204), ``ssde_mgy`` and ``ratio``
        (``mc_mgy / ssde_mgy``).
    """
    from .scanner import Protocol
    from .sources import CTSource

    feed_mm = float(scanner.collimation_mm)  # pitch 1
    protocol = Protocol(mode="helical", pitch=1.0, z_start_mm=-scan_mm / 2.0, z_end_mm=scan_mm / 2.0)
    source = CTSource(scanner, protocol)
    e_eff = effective_energy_kev(scanner.spectrum)
    rows = []
    for d_cm in diameters_cm:
        geometry, mask = water_cylinder(10.0 * float(d_cm), pixel_mm=pixel_mm, slice_mm=slice_mm)
        z = geometry.origin_mm[0] + np.arange(mask.shape[0]) * slice_mm
        central = np.abs(z) < feed_mm / 2.0
        weights = (mask & central[:, None, None]).astype(float)
        weights /= weights.sum()
        res = simulate(geometry, source, int(n_photons), seed=int(seed), keep_batches=True, ambient="air",
                       **simulate_kw)
        dose, sigma = res.sum_with_sigma(weights, quantity="dose_gy")
        scale = REFERENCE_MAS * MGY_PER_GY  # Gy per mAs -> mGy per 100 mAs
        d_w = float(np.mean(water_equivalent_diameter_cm(geometry, e_eff, slices=central)))
        f = ssde_conversion_factor(d_w)
        rows.append({"diameter_cm": float(d_cm), "d_w_cm": d_w, "mc_mgy": dose * scale, "mc_sigma_mgy": sigma * scale,
                     "f": f, "ssde_mgy": f * ctdiw_mgy, "ratio": dose * scale / (f * ctdiw_mgy)})
    return pd.DataFrame(rows)


def case_ssde_check(case: "xr.Dataset", ctdivol_mgy: float, energy_kev: float, advance_mm: float) -> dict:
    """A stored case's Monte Carlo dose at the centre of its scan range against its SSDE.

    Parameters
    ----------
    case : xarray.Dataset
        A case with ``labels``, ``dose_mc`` (Gy per mAs of one rotation), the ``z`` coordinate
        and ``roi_z_mm`` (the scan range); ``body_mask`` where stored.
    ctdivol_mgy : float
        The protocol's CTDIvol in the 32 cm phantom, mGy per 100 mAs of one rotation: CTDIw for
        a contiguous axial scan, CTDIw / pitch for a helical one.
    energy_kev : float
        Effective energy of the beam (:func:`ctdose.ssde.effective_energy_kev`).
    advance_mm : float
        The central slab's thickness: the table's advance per rotation (the collimation for a
        contiguous axial scan, pitch x collimation for a helical one), so that the pattern
        along z (an axial series' beam centres and junctions, a helix's start angle) averages out.

    Returns
    -------
    dict
        ``case_id``, ``d_w_cm`` (AAPM 220, mean over the slab's slices), ``ssde_mgy``, ``mc_mgy``
        (mean absorbed dose, energy over mass, of the body in the slab; mGy per 100 mAs) and
        ``ratio``; ``d_w_cm`` outside AAPM 204's range gives NaN for the SSDE.
    """
    from ..anatomy.organs import body_mask
    from .mc import geometry_from_case

    case_id = case.attrs.get("case_id", "?")
    geometry = geometry_from_case(case)
    z = np.asarray(case["z"].values, dtype=float)
    roi = case.attrs.get("roi_z_mm")
    z_mid = float(np.mean(roi)) if roi is not None and len(roi) == 2 else float(z.mean())
    central = np.abs(z - z_mid) < advance_mm / 2.0
    if not central.any():
        central = np.abs(z - z_mid) == np.abs(z - z_mid).min()
    labels = np.asarray(case["labels"].values)
    body = np.asarray(case["body_mask"].values).astype(bool) if "body_mask" in case else body_mask(labels)
    slab = body & central[:, None, None]
    mass = np.asarray(geometry.density_g_cm3, dtype=float) * slab
    dose = np.asarray(case["dose_mc"].values, dtype=float)
    mc_mgy = float((dose * mass).sum() / mass.sum()) * REFERENCE_MAS * MGY_PER_GY
    d_w = float(np.mean(water_equivalent_diameter_cm(geometry, energy_kev, slices=central)))
    try:
        ssde = float(ssde_conversion_factor(d_w)) * float(ctdivol_mgy)
    except InputError:
        ssde = float("nan")
    return {"case_id": case_id, "d_w_cm": d_w, "ssde_mgy": ssde, "mc_mgy": mc_mgy, "ratio": mc_mgy / ssde}
