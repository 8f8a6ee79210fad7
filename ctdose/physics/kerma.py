"""Primary air-kerma maps of a CT scan: the network's second input (paper 2.3.2).

Both modes return the **primary (uncollided) air kerma** at every voxel centre of a case grid,
summed over all source positions of the protocol, in **Gy per mAs of one rotation**
(tube current x rotation time, ``Protocol.tube_current_ma * Protocol.rotation_time_s``; the
convention of ``ctdose.physics.sources``: the whole scan's kerma at tube current I and rotation
time t is ``map * I * t``).

For one source position at gantry angle ``a`` and focal-spot height ``z_k``, a point
``r = (x, y, z)`` has beam coordinates (see :mod:`ctdose.physics.scanner`)

* ``x' = x cos a + y sin a`` (across the fan), ``y' = -x sin a + y cos a`` (along the central
  ray, the focal spot at ``y' = -D``), ``z' = z - z_k``;
* fan angle ``gamma = atan(x' / (D + y'))``; in the fan if ``|gamma| <= fan half angle``;
* in the z collimation if ``|z'| <= (collimation / 2) (D + y') / D`` (the beam diverges from
  the focal spot); a voxel counts with the fraction of its z extent inside the beam.

Its primary air kerma per mAs at the focal-spot distance :math:`\\rho` is

.. math:: K = \\sum_E \\Phi_E(1\\,m) \\left(\\frac{1\\,m}{\\rho}\\right)^2 T_{bowtie}(E, \\gamma)
          \\, e^{-\\int \\mu(E)\\, dl}\\, E \\, (\\mu_{en}/\\rho)_{air}(E)

``mode="cylinder"`` (the paper's way)
    The attenuation is that of a 32 cm water cylinder centred on the isocentre (axis along z).
    The map of *one* projection (angle 0, z 0) is computed on a fine in-plane grid (spacing
    ``grid_mm``; once per process for all cases of a cohort) with the exact in-plane chord
    length through the cylinder, then rotated and translated to every source position
    (bilinear interpolation) and summed, with the fan, the z collimation and the 3-D
    inverse-square law applied analytically. The chord is taken in the gantry plane (the extra
    path of rays diverging in z, at most 1/cos(2.1 deg) - 1 = 7e-4 of it, is neglected).
``mode="patient"``
    The attenuation is ray-traced through the patient's own media: each medium's
    :math:`\\mu/\\rho(E)` is decomposed into water and cortical-bone basis functions
    (least squares over the spectrum, exact for water), the two basis areal densities are
    integrated along the 3-D ray from the focal spot to each voxel centre (trilinear sampling in
    torch, CPU or CUDA), and the spectrum sum is read from a precomputed table
    (fan angle x water areal density x bone areal density, interpolated in log).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.constants import electron_volt
from tqdm.auto import tqdm

from ..config import as_real, number_from_text
from ..errors import ConfigError, InputError
from ..materials import Medium, get_medium, medium_of_label as _organs_medium_of_label
from .scanner import CTScanner, Protocol, SourcePositions
from .spectrum import Spectrum
from .xsection import mass_coefficients

__all__ = [
    "CYLINDER_RADIUS_MM",
    "basis_decomposition",
    "case_kerma_map",
    "kerma_map",
    "kerma_per_mas_unattenuated",
    "kerma_settings",
]

#: radius of the paper's water cylinder (32 cm body CTDI phantom diameter)
CYLINDER_RADIUS_MM = 160.0
#: default in-plane spacing of the single-projection map (mm)
DEFAULT_GRID_MM = 2.0

_MM2_PER_CM2 = 100.0
_MM_PER_CM = 10.0
_REF_MM = 1000.0
_GY_PER_KEV_CM2_G = 1e3 * electron_volt * 1e3  # keV -> J, per g -> per kg
_N_GAMMA_TABLE = 257
_N_PW_TABLE = 192
_N_PB_TABLE = 48
_CHUNK = 1 << 18
#: the single-projection maps of the cylinder mode are kept per process (a few MB each), their
#: half extent rounded up to this step (mm) so that similar case grids share one
_SINGLE_MAP_STEP_MM = 50.0
_SINGLE_MAP_CACHE_SIZE = 4
_SINGLE_MAPS: dict = {}
_TINY = 1e-30


def _progress_enabled(progress: bool | None) -> bool:
    if progress is None:
        return sys.stderr.isatty() and os.environ.get("CTDOSE_PROGRESS", "1") != "0"
    return bool(progress)


# ---------------------------------------------------------------------------------------------
@dataclass
class _SpectralWeights:
    energy_kev: np.ndarray  # (n_e,)
    weight: np.ndarray  # Phi_E(1 m, per mm^2 per mAs) E mu_en_air(E) * const -> Gy mm^2... at 1 m


def _spectral_weights(spectrum: Spectrum) -> _SpectralWeights:
    """Per-bin air kerma per mAs at 1 m (Gy), unattenuated, no bowtie."""
    e = spectrum.energy_kev
    w = spectrum.fluence_per_mas_per_mm2_at_1m * _MM2_PER_CM2 * spectrum.kerma_per_photon_weights()
    return _SpectralWeights(e, w * _GY_PER_KEV_CM2_G)


def kerma_per_mas_unattenuated(scanner: CTScanner, fan_angle_rad: float, distance_mm: float) -> float:
    """Free-in-air primary kerma per mAs (Gy) at ``distance_mm`` on the ray at ``fan_angle_rad``."""
    sw = _spectral_weights(scanner.spectrum)
    t = scanner.bowtie.transmission(sw.energy_kev, fan_angle_rad)
    return float((sw.weight * t).sum() * (_REF_MM / distance_mm) ** 2)


def basis_decomposition(
    media: Sequence[Medium], spectrum: Spectrum, basis: Sequence[Medium] | None = None
) -> np.ndarray:
    """Least-squares basis coefficients of each medium's mass attenuation.

    Finds ``c[m] = (a, b)`` with :math:`\\mu/\\rho_m(E) \\approx a\\,\\mu/\\rho_{water}(E) +
    b\\,\\mu/\\rho_{bone}(E)`, minimising the relative error weighted by the spectrum's air-kerma
    contribution. Exact for the basis media themselves.

    Returns
    -------
    ndarray, shape (n_media, 2)
        Dimensionless coefficients (multiply by the mass density to get g/cm3 of each basis).
    """
    if basis is None:
        basis = [get_medium("water"), get_medium("spine_bone")]
    e = spectrum.energy_kev
    wts = spectrum.probabilities() * spectrum.kerma_per_photon_weights()
    keep = wts > wts.max() * 1e-6
    e, wts = e[keep], wts[keep]
    b = np.stack([mass_coefficients(m, e)["total"] for m in basis], axis=1)  # (n_e, 2)
    out = np.zeros((len(media), len(basis)))
    for i, m in enumerate(media):
        mu = mass_coefficients(m, e)["total"]
        sw = np.sqrt(wts) / mu
        coef, *_ = np.linalg.lstsq(b * sw[:, None], mu * sw, rcond=None)
        out[i] = coef
    return out


# ---------------------------------------------------------------------------------------------
def _chord_in_circle_mm(sx: torch.Tensor, sy: torch.Tensor, px: torch.Tensor, py: torch.Tensor, radius: float) -> torch.Tensor:
    """Length of the segment S->P inside the circle |r| <= radius (centred at 0), mm."""
    dx, dy = px - sx, py - sy
    a = dx * dx + dy * dy
    b = 2.0 * (sx * dx + sy * dy)
    c = sx * sx + sy * sy - radius * radius
    disc = b * b - 4.0 * a * c
    sq = torch.sqrt(torch.clamp(disc, min=0.0))
    a_safe = torch.clamp(a, min=_TINY)
    t1 = torch.clamp((-b - sq) / (2.0 * a_safe), 0.0, 1.0)
    t2 = torch.clamp((-b + sq) / (2.0 * a_safe), 0.0, 1.0)
    length = (t2 - t1) * torch.sqrt(a)
    return torch.where(disc > 0, length, torch.zeros_like(length))


def _bowtie_matrix(scanner: CTScanner, energy_kev: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """T(E, gamma), shape (n_gamma, n_e)."""
    return scanner.bowtie.transmission(energy_kev[None, :], gamma[:, None])


def _single_projection_cylinder(
    scanner: CTScanner, half_extent_mm: float, grid_mm: float, radius_mm: float, dev: torch.device
) -> tuple[torch.Tensor, float]:
    """In-plane primary kerma per mAs of one projection (angle 0, z' = 0) on a square grid.

    Grid points at ``-half_extent + i * grid_mm``; indexed ``[j (y'), i (x')]``.
    The fan cut is *not* applied (done analytically per voxel); the bowtie is.
    """
    d = scanner.source_to_isocentre_mm
    n = int(math.ceil(2 * half_extent_mm / grid_mm)) + 1
    lo = -0.5 * (n - 1) * grid_mm
    coords = lo + grid_mm * torch.arange(n, dtype=torch.float64, device=dev)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    xp, yp = xx.reshape(-1), yy.reshape(-1)
    depth = d + yp  # distance along the central ray
    valid = depth > 1.0
    gamma = torch.atan2(xp, torch.clamp(depth, min=1.0))
    rho2 = xp * xp + depth * depth
    sw = _spectral_weights(scanner.spectrum)
    e = sw.energy_kev
    mu_w = torch.tensor(
        mass_coefficients(get_medium("water"), e)["total"] * get_medium("water").density_g_cm3 / _MM_PER_CM,
        dtype=torch.float64, device=dev,
    )
    # bowtie on a fine gamma table (interpolated linearly per point)
    g_max = float(torch.abs(gamma[valid]).max()) if bool(valid.any()) else 0.0
    g_tab = np.linspace(0.0, max(g_max, 1e-6), 2049)
    bt = torch.tensor(_bowtie_matrix(scanner, e, g_tab) * sw.weight[None, :], dtype=torch.float64, device=dev)
    chord = _chord_in_circle_mm(
        torch.zeros_like(xp), torch.full_like(xp, -d), xp, yp, radius_mm
    )
    out = torch.zeros_like(xp)
    for s in range(0, xp.numel(), _CHUNK // 8):
        sl = slice(s, s + _CHUNK // 8)
        g = torch.abs(gamma[sl]) / max(g_tab[-1], 1e-12) * (g_tab.size - 1)
        i0 = torch.clamp(g.floor().long(), 0, g_tab.size - 2)
        f = (g - i0).unsqueeze(1)
        wrow = bt[i0] * (1 - f) + bt[i0 + 1] * f  # (chunk, n_e)
        att = torch.exp(-chord[sl].unsqueeze(1) * mu_w.unsqueeze(0))
        out[sl] = (wrow * att).sum(dim=1) * (_REF_MM * _REF_MM) / rho2[sl]
    out = torch.where(valid, out, torch.zeros_like(out))
    return out.reshape(n, n), lo


# ---------------------------------------------------------------------------------------------
class _Grid:
    """Case grid helper (voxel centres in mm, on a torch device)."""

    def __init__(self, shape, spacing_mm, origin_mm, dev):
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"kerma_map: shape must be (nz, ny, nx) with positive sizes, got {shape}")
        sp = tuple(float(v) for v in spacing_mm)
        og = tuple(float(v) for v in origin_mm)
        if len(sp) != 3 or len(og) != 3 or min(sp) <= 0 or not all(map(math.isfinite, sp + og)):
            raise InputError(f"kerma_map: bad spacing_mm {spacing_mm} or origin_mm {origin_mm}")
        self.shape = tuple(int(v) for v in shape)
        self.spacing, self.origin = sp, og
        self.dev = dev
        self.z = og[0] + sp[0] * torch.arange(self.shape[0], dtype=torch.float64, device=dev)
        y = og[1] + sp[1] * torch.arange(self.shape[1], dtype=torch.float64, device=dev)
        x = og[2] + sp[2] * torch.arange(self.shape[2], dtype=torch.float64, device=dev)
        self.yy, self.xx = torch.meshgrid(y, x, indexing="ij")  # (ny, nx)

    def max_inplane_radius_mm(self) -> float:
        r = torch.sqrt(self.xx**2 + self.yy**2).max().item()
        return float(r) + max(self.spacing[1], self.spacing[2])


def _beam_frame(grid: _Grid, angle: float):
    ca, sa = math.cos(angle), math.sin(angle)
    xp = grid.xx * ca + grid.yy * sa
    yp = -grid.xx * sa + grid.yy * ca
    return xp, yp


def _z_overlap(grid: _Grid, z_k: float, half_width: torch.Tensor, slices: slice) -> torch.Tensor:
    """Fraction of each voxel's z extent inside [z_k - hw, z_k + hw]; shape (nz_s, ny, nx)."""
    dz = grid.spacing[0]
    zc = grid.z[slices].view(-1, 1, 1)
    lo = torch.maximum(zc - 0.5 * dz, z_k - half_width.unsqueeze(0))
    hi = torch.minimum(zc + 0.5 * dz, z_k + half_width.unsqueeze(0))
    return torch.clamp(hi - lo, min=0.0) / dz


def _slices_in_beam(grid: _Grid, z_k: float, hw_max: float) -> slice:
    dz, z0, nz = grid.spacing[0], grid.origin[0], grid.shape[0]
    k0 = int(math.floor((z_k - hw_max - z0) / dz - 0.5))
    k1 = int(math.ceil((z_k + hw_max - z0) / dz + 0.5)) + 1
    return slice(max(k0, 0), min(max(k1, 0), nz))


def _geometry(scanner: CTScanner, grid: _Grid, angle: float):
    """Per-pixel beam quantities for one angle: depth, gamma mask, half width, in-plane rho^2."""
    d = scanner.source_to_isocentre_mm
    xp, yp = _beam_frame(grid, angle)
    depth = d + yp
    gamma = torch.atan2(xp, torch.clamp(depth, min=1e-6))
    in_fan = (depth > 0) & (torch.abs(gamma) <= scanner.fan_half_angle_rad() + 1e-12)
    half_width = 0.5 * scanner.collimation_mm * torch.clamp(depth, min=0.0) / d
    return xp, yp, depth, gamma, in_fan, half_width


# ---------------------------------------------------------------------------------------------
def _scanner_key(scanner: CTScanner) -> str:
    """Digest of what a single-projection map depends on (geometry, spectrum, bowtie)."""
    h = hashlib.sha256()
    h.update(np.float64([scanner.source_to_isocentre_mm]).tobytes())
    for arr in (scanner.spectrum.energy_kev, scanner.spectrum.fluence_per_mas_per_mm2_at_1m,
                scanner.bowtie.fan_angle_rad, scanner.bowtie.al_thickness_mm):
        h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    return h.hexdigest()


def _cached_single_projection(scanner, half_extent_mm, grid_mm, radius_mm, dev) -> tuple[torch.Tensor, float]:
    """:func:`_single_projection_cylinder` for a map at least ``half_extent_mm`` wide, cached.

    The half extent is rounded up to a multiple of ``_SINGLE_MAP_STEP_MM``, so that the cases of
    a cohort (grids of similar size, one scanner) share one map per process.
    """
    half = math.ceil(half_extent_mm / _SINGLE_MAP_STEP_MM) * _SINGLE_MAP_STEP_MM
    key = (_scanner_key(scanner), half, float(grid_mm), float(radius_mm), str(dev))
    if key not in _SINGLE_MAPS:
        if len(_SINGLE_MAPS) >= _SINGLE_MAP_CACHE_SIZE:
            _SINGLE_MAPS.pop(next(iter(_SINGLE_MAPS)))
        _SINGLE_MAPS[key] = _single_projection_cylinder(scanner, half, grid_mm, radius_mm, dev)
    return _SINGLE_MAPS[key]


def _cylinder_map(scanner, positions, grid, grid_mm, radius_mm, progress) -> torch.Tensor:
    dev = grid.dev
    half = grid.max_inplane_radius_mm() + 2 * grid_mm
    single, lo = _cached_single_projection(scanner, half, grid_mm, radius_mm, dev)
    n = single.shape[0]
    span = (n - 1) * grid_mm
    img = single.view(1, 1, n, n)
    out = torch.zeros(grid.shape, dtype=torch.float64, device=dev)
    cache: dict[float, tuple] = {}
    for k in tqdm(range(len(positions)), desc="kerma (cylinder)", disable=not _progress_enabled(progress)):
        a, z_k, mas = float(positions.angle_rad[k]), float(positions.z_mm[k]), float(positions.mas[k])
        if mas <= 0:
            continue
        if a not in cache:
            xp, yp, depth, gamma, in_fan, hw = _geometry(scanner, grid, a)
            # rotate the single-projection map: sample it at (x', y') (bilinear)
            gx = (xp - lo) / span * 2 - 1
            gy = (yp - lo) / span * 2 - 1
            samp = torch.stack([gx, gy], dim=-1).unsqueeze(0)
            k2d = F.grid_sample(img, samp, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
            k2d = torch.where(in_fan, k2d, torch.zeros_like(k2d))
            rho2_xy = xp * xp + depth * depth
            if len(cache) >= 128:  # helical: angles do not repeat; bound the memory
                cache.clear()
            cache[a] = (k2d, hw, rho2_xy)
        k2d, hw, rho2_xy = cache[a]
        sl = _slices_in_beam(grid, z_k, float(hw.max()))
        if sl.stop <= sl.start:
            continue
        zp = grid.z[sl].view(-1, 1, 1) - z_k
        inv_sq = rho2_xy.unsqueeze(0) / (rho2_xy.unsqueeze(0) + zp * zp)
        out[sl] += mas * k2d.unsqueeze(0) * inv_sq * _z_overlap(grid, z_k, hw, sl)
    return out


# ---------------------------------------------------------------------------------------------
def _patient_tables(scanner, media, dev, max_path_cm, density_of_media, coeffs):
    """log G(gamma, Pw, Pb) table for grid_sample and its axis ranges."""
    sw = _spectral_weights(scanner.spectrum)
    e = sw.energy_kev
    basis = [get_medium("water"), get_medium("spine_bone")]
    mu_b = np.stack([mass_coefficients(m, e)["total"] for m in basis])  # (2, n_e) cm^2/g
    rho_basis = density_of_media[:, None] * coeffs  # (n_media, 2) g/cm3 per basis
    pw_max = max(float(rho_basis[:, 0].clip(min=0).max()) * max_path_cm, 1e-3)
    pb_max = max(float(rho_basis[:, 1].clip(min=0).max()) * max_path_cm, 1e-3)
    g_max = scanner.fan_half_angle_rad()
    g = np.linspace(0.0, g_max, _N_GAMMA_TABLE)
    pw = np.linspace(0.0, pw_max, _N_PW_TABLE)
    pb = np.linspace(0.0, pb_max, _N_PB_TABLE)
    wt = torch.tensor(_bowtie_matrix(scanner, e, g) * sw.weight[None, :], dtype=torch.float64, device=dev)  # (ng, ne)
    mw = torch.tensor(mu_b[0], dtype=torch.float64, device=dev)
    mb = torch.tensor(mu_b[1], dtype=torch.float64, device=dev)
    pw_t = torch.tensor(pw, dtype=torch.float64, device=dev)
    pb_t = torch.tensor(pb, dtype=torch.float64, device=dev)
    table = torch.empty((_N_PB_TABLE, _N_PW_TABLE, _N_GAMMA_TABLE), dtype=torch.float64, device=dev)
    att_w = torch.exp(-pw_t[:, None] * mw[None, :])  # (npw, ne)
    for i in range(_N_PB_TABLE):
        att = att_w * torch.exp(-pb_t[i] * mb)[None, :]  # (npw, ne)
        table[i] = att @ wt.T  # (npw, ng)
    log_table = torch.log(torch.clamp(table, min=_TINY))
    return log_table, (g_max, pw_max, pb_max)


def _patient_map(scanner, positions, grid, labels, media_of_label, density_set, ray_step_mm, progress):
    dev = grid.dev
    labels = np.asarray(labels)
    if labels.shape != grid.shape:
        raise InputError(f"kerma_map: labels shape {labels.shape} differs from the grid shape {grid.shape}")
    if media_of_label is None:
        media_of_label = _organs_medium_of_label()
    present = np.unique(labels)
    names = sorted({media_of_label[int(v)] for v in present if int(v) < len(media_of_label) and media_of_label[int(v)]})
    missing = [int(v) for v in present if int(v) >= len(media_of_label) or not media_of_label[int(v)]]
    if missing:
        raise InputError(f"kerma_map: label ids {missing} have no medium")
    media = [get_medium(nm, density_set) for nm in names]
    coeffs = basis_decomposition(media, scanner.spectrum)  # (n_media, 2)
    dens = np.array([m.density_g_cm3 for m in media])
    lut = np.zeros((int(labels.max()) + 1, 2))
    for v in present:
        i = names.index(media_of_label[int(v)])
        lut[int(v)] = dens[i] * coeffs[i]
    basis_vol = torch.tensor(lut[labels].transpose(3, 0, 1, 2), dtype=torch.float32, device=dev).unsqueeze(0)
    # (1, 2, nz, ny, nx) g/cm3 of water- and bone-equivalent material

    nz, ny, nx = grid.shape
    sz, sy, sx = grid.spacing
    z0, y0, x0 = grid.origin
    d = scanner.source_to_isocentre_mm
    r_box = grid.max_inplane_radius_mm()
    if r_box >= d:
        raise InputError(f"kerma_map: the case grid reaches the focal-spot circle (radius {d} mm)")
    s_lo, s_hi = d - r_box, d + r_box
    ds = float(ray_step_mm) if ray_step_mm else min(sy, sx)
    n_s = int(math.ceil((s_hi - s_lo) / ds)) + 1
    ds = (s_hi - s_lo) / (n_s - 1)
    tan_g = math.tan(scanner.fan_half_angle_rad())
    n_u = int(math.ceil(2 * tan_g * s_hi / min(sy, sx))) + 1
    w_max = 0.5 * scanner.collimation_mm / d + 0.5 * sz / s_lo
    n_w = int(math.ceil(2 * w_max * s_hi / sz)) + 2
    max_path_cm = (s_hi - s_lo) * math.sqrt(1 + tan_g**2 + w_max**2) / _MM_PER_CM
    log_table, (g_max, pw_max, pb_max) = _patient_tables(scanner, media, dev, max_path_cm, dens, coeffs)
    table_in = log_table.view(1, 1, *log_table.shape).to(torch.float32)

    # projective beam coordinates: point = S + s (c + u e1 + w ez), s = depth along the central ray
    s_ax = torch.linspace(s_lo, s_hi, n_s, dtype=torch.float64, device=dev)
    u_ax = torch.linspace(-tan_g, tan_g, n_u, dtype=torch.float64, device=dev)
    w_ax = torch.linspace(-w_max, w_max, n_w, dtype=torch.float64, device=dev)
    ww, uu, ss = torch.meshgrid(w_ax, u_ax, s_ax, indexing="ij")  # (n_w, n_u, n_s)
    # in the gantry frame of angle a: x = sin(a) (d - s) + cos(a) s u, y = -cos(a) (d - s) +
    # sin(a) s u, z = z_k + s w; the angle-free parts once, in float32 (grid_sample's precision)
    back = (d - ss).to(torch.float32)
    across = (ss * uu).to(torch.float32)
    along_z = (ss * ww).to(torch.float32)
    # ray element (g/cm2 per g/cm3 of basis) of each sample: |direction| ds in cm
    step_cm = (torch.sqrt(1.0 + uu * uu + ww * ww) * (ds / _MM_PER_CM)).to(torch.float32)
    # a frame of zeros (air) around the volume in x and y, then "border" sampling: outside the
    # grid the patient is air in-plane and continues like its first/last slice in z
    basis_vol = F.pad(basis_vol, (1, 1, 1, 1, 0, 0))
    # grid_sample's normalised coordinates: 2 (p - lo) / span - 1 per axis (x, y, z)
    lo_xyz = (x0 - sx, y0 - sy, z0)
    k_xyz = tuple(2.0 / v for v in ((nx + 1) * sx, (ny + 1) * sy, max((nz - 1) * sz, 1e-9)))
    g = torch.empty((1, n_w, n_u, n_s, 3), dtype=torch.float32, device=dev)

    out = torch.zeros(grid.shape, dtype=torch.float64, device=dev)
    for k in tqdm(range(len(positions)), desc="kerma (patient)", disable=not _progress_enabled(progress)):
        a, z_k, mas = float(positions.angle_rad[k]), float(positions.z_mm[k]), float(positions.mas[k])
        if mas <= 0:
            continue
        xp, yp, depth, gamma, in_fan, hw = _geometry(scanner, grid, a)
        sl = _slices_in_beam(grid, z_k, float(hw.max()))
        if sl.stop <= sl.start:
            continue
        overlap = _z_overlap(grid, z_k, hw, sl) * in_fan.unsqueeze(0)
        if not bool((overlap > 0).any()):
            continue
        ca, sa = math.cos(a), math.sin(a)
        # sample the basis densities on the fan grid and integrate along each ray
        kx, ky, kz = k_xyz
        torch.mul(back, sa * kx, out=g[0, ..., 0]).add_(across, alpha=ca * kx).add_(-lo_xyz[0] * kx - 1.0)
        torch.mul(back, -ca * ky, out=g[0, ..., 1]).add_(across, alpha=sa * ky).add_(-lo_xyz[1] * ky - 1.0)
        torch.mul(along_z, kz, out=g[0, ..., 2]).add_((z_k - lo_xyz[2]) * kz - 1.0)
        f = F.grid_sample(basis_vol, g, mode="bilinear", padding_mode="border",
                          align_corners=True)[0]  # (2, n_w, n_u, n_s) g/cm3
        f.mul_(step_cm.unsqueeze(0))
        cum = torch.cumsum(f, dim=-1).sub_(0.5 * f).sub_(0.5 * f[..., :1])  # trapezoid from s_lo, g/cm2
        # look up every voxel of the slab in the fan grid
        zp = grid.z[sl].view(-1, 1, 1) - z_k
        dep = depth.unsqueeze(0).expand_as(overlap)
        u_v = (xp / torch.clamp(depth, min=1e-6)).unsqueeze(0).expand_as(overlap)
        w_v = zp / torch.clamp(dep, min=1e-6)
        q = torch.stack([
            (dep - s_lo) / (s_hi - s_lo) * 2 - 1,
            u_v / tan_g,
            w_v / w_max,
        ], dim=-1).to(torch.float32)  # (nz_s, ny, nx, 3) as (s, u, w) -> (W, H, D)
        p_basis = F.grid_sample(cum.unsqueeze(0), q.unsqueeze(0), mode="bilinear",
                                padding_mode="border", align_corners=True)[0].to(torch.float64)  # (2, nz_s, ny, nx)
        tg = torch.stack([
            gamma.abs().unsqueeze(0).expand_as(overlap) / g_max * 2 - 1,
            p_basis[0].clamp(0, pw_max) / pw_max * 2 - 1,
            p_basis[1].clamp(0, pb_max) / pb_max * 2 - 1,
        ], dim=-1).to(torch.float32)
        logk = F.grid_sample(table_in, tg.unsqueeze(0), mode="bilinear", padding_mode="border",
                             align_corners=True)[0, 0].to(torch.float64)  # (nz_s, ny, nx)
        rho2 = (xp * xp + depth * depth).unsqueeze(0) + zp * zp
        out[sl] += mas * torch.exp(logk) * (_REF_MM * _REF_MM) / rho2 * overlap
    return out


# ---------------------------------------------------------------------------------------------
def kerma_map(
    mode: str,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    origin_mm: Sequence[float],
    scanner: CTScanner,
    protocol: Protocol,
    labels: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    *,
    medium_of_label: Sequence[str] | None = None,
    density_set: str = "paper",
    grid_mm: float = DEFAULT_GRID_MM,
    cylinder_radius_mm: float = CYLINDER_RADIUS_MM,
    ray_step_mm: float | None = None,
    positions: SourcePositions | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Primary air-kerma map of a CT scan on a case grid (network input, paper 2.3.2).

    Parameters
    ----------
    mode : {"cylinder", "patient"}
        ``cylinder``: attenuation by a 32 cm water cylinder, single projection rotated and
        translated (the paper's way). ``patient``: ray-traced through the patient's media.
    shape : (nz, ny, nx)
    spacing_mm : (dz, dy, dx)
    origin_mm : (z0, y0, x0)
        Centre of voxel [0, 0, 0] in mm (patient coordinates, isocentre at x = y = 0).
    scanner : CTScanner
        Needs an absolute spectrum for absolute kerma.
    protocol : Protocol
    labels : ndarray of int, shape ``shape``, optional
        Label volume (required for ``patient``).
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ...
    medium_of_label : sequence of str, optional
        Medium per label id (default: ``ctdose/data/organs.csv``).
    density_set : {"paper", "icru46"}
    grid_mm : float
        Spacing of the single-projection map (cylinder mode).
    cylinder_radius_mm : float
        Radius of the water cylinder (cylinder mode), default 160 mm.
    ray_step_mm : float, optional
        Sampling step along rays (patient mode), default the smallest voxel spacing.
    positions : SourcePositions, optional
        Use these instead of ``protocol.source_positions(scanner)``.
    progress : bool, optional
        Progress bar over source positions (default: when stderr is a terminal).

    Returns
    -------
    ndarray of float32, shape ``shape``
        Primary air kerma of the whole scan in Gy per mAs of one rotation
        (``protocol.tube_current_ma * protocol.rotation_time_s``).

    Raises
    ------
    InputError
        Unknown mode, bad grid or ray step, missing or mismatched labels, labels without a medium.
    """
    if mode not in ("cylinder", "patient"):
        raise InputError(f"kerma_map: mode must be 'cylinder' or 'patient', got {mode!r}")
    if not (math.isfinite(grid_mm) and grid_mm > 0):
        raise InputError(f"kerma_map: grid_mm must be > 0, got {grid_mm}")
    if ray_step_mm is not None and (isinstance(ray_step_mm, bool) or not isinstance(ray_step_mm, numbers.Real)
                                    or not (math.isfinite(ray_step_mm) and ray_step_mm > 0)):
        raise InputError(f"kerma_map: ray_step_mm must be None or a number > 0 (mm), got {ray_step_mm!r}")
    dev = torch.device(device)
    grid = _Grid(shape, spacing_mm, origin_mm, dev)
    if positions is None:
        positions = protocol.source_positions(scanner)
    mas_rot = float(protocol.tube_current_ma) * float(protocol.rotation_time_s)
    with torch.no_grad():
        if mode == "cylinder":
            out = _cylinder_map(scanner, positions, grid, float(grid_mm), float(cylinder_radius_mm), progress)
        else:
            if labels is None:
                raise InputError("kerma_map: mode 'patient' needs the label volume (labels=...)")
            out = _patient_map(scanner, positions, grid, labels, medium_of_label, density_set, ray_step_mm, progress)
    return (out / mas_rot).to(torch.float32).cpu().numpy()


def case_kerma_map(cfg, case, mode: str, device: str | torch.device = "cpu", progress: bool | None = None) -> np.ndarray:
    """:func:`kerma_map` for a case of the store with the profile's scanner and protocol.

    Parameters
    ----------
    cfg : Profile
        Uses the ``scanner`` section and ``inputs.kerma_grid_mm``, ``inputs.kerma_ray_step_mm``,
        ``inputs.kerma_density_set`` (defaults 2 mm, smallest voxel spacing, ``paper``).
    case : xarray.Dataset
        A case from :class:`ctdose.store.CaseStore` (``labels`` and the attributes
        ``spacing_mm``, ``origin_mm``, ``roi_z_mm``; without ``roi_z_mm`` the whole z extent;
        a clinical case's tube-current record is followed with ``scanner.tube_current_modulation: ct``,
        and the case's modelled angular modulation with ``scanner.angular_modulation: model``).
    mode : {"cylinder", "patient"}
    device : str or torch.device

    Returns
    -------
    ndarray of float32 (z, y, x)
        Air kerma in Gy per mAs of one rotation.
    """
    from .mc import geometry_from_case
    from .scanner import angular_modulation_settings, case_angular_modulation, protocol_for_case, scanner_from_profile
    from .tube_current import TubeCurrentProfile

    attrs = dict(case.attrs)
    cid = attrs.get("case_id", "?")
    try:
        spacing = tuple(float(v) for v in attrs["spacing_mm"])
        origin = tuple(float(v) for v in attrs["origin_mm"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"case {cid}: attributes spacing_mm and origin_mm are required") from None
    if "labels" not in case:
        raise InputError(f"case {cid}: no 'labels' variable")
    shape = tuple(int(n) for n in case["labels"].shape)
    roi = attrs.get("roi_z_mm")
    if roi is None:
        roi = (origin[0], origin[0] + spacing[0] * (shape[0] - 1))
    labels = np.asarray(case["labels"].values) if mode == "patient" else None
    scanner = scanner_from_profile(cfg)
    protocol = protocol_for_case(cfg, roi, TubeCurrentProfile.from_attrs(attrs))
    positions = protocol.source_positions(scanner)
    modelled = angular_modulation_settings(cfg) is not None
    angular = case_angular_modulation(cfg, geometry_from_case(case)) if modelled else None
    return kerma_map(
        mode, shape, spacing, origin, scanner, protocol,
        labels=labels, device=device,
        **kerma_settings(cfg),
        positions=positions if angular is None else angular.apply(positions),
        progress=progress,
    )


def kerma_settings(cfg: Mapping[str, Any]) -> dict:
    """The profile's ``inputs.kerma_density_set`` (null: ``paper``), ``kerma_grid_mm`` (null:
    :data:`DEFAULT_GRID_MM`) and ``kerma_ray_step_mm`` (null: the smallest voxel spacing) as
    :func:`kerma_map`'s ``density_set``, ``grid_mm`` and ``ray_step_mm``; numbers written as
    text are read.

    Raises
    ------
    ConfigError
        A density set that is not one of :data:`ctdose.materials.DENSITY_SETS`, or a length
        that is not a number > 0; the message names the profile and the key.
    """
    from ..materials import DENSITY_SETS

    inputs = cfg.get("inputs", {}) or {}
    where = f"profile {cfg['name']!r}: inputs." if cfg.get("name") else "inputs."
    lengths = {}
    for key in ("kerma_grid_mm", "kerma_ray_step_mm"):
        value = number_from_text(inputs.get(key))
        real = None if value is None else as_real(value)
        if value is not None and (real is None or real <= 0):
            raise ConfigError(f"{where}{key} must be a number > 0 (mm) or null, got {inputs.get(key)!r}")
        lengths[key] = real
    density_set = inputs.get("kerma_density_set") or "paper"
    if density_set not in DENSITY_SETS:
        raise ConfigError(f"{where}kerma_density_set must be one of {', '.join(DENSITY_SETS)}, got {density_set!r}")
    return dict(density_set=str(density_set), grid_mm=lengths["kerma_grid_mm"] or DEFAULT_GRID_MM,
                ray_step_mm=lengths["kerma_ray_step_mm"])
