"""Photon interaction samplers for the Monte Carlo engine (vectorised, PyTorch).

Every sampler works on 1-D tensors of photons at once and runs unchanged on CPU and CUDA.
Randomness comes only from an explicit :class:`torch.Generator`, so a seed fixes the result.

Physics (photon energies 1-150 keV):

* **Incoherent scattering**: Klein-Nishina sampled with the Butcher & Messel composition-
  rejection method (Nucl. Phys. 20 (1960) 15; as in EGS4/Geant4), followed by a rejection with
  the incoherent scattering function S(x)/S(inf) of the medium (the "KN x S" model of EGSnrc
  without Doppler broadening). The electron's kinetic energy E - E' is deposited locally.
* **Coherent (Rayleigh) scattering**: the form-factor method: x^2 is sampled from the medium's
  F^2(x) by an inverse cumulative table (restricted to x <= x_max(E)), then accepted with the
  Thomson factor (1 + cos^2 theta) / 2. x = sin(theta/2) / lambda in 1/Angstrom.
* **Photoelectric absorption**: the photon is absorbed and its energy deposited locally, less
  that of a fluorescence line of 10 keV or more, which leaves as a photon
  (:mod:`ctdose.physics.fluorescence`: the K lines of iodine, barium, tin, tungsten, lead).
  Weaker lines are deposited locally too. For soft tissue, water and PMMA (Z <= 8
  dominated; K-fluorescence yields below 1 %, energies below 3.7 keV, ranges below 0.1 mm)
  this is exact to well below 0.1 % of the dose; in bone a small part (Ca K, 3.7 keV, mean
  free path 0.1 mm) would travel a little further, still far below a voxel. The samplers in
  this module are those of the scattering; the fluorescence line is chosen in the
  interaction kernel (:func:`ctdose.physics.kernels.fluorescence_line`).

Functions here take per-medium lookup tables built once by :func:`build_scatter_tables`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .xsection import ELECTRON_REST_ENERGY_KEV, HC_KEV_ANGSTROM

__all__ = [
    "ELECTRON_REST_KEV",
    "HC_KEV_ANGSTROM",
    "ScatterTables",
    "build_scatter_tables",
    "incoherent_transfer_fraction",
    "incoherent_transfer_fractions",
    "klein_nishina_pdf",
    "kn_proposal",
    "rotate_direction",
    "sample_coherent",
    "sample_incoherent",
    "sample_klein_nishina",
]

#: m_e c^2 in keV and h c in keV Angstrom (lambda[A] = HC / E[keV]): CODATA via
#: :mod:`scipy.constants`, the same values the cross sections use
#: (:mod:`ctdose.physics.xsection`), so the samplers' momentum transfer and Klein-Nishina
#: kinematics cannot drift from the tables'.
ELECTRON_REST_KEV = ELECTRON_REST_ENERGY_KEV
#: Iterations after which a rejection loop accepts its last proposal (never reached in practice:
#: acceptance rates are above 30 % at every energy and medium of interest).
_MAX_REJECTION_ROUNDS = 200
#: Proposals per photon in the rejection rounds after the first (few photons left: one round
#: with several proposals each costs less than many rounds of one).
_WIDE_PROPOSALS = 8
#: Proposals per rejection round below which a round gives each photon several proposals
#: (larger rounds are bandwidth-bound: one proposal each wastes least work).
_WIDE_ROUND_SIZE = 4096


def _round_width(m: int) -> int:
    """Proposals per photon in a rejection round after the first with ``m`` photons left."""
    return max(1, min(_WIDE_PROPOSALS, _WIDE_ROUND_SIZE // max(m, 1)))


@dataclass
class ScatterTables:
    """Per-medium tables for the angular samplers (torch tensors on one device).

    Attributes
    ----------
    coh_x2_inv : Tensor (n_media, n_u)
        x^2 (1/A^2) at equally spaced values of the normalised cumulative of F^2 in x^2.
    coh_frac_energy_kev : Tensor (n_e,)
        Energy grid of ``coh_frac``.
    coh_frac : Tensor (n_media, n_e)
        Cumulative of F^2 up to x_max(E)^2 divided by the total (at the grid's top energy).
    sf_x_step : float
        Step of the uniform x grid of ``sf_ratio`` (1/A).
    sf_ratio : Tensor (n_media, n_x)
        S(x) / S(inf) of the medium on the uniform x grid.
    """

    coh_x2_inv: torch.Tensor
    coh_frac_energy_kev: torch.Tensor
    coh_frac: torch.Tensor
    sf_x_step: float
    sf_ratio: torch.Tensor

    @property
    def n_u(self) -> int:
        return int(self.coh_x2_inv.shape[1])


def _x_max(energy_kev):
    """Largest momentum transfer variable x = sin(theta/2)/lambda (theta = pi), 1/A."""
    return energy_kev / HC_KEV_ANGSTROM


def build_scatter_tables(
    media: Sequence,
    max_energy_kev: float,
    device: str | torch.device = "cpu",
    n_u: int = 4096,
    n_x: int = 4096,
) -> ScatterTables:
    """Build the coherent and incoherent angular sampling tables of ``media``.

    Parameters
    ----------
    media : sequence of ctdose.materials.Medium
    max_energy_kev : float
        Highest photon energy to sample (sets x_max of the tables).
    device : str or torch.device
    n_u, n_x : int
        Sizes of the inverse-cumulative table and of the S(x) table.

    Returns
    -------
    ScatterTables
    """
    from .xsection import form_factor_sq, incoherent_sf

    x_top = _x_max(float(max_energy_kev)) * 1.0001
    # fine, strongly non-uniform x grid (F^2 falls by orders of magnitude below x = 2 1/A)
    x_fine = np.concatenate([[0.0], np.geomspace(1e-4, x_top, 6000)])
    x2 = x_fine**2
    u = np.linspace(0.0, 1.0, n_u)
    e_grid = np.linspace(0.0, float(max_energy_kev), 1024)
    inv_rows, frac_rows, sf_rows = [], [], []
    x_uniform = np.linspace(0.0, x_top, n_x)
    for medium in media:
        f2 = np.asarray(form_factor_sq(medium, x_fine), dtype=float)
        # cumulative of F^2 in the variable x^2 (trapezoid)
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (f2[1:] + f2[:-1]) * np.diff(x2))])
        total = cum[-1]
        cdf = cum / total
        # strictly increasing for the inversion
        cdf_u, keep = np.unique(cdf, return_index=True)
        inv_rows.append(np.interp(u, cdf_u, x2[keep]))
        frac_rows.append(np.interp(_x_max(e_grid) ** 2, x2, cdf))
        s = np.asarray(incoherent_sf(medium, x_uniform), dtype=float)
        s_inf = float(np.max(s))
        sf_rows.append(s / s_inf if s_inf > 0 else np.ones_like(s))
    f32 = dict(dtype=torch.float32, device=device)
    return ScatterTables(
        coh_x2_inv=torch.tensor(np.array(inv_rows), **f32),
        coh_frac_energy_kev=torch.tensor(e_grid, **f32),
        coh_frac=torch.tensor(np.array(frac_rows), **f32),
        sf_x_step=float(x_uniform[1] - x_uniform[0]),
        sf_ratio=torch.tensor(np.array(sf_rows), **f32),
    )


def _rand(n: int, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=like.device, dtype=like.dtype)


def kn_proposal(
    k: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Butcher-Messel proposal from two uniform numbers (pure: no in-place operations).

    Parameters
    ----------
    k : Tensor
        Photon energy in units of the electron rest energy (E / m_e c^2).
    r1, r2 : Tensor
        Uniform numbers in [0, 1): the branch and the energy ratio within it. ``r2=None``:
        both from ``r1`` alone (given the branch, where ``r1`` falls inside the branch's share
        of [0, 1) is itself uniform and independent of the branch: exact, one number fewer).

    Returns
    -------
    eps, g, one_minus_cos : Tensor
        Proposed E'/E, its Klein-Nishina acceptance factor in [0, 1] and 1 - cos theta.
    """
    two_k = 2.0 * k
    eps0 = 1.0 / (1.0 + two_k)
    a1 = torch.log1p(two_k)  # -ln(eps0)
    eps0sq = eps0 * eps0
    one_minus_eps0sq = 1.0 - eps0sq  # 2 a2
    # branch 1 (1/eps part) with probability a1 / (a1 + a2)
    t1 = r1 * (a1 + 0.5 * one_minus_eps0sq)
    branch1 = t1 < a1
    if r2 is None:  # r2 = t1 / a1 in branch 1, (t1 - a1) / a2 in branch 2
        eps = torch.where(branch1, torch.exp(-t1),
                          torch.sqrt(eps0sq + 2.0 * (t1 - a1).clamp(min=0.0)).clamp(max=1.0))
    else:
        eps = torch.where(branch1, torch.exp(-a1 * r2), torch.sqrt(eps0sq + one_minus_eps0sq * r2))
    t = (1.0 - eps) / (k * eps)  # 1 - cos theta
    sin2 = (t * (2.0 - t)).clamp(min=0.0)
    g = 1.0 - eps * sin2 / (1.0 + eps * eps)
    return eps, g, t


def _kn_propose(k: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Butcher-Messel proposal: (epsilon = E'/E, acceptance factor g in [0, 1], 1 - cos theta)."""
    n = k.numel()
    r12 = _rand(2 * n, k, gen)
    return kn_proposal(k, r12[:n], r12[n:])


def sample_klein_nishina(
    energy_kev: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample free-electron Compton scattering (Klein-Nishina).

    Parameters
    ----------
    energy_kev : Tensor (n,)
        Incident photon energies in keV.
    gen : torch.Generator

    Returns
    -------
    eps, cos_theta : Tensor (n,)
        Energy ratio E'/E and cosine of the scattering angle (Compton relation
        1/E' - 1/E = (1 - cos theta)/(m c^2)).
    """
    return _sample_incoherent_impl(energy_kev, None, None, gen)


def _first_accepted(accept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise first accepted column of a (m, k) bool matrix: (column, row has one)."""
    has = accept.any(dim=1)
    col = torch.argmax(accept.to(torch.int32), dim=1)
    return col, has


def _sample_incoherent_impl(energy_kev, medium_idx, tables, gen):
    k_all = energy_kev / ELECTRON_REST_KEV
    # first round: one proposal per photon, on the whole arrays (no gathers)
    eps, g, one_minus_cos = _kn_propose(k_all, gen)
    if tables is not None:
        x = (energy_kev * (1.0 / HC_KEV_ANGSTROM)).mul_((0.5 * one_minus_cos).clamp_(0.0, 1.0).sqrt_())
        g = g.mul_(_lookup_sf(tables, medium_idx, x))
    rejected = _rand(k_all.numel(), k_all, gen) >= g
    todo = rejected.nonzero().squeeze(1)
    # later rounds (few photons, dispatch-bound): several proposals per photon, the first
    # accepted one is taken
    for round_ in range(1, _MAX_REJECTION_ROUNDS):
        m = todo.numel()
        if m == 0:
            break
        width = _round_width(m)
        kk = k_all[todo].repeat_interleave(width)
        e_try, g, one_minus_cos = _kn_propose(kk, gen)
        if tables is not None:
            e_rep = energy_kev[todo].repeat_interleave(width)
            m_rep = medium_idx[todo].repeat_interleave(width)
            x = (e_rep * (1.0 / HC_KEV_ANGSTROM)).mul_((0.5 * one_minus_cos).clamp_(0.0, 1.0).sqrt_())
            g = g.mul_(_lookup_sf(tables, m_rep, x))
        accept = (_rand(m * width, kk, gen) < g).view(m, width)
        if round_ == _MAX_REJECTION_ROUNDS - 1:
            accept[:, 0] = True
        col, has = _first_accepted(accept)
        chosen = e_try.view(m, width).gather(1, col[:, None]).squeeze(1)
        eps[todo[has]] = chosen[has]
        if bool(has.all()):
            break
        todo = todo[~has]
    k = k_all
    cos_theta = 1.0 - (1.0 - eps) / (k * eps)
    return eps, cos_theta.clamp(-1.0, 1.0)


def _lookup_sf(tables: ScatterTables, medium_idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of S(x)/S(inf) per photon's medium."""
    n_x = tables.sf_ratio.shape[1]
    p = (x / tables.sf_x_step).clamp(0.0, n_x - 1.001)
    j = p.to(torch.int64)
    t = p - j
    flat = tables.sf_ratio.reshape(-1)
    base = medium_idx.to(torch.int64) * n_x + j
    lo = flat.index_select(0, base)
    return torch.addcmul(lo, t, flat.index_select(0, base + 1) - lo)


def sample_incoherent(
    energy_kev: torch.Tensor,
    medium_idx: torch.Tensor,
    tables: ScatterTables,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample incoherent scattering: Klein-Nishina times S(x)/S(inf) of the medium.

    Parameters
    ----------
    energy_kev : Tensor (n,)
    medium_idx : Tensor (n,) integer
        Index of each photon's medium in the tables.
    tables : ScatterTables
    gen : torch.Generator

    Returns
    -------
    eps, cos_theta : Tensor (n,)
        E'/E and the cosine of the scattering angle.
    """
    return _sample_incoherent_impl(energy_kev, medium_idx, tables, gen)


def sample_coherent(
    energy_kev: torch.Tensor,
    medium_idx: torch.Tensor,
    tables: ScatterTables,
    gen: torch.Generator,
) -> torch.Tensor:
    """Sample the coherent (Rayleigh) scattering angle with atomic form factors.

    x^2 is drawn from F^2 restricted to [0, x_max(E)^2] by the inverse cumulative table and
    accepted with (1 + cos^2 theta)/2, cos theta = 1 - 2 x^2 / x_max^2.

    Returns
    -------
    cos_theta : Tensor (n,)
    """
    n = energy_kev.numel()
    cos_out = torch.empty_like(energy_kev)
    todo = torch.arange(n, device=energy_kev.device)
    n_u = tables.n_u
    inv = tables.coh_x2_inv.reshape(-1)
    frac_flat = tables.coh_frac.reshape(-1)
    n_e = tables.coh_frac.shape[1]
    e_step = float(tables.coh_frac_energy_kev[1] - tables.coh_frac_energy_kev[0])
    # cumulative fraction reachable at each photon's energy (linear in energy)
    pe = (energy_kev / e_step).clamp(0.0, n_e - 1.001)
    je = pe.to(torch.int64)
    te = pe - je
    mbase = medium_idx.to(torch.int64)
    fb = mbase * n_e + je
    frac = frac_flat[fb] * (1.0 - te) + frac_flat[fb + 1] * te
    xmax2 = (energy_kev / HC_KEV_ANGSTROM) ** 2
    for round_ in range(_MAX_REJECTION_ROUNDS):
        m = todo.numel()
        width = 1 if round_ == 0 else _round_width(m)
        e_frac, e_m, e_xmax2 = frac[todo], mbase[todo], xmax2[todo]
        if width > 1:
            e_frac = e_frac.repeat_interleave(width)
            e_m = e_m.repeat_interleave(width)
            e_xmax2 = e_xmax2.repeat_interleave(width)
        uu = _rand(m * width, energy_kev, gen) * e_frac * (n_u - 1)
        uu = uu.clamp(0.0, n_u - 1.001)
        j = uu.to(torch.int64)
        t = uu - j
        b = e_m * n_u + j
        lo = inv.index_select(0, b)
        x2 = torch.addcmul(lo, t, inv.index_select(0, b + 1) - lo)
        c = (1.0 - 2.0 * x2 / e_xmax2).clamp(-1.0, 1.0)
        accept = (_rand(m * width, energy_kev, gen) * 2.0 < 1.0 + c * c).view(m, width)
        if round_ == _MAX_REJECTION_ROUNDS - 1:
            accept[:, 0] = True
        col, has = _first_accepted(accept)
        chosen = c.view(m, width).gather(1, col[:, None]).squeeze(1)
        cos_out[todo[has]] = chosen[has]
        if bool(has.all()):
            break
        todo = todo[~has]
    return cos_out


def rotate_direction(
    u: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    cos_theta: torch.Tensor,
    phi: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate unit directions (u, v, w) by polar angle theta and azimuth phi.

    The standard formula (e.g. PENELOPE manual, eq. 1.131), with the |w| -> 1 limit
    handled separately. Returns new unit vectors.
    """
    sin_t = torch.sqrt((1.0 - cos_theta * cos_theta).clamp_min(0.0))
    cp, sp = torch.cos(phi), torch.sin(phi)
    rho2 = (1.0 - w * w).clamp_min(0.0)
    polar = rho2 < 1e-10
    rho = torch.sqrt(rho2).clamp_min(1e-30)
    a = sin_t / rho
    un = u * cos_theta + a * (u * w * cp - v * sp)
    vn = v * cos_theta + a * (v * w * cp + u * sp)
    wn = w * cos_theta - rho * sin_t * cp
    # along +-z: the frame is arbitrary
    sgn = torch.sign(w)
    un = torch.where(polar, sin_t * cp, un)
    vn = torch.where(polar, sin_t * sp, vn)
    wn = torch.where(polar, sgn * cos_theta, wn)
    norm = torch.rsqrt(un * un + vn * vn + wn * wn)
    return un * norm, vn * norm, wn * norm


def klein_nishina_pdf(energy_kev: float, cos_theta: np.ndarray) -> np.ndarray:
    """Klein-Nishina angular density p(cos theta), normalised on [-1, 1] (numpy, for tests)."""
    k = energy_kev / ELECTRON_REST_KEV
    c = np.asarray(cos_theta, dtype=float)
    r = 1.0 / (1.0 + k * (1.0 - c))
    dens = r * r * (r + 1.0 / r - (1.0 - c * c))
    grid = np.linspace(-1.0, 1.0, 20001)
    rg = 1.0 / (1.0 + k * (1.0 - grid))
    norm = np.trapezoid(rg * rg * (rg + 1.0 / rg - (1.0 - grid**2)), grid)
    return dens / norm


def incoherent_transfer_fraction(medium, energy_kev: np.ndarray, n_cos: int = 2001) -> np.ndarray:
    """Mean fraction of the photon energy given to the electron in incoherent scattering.

    <1 - E'/E> under the same KN x S(x) model that :func:`sample_incoherent` samples, by
    numerical integration over cos theta. Used for the expected-value (kerma) estimator, so
    that it scores exactly the mean of what the analogue simulation deposits.

    Parameters
    ----------
    medium : ctdose.materials.Medium
    energy_kev : ndarray (n,)

    Returns
    -------
    ndarray (n,)
    """
    return incoherent_transfer_fractions([medium], energy_kev, n_cos)[0]


def incoherent_transfer_fractions(media: Sequence, energy_kev: np.ndarray, n_cos: int = 2001) -> np.ndarray:
    r""":func:`incoherent_transfer_fraction` of several media at once, shape (n_media, n).

    Both integrals over cos theta are linear in the scattering function, and a medium's is
    the mixture :math:`\sum_i (w_i/A_i) S_i(x)` of its elements'
    (:func:`ctdose.physics.xsection.incoherent_sf`): the Klein-Nishina kernel is computed once
    and the integrals once per element, then mixed per medium (a grid of many media, such as
    a CT converted to tens of tissues, costs little more than one).
    """
    from .xsection import element_incoherent_sf, mixture_weights_mol_g

    weights = [mixture_weights_mol_g(m) for m in media]
    e = np.asarray(energy_kev, dtype=float)
    c = np.linspace(-1.0, 1.0, n_cos)
    k = (e / ELECTRON_REST_KEV)[:, None]
    r = 1.0 / (1.0 + k * (1.0 - c[None, :]))
    kn = r * r * (r + 1.0 / r - (1.0 - c[None, :] ** 2))
    x = (e[:, None] / HC_KEV_ANGSTROM) * np.sqrt((1.0 - c[None, :]) / 2.0)
    x_grid = np.linspace(0.0, float(x.max()) * 1.0001 + 1e-9, 4096)
    moments = {}
    for z in sorted({z for w in weights for z in w}):
        dens = kn * np.interp(x, x_grid, element_incoherent_sf(z, x_grid))
        moments[z] = (np.trapezoid(dens * (1.0 - r), c, axis=1), np.trapezoid(dens, c, axis=1))
    out = np.zeros((len(weights), e.size))
    for i, w in enumerate(weights):
        num = sum(coef * moments[z][0] for z, coef in w.items())
        den = sum(coef * moments[z][1] for z, coef in w.items())
        out[i] = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return out
