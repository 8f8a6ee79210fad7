"""Photon sources for the Monte Carlo engine: a generic collimated point source and a CT scanner.

Both sample :class:`~ctdose.physics.transport.PhotonState` batches in torch from an explicit
generator (deterministic for a seed) and know their absolute normalisation:

* a point source with an *absolute* spectrum (photons per mm^2 per mAs at 1 m, as
  :mod:`ctdose.physics.spectrum` gives them) emits
  ``N = Phi_1m * (1000 mm)^2 * Omega`` photons per mAs into its collimated solid angle
  ``Omega``; dose per mAs = dose per simulated photon x N;
* the CT source emits that many per mAs at every source position of the protocol; positions
  are sampled in proportion to their tube load (mAs). Its result is expressed per mAs of one
  rotation (tube current x rotation time, the convention of CTDIvol per mAs): the whole scan's
  dose at tube current I and rotation time t is ``dose_gy_per_mas * I * t``.

Directions are isotropic within the collimated field (uniform per solid angle): for the
rectangular ("fan") field the tangent-plane point (a, b) is uniform in the rectangle and kept
with probability (1 + a^2 + b^2)^(-3/2) (solid angle per unit tangent-plane area). Given
uniform numbers ``u`` (``sample(n, gen, u)``, the quasi-random sampling of
:mod:`ctdose.physics.quasi_random`, which ``simulate`` uses by default) the same distributions
come by inversion instead: every coordinate a monotone function of one number (the field's
marginal by Newton's method on its closed-form solid angle, the energy by the spectrum's
cumulative), so that evenly spread numbers give evenly spread photons.
The bowtie filter is applied as a statistical weight exp(-mu_Al(E) t(gamma)) that depends on
the photon's in-plane fan angle gamma = atan(a).

Scanner convention (B1's :mod:`ctdose.physics.scanner`): the source at gantry angle ``a``
sits at ``(x, y) = (D sin a, -D cos a)`` (a = 0 anterior) and points at the isocentre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from .interactions import rotate_direction
from .spectrum import bin_middle_and_width_kev
from .transport import PhotonState
from .xsection import ENERGY_MIN_KEV

__all__ = ["CTSource", "PointSource", "rectangle_solid_angle_sr", "tangent_rectangle_solid_angle_sr"]

#: Reference distance of spectrum fluences, mm.
_REFERENCE_DISTANCE_MM = 1000.0
#: Fan-angle samples of the bowtie weight table.
_N_BOWTIE_ANGLES = 513
#: Largest tangent of a rectangular field's edge (|a|, |b|; about 89.94 degrees from the axis):
#: beyond it a direction ``axis + a e1 + b e2`` loses the axis in float32 and its squares head
#: for float32's overflow.
_MAX_FIELD_TAN = 1.0e3
#: Smallest share of the tangent-plane rectangle's points that the solid-angle sampler may keep
#: (the field's solid angle over the rectangle's area, times the density's peak): a field of
#: nearly 90 degrees keeps almost none, and the rejection loop would run for ever. A square
#: field of half-angles up to about 85 degrees keeps more.
_MIN_FIELD_ACCEPTANCE = 0.01
#: Rounds of the rejection loop after which it gives up: a field with the smallest accepted
#: share needs about a hundred for 1e9 photons.
_MAX_REJECTION_ROUNDS = 1000


def rectangle_solid_angle_sr(half_angle_1_rad: float, half_angle_2_rad: float) -> float:
    """Solid angle of a rectangular pyramid with half-angles a1, a2: 4 asin(sin a1 sin a2)."""
    return 4.0 * math.asin(math.sin(half_angle_1_rad) * math.sin(half_angle_2_rad))


def _corner_solid_angle_sr(a: float, b: float) -> float:
    """Signed solid angle of the tangent-plane rectangle [0, a] x [0, b] at unit distance:
    atan(a b / sqrt(1 + a^2 + b^2))."""
    return math.atan(a * b / math.sqrt(1.0 + a * a + b * b))


def tangent_rectangle_solid_angle_sr(a_bounds: Sequence[float], b_bounds: Sequence[float]) -> float:
    """Solid angle (sr) of the rectangle ``a_lo <= a <= a_hi``, ``b_lo <= b <= b_hi`` of a
    tangent plane at unit distance from the apex (a, b: tangents of the angles from the axis).

    By inclusion-exclusion of the corner rectangles [0, a] x [0, b]; for the symmetric field
    ``a = +-tan a1``, ``b = +-tan a2`` it equals ``4 asin(sin a1 sin a2)``.

    Examples
    --------
    >>> round(tangent_rectangle_solid_angle_sr((-1.0, 1.0), (-1.0, 1.0)), 6)  # cube face: 4 pi / 6
    2.094395
    """
    (a0, a1), (b0, b1) = (float(v) for v in a_bounds), (float(v) for v in b_bounds)
    return (_corner_solid_angle_sr(a1, b1) - _corner_solid_angle_sr(a0, b1) - _corner_solid_angle_sr(a1, b0)
            + _corner_solid_angle_sr(a0, b0))


def _spectrum_arrays(energy_kev, spectrum):
    """(bin centres, middles of the bins' edges, bin widths (keV), probabilities, photons per mm^2
    per mAs at 1 m or None).

    The bins are those of :func:`ctdose.physics.spectrum.bin_middle_and_width_kev`: edges
    halfway between neighbouring centres, so that uneven centres give bins that do not overlap;
    a photon's energy is uniform between its bin's edges.
    """
    if spectrum is not None:
        if energy_kev is not None:
            raise InputError(f"source: give energy_kev (monoenergetic) or a spectrum, not both "
                             f"(got energy_kev={energy_kev!r} and a spectrum)")
        e = np.asarray(spectrum.energy_kev, dtype=np.float64)
        f = np.asarray(spectrum.fluence_per_mas_per_mm2_at_1m, dtype=np.float64)
        if e.ndim != 1 or e.size == 0 or f.shape != e.shape:
            raise InputError("source spectrum: energies and weights must be 1-D arrays of equal, non-zero length")
        if not (np.all(np.isfinite(e)) and np.all(np.isfinite(f))):
            raise InputError("source spectrum: NaN or infinite values")
        if np.any(f < 0) or not np.any(f > 0):
            raise InputError("source spectrum: weights must be >= 0 and not all zero")
        with np.errstate(over="ignore"):
            total = f.sum()
        if not np.isfinite(total):
            raise InputError(f"source spectrum: the weights' sum overflows (sum of {f.size} values up to {f.max():g}); "
                             "scale them down")
        # as Spectrum requires (for a spectrum object that is not a Spectrum)
        if e.min() < ENERGY_MIN_KEV:
            raise InputError(f"source spectrum: energies must be >= {ENERGY_MIN_KEV:g} keV, got {e.min():g} keV")
        if np.any(np.diff(e) <= 0):
            raise InputError("source spectrum: energies must be strictly increasing")
        middle, width = bin_middle_and_width_kev(e, f, "source spectrum")
        absolute = bool(getattr(spectrum, "absolute", True))
        return e, middle, width, f / f.sum(), (float(f.sum()) if absolute else None)
    if energy_kev is None:
        raise InputError("source: give energy_kev (monoenergetic) or a spectrum")
    e = np.atleast_1d(np.asarray(energy_kev, dtype=np.float64))
    if e.size != 1 or not np.isfinite(e[0]) or e[0] <= 0:
        raise InputError(f"source energy_kev must be one positive finite number, got {energy_kev!r}")
    if e[0] < ENERGY_MIN_KEV:  # as for a spectrum
        raise InputError(
            f"source energy_kev must be >= {ENERGY_MIN_KEV:g} keV (where the cross-section tables start), "
            f"got {energy_kev!r}"
        )
    return e, e, np.zeros(1), np.ones(1), None


def _vector3(vec, what: str) -> np.ndarray:
    """``vec`` as a float64 3-vector, or an InputError naming ``what``."""
    try:
        v = np.asarray(vec, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what}: must be three numbers (x, y, z), got {vec!r}") from None
    if v.size != 3:
        raise InputError(f"{what}: must be three numbers (x, y, z), got {v.size} ({vec!r})")
    return v.reshape(3)


def _unit(vec, what: str) -> np.ndarray:
    v = _vector3(vec, what)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0:
        raise InputError(f"{what}: must be a finite non-zero 3-vector, got {vec!r}")
    return v / n


def _alias_table(probs) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table (Vose's construction) of a discrete distribution.

    Returns (keep probability, alias index) per bin: bin j is taken when a uniform number in
    [0, 1) is below ``keep[j]``, otherwise ``alias[j]``; O(1) per sample.
    """
    p = np.asarray(probs, dtype=np.float64)
    n = p.size
    scaled = p / p.sum() * n
    keep = np.ones(n)
    alias = np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s_i, l_i = small.pop(), large.pop()
        keep[s_i] = scaled[s_i]
        alias[s_i] = l_i
        scaled[l_i] -= 1.0 - scaled[s_i]
        (small if scaled[l_i] < 1.0 else large).append(l_i)
    # what remains is 1 up to rounding
    return keep, alias


class _EnergySampler:
    """Bin by Walker's alias method, then uniform within the bin (continuous spectrum).

    ``centres`` are the middles of the bins' edges (keV; the spectrum's energies where they are
    uniformly spaced), ``widths`` the bins' widths (keV), ``probs`` their probabilities.
    """

    def __init__(self, centres, widths, probs, device):
        self.centres = torch.tensor(centres, dtype=torch.float32, device=device)
        self.widths = torch.tensor(widths, dtype=torch.float32, device=device)
        keep, alias = _alias_table(probs)
        self.keep = torch.tensor(keep, dtype=torch.float64, device=device)
        self.alias = torch.tensor(alias, dtype=torch.int64, device=device)
        self.n = len(centres)
        cdf = np.concatenate([[0.0], np.cumsum(np.asarray(probs, dtype=np.float64))])
        self.cdf = torch.tensor(cdf / cdf[-1], dtype=torch.float64, device=device)
        self.probs = self.cdf[1:] - self.cdf[:-1]

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.centres.device
        if self.n == 1:
            return self.centres.expand(n).clone(), torch.zeros(n, dtype=torch.int64, device=dev)
        r = torch.rand(n, generator=gen, device=dev, dtype=torch.float64).mul_(self.n)
        j = r.to(torch.int64).clamp_(max=self.n - 1)
        j = torch.where((r - j) < self.keep[j], j, self.alias[j])
        off = torch.rand(n, generator=gen, device=dev) - 0.5
        return self.centres[j] + off * self.widths[j], j

    def from_uniform(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (keV) and bins by inversion of the spectrum's CDF at ``u`` (n,) in [0, 1):
        the bin, then the position within it (uniform), both monotone in ``u``."""
        if self.n == 1:
            return self.centres.expand(u.numel()).clone(), torch.zeros(u.numel(), dtype=torch.int64, device=u.device)
        u = u.contiguous()
        j = (torch.searchsorted(self.cdf, u, right=True) - 1).clamp_(0, self.n - 1)
        off = ((u - self.cdf[j]) / self.probs[j].clamp(min=1e-300)).clamp_(0.0, 1.0) - 0.5
        return self.centres[j] + off.to(torch.float32) * self.widths[j], j


def _sample_rectangle(
    n: int, a_bounds: tuple[float, float], b_bounds: tuple[float, float], gen, device, per_solid_angle: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tangent-plane coordinates (a, b) of directions in the rectangle ``a_bounds`` x ``b_bounds``
    (symmetric about the axis, or off-axis).

    Uniform per solid angle (isotropic source; default), by rejection against the density's
    largest value in the rectangle (at its point nearest the axis), or uniform on the plane (a
    source behind a rectangular opening sampled by area, as some codes do).

    Raises
    ------
    InputError
        The rejection loop has not found ``n`` directions after ``_MAX_REJECTION_ROUNDS``
        rounds (a field too wide; :func:`_check_field` refuses those up front).
    """
    (a0, a1), (b0, b1) = a_bounds, b_bounds

    def uniform(lo, hi, m):  # centre + half-width: a symmetric field adds an exact 0
        return (torch.rand(m, generator=gen, device=device) * 2.0 - 1.0) * ((hi - lo) / 2) + (lo + hi) / 2

    if not per_solid_angle:
        a = uniform(a0, a1, n)
        return a, uniform(b0, b1, n)
    a_near, b_near = min(max(0.0, a0), a1), min(max(0.0, b0), b1)
    peak = (1.0 + a_near * a_near + b_near * b_near) ** 1.5  # 1 where the field holds the axis
    a_far, b_far = max(abs(a0), abs(a1)), max(abs(b0), abs(b1))
    acc_min = peak * (1.0 + a_far * a_far + b_far * b_far) ** -1.5
    out_a, out_b, got, rounds = [], [], 0, 0
    while got < n:
        if rounds == _MAX_REJECTION_ROUNDS:
            raise InputError(
                f"source field a in [{a0:g}, {a1:g}], b in [{b0:g}, {b1:g}] (tangents): only {got} of {n} directions "
                f"after {rounds} rounds of rejection sampling; the field is too wide to sample (narrow it)"
            )
        rounds += 1
        m = int((n - got) / max(acc_min, 0.05) * 1.05) + 16
        a = uniform(a0, a1, m)
        b = uniform(b0, b1, m)
        keep = torch.rand(m, generator=gen, device=device) < peak * (1.0 + a * a + b * b) ** -1.5
        a, b = a[keep], b[keep]
        out_a.append(a)
        out_b.append(b)
        got += int(a.numel())
    return torch.cat(out_a)[:n], torch.cat(out_b)[:n]


def _check_field(a_bounds: tuple[float, float], b_bounds: tuple[float, float], per_solid_angle: bool,
                 what: str) -> None:
    """Refuse a rectangular field the samplers cannot handle.

    Parameters
    ----------
    a_bounds, b_bounds : (lo, hi)
        The field's tangent-plane bounds (tangents of the angles from the axis, lo < hi).
    per_solid_angle : bool
        Directions uniform per solid angle (sampled by rejection) rather than over the plane.
    what : str
        The field as given, for the message.

    Raises
    ------
    InputError
        A bound beyond ``_MAX_FIELD_TAN`` in magnitude, or (per solid angle) a field of which
        the rejection sampler would keep less than ``_MIN_FIELD_ACCEPTANCE`` of its draws.
    """
    (a0, a1), (b0, b1) = a_bounds, b_bounds
    far = max(abs(a0), abs(a1), abs(b0), abs(b1))
    if not far <= _MAX_FIELD_TAN:
        raise InputError(
            f"{what}: the field reaches a tangent of {far:g} ({math.degrees(math.atan(far)):.4f} degrees from the "
            f"axis); at most {_MAX_FIELD_TAN:g} ({math.degrees(math.atan(_MAX_FIELD_TAN)):.2f} degrees) is supported"
        )
    if per_solid_angle:
        a_near, b_near = min(max(0.0, a0), a1), min(max(0.0, b0), b1)
        peak = (1.0 + a_near * a_near + b_near * b_near) ** 1.5
        kept = peak * tangent_rectangle_solid_angle_sr(a_bounds, b_bounds) / ((a1 - a0) * (b1 - b0))
        if kept < _MIN_FIELD_ACCEPTANCE:
            raise InputError(
                f"{what}: the field is too wide to sample per solid angle: its directions would be kept from only "
                f"{kept:.2g} of the tangent-plane draws (at least {_MIN_FIELD_ACCEPTANCE:g} needed; a square field "
                f"of half-angles up to about 85 degrees is fine); narrow the field"
            )


#: Newton steps of the field's marginal inversion: at most this many; it stops once the largest
#: step is below ``_NEWTON_TOLERANCE`` of the field's width (quadratic convergence from the
#: plane guess: 3-4 steps for a CT fan).
_MAX_NEWTON_STEPS = 30
_NEWTON_TOLERANCE = 1e-10


def _rectangle_from_uniforms(
    ua: torch.Tensor, ub: torch.Tensor, a_bounds: tuple[float, float], b_bounds: tuple[float, float],
    per_solid_angle: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tangent-plane coordinates (a, b) from uniform numbers by inversion (no rejection).

    The quasi-random counterpart of :func:`_sample_rectangle`: the same distribution, and a
    monotone map from ``(ua, ub)`` (float64, in [0, 1)) to ``(a, b)``, so that evenly spread
    numbers give evenly spread directions. Per solid angle the density is
    ``(1 + a^2 + b^2)^(-3/2)``: the marginal of ``a`` has the cumulative
    ``C(a, b1) - C(a, b0) - C(a0, b1) + C(a0, b0)`` with ``C(a, b) = atan(a b / sqrt(1 + a^2 +
    b^2))`` (solved for ``a`` by Newton's method); given ``a`` the cumulative of ``b`` is
    ``b / sqrt(1 + a^2 + b^2)`` (inverted in closed form).
    """
    (a0, a1), (b0, b1) = a_bounds, b_bounds
    a = a0 + ua * (a1 - a0)
    if not per_solid_angle:
        return a.to(torch.float32), (b0 + ub * (b1 - b0)).to(torch.float32)
    # the target cumulative, less the constant corner terms at a0
    target = ua * tangent_rectangle_solid_angle_sr(a_bounds, b_bounds) + (
        _corner_solid_angle_sr(a0, b1) - _corner_solid_angle_sr(a0, b0))
    for _ in range(_MAX_NEWTON_STEPS):
        c = 1.0 + a * a
        s1, s0 = torch.sqrt(c + b1 * b1), torch.sqrt(c + b0 * b0)
        cum = torch.atan(a * (b1 / s1)) - torch.atan(a * (b0 / s0))
        step = (cum - target) * c / (b1 / s1 - b0 / s0)
        a = (a - step).clamp_(a0, a1)
        if float(step.abs().max()) <= _NEWTON_TOLERANCE * (a1 - a0):
            break
    c = 1.0 + a * a
    g0, g1 = b0 / torch.sqrt(c + b0 * b0), b1 / torch.sqrt(c + b1 * b1)
    g = g0 + ub * (g1 - g0)
    b = (g * torch.sqrt(c) / torch.sqrt(1.0 - g * g)).clamp_(b0, b1)
    return a.to(torch.float32), b.to(torch.float32)


@dataclass
class PointSource:
    """Isotropic point source collimated to a rectangular fan or a circular cone.

    Parameters
    ----------
    position_mm : (x, y, z)
        Focal spot in patient coordinates, mm (three finite numbers).
    direction : (u, v, w)
        Central axis of the beam (three numbers, not all zero; normalised here).
    energy_kev : float, optional
        Monoenergetic source (keV, >= 1 keV where the cross-section tables start; give this or
        ``spectrum``, not both).
    spectrum : ctdose.physics.spectrum.Spectrum, optional
        Energy distribution; if absolute, results are also available per mAs. Photon energies
        are uniform within each bin, whose edges lie halfway between neighbouring energies
        (:func:`ctdose.physics.spectrum.bin_middle_and_width_kev`).
    collimation : "fan" | "cone"
    half_angles_rad : (fan, perpendicular)
        Half-angles of the rectangular field in radians, each in (0, pi/2): within the fan plane
        (spanned by ``direction`` and ``fan_axis``) and perpendicular to it. Their tangents
        must not exceed 1000 (89.94 degrees), and per solid angle the field must not be so wide
        that its sampler keeps less than 1 % of its draws (a square field up to about 85 degrees).
    fan_axis : (x, y, z), optional
        A vector in the fan plane; default: perpendicular to ``direction`` in the xy-plane
        (a fan in the axial plane, collimated in z).
    cone_half_angle_rad : float
        Half-angle of the cone (``collimation="cone"``).
    sampling : "solid_angle" | "plane"
        Fan field: directions uniform per solid angle (an isotropic source, default) or
        uniform over the rectangular opening's plane (matches codes that sample the opening
        by area; then no per-mAs normalisation is offered).
    field_tan : ((a_lo, a_hi), (b_lo, b_hi)), optional
        An off-axis rectangular field instead of ``half_angles_rad``: the directions
        ``direction + a e1 + b e2`` (``e1`` along ``fan_axis``, ``e2 = direction x e1``) with
        ``a`` and ``b`` (tangents of the angles from the axis) in these bounds. A field that
        just covers a rectangle [x0, x1] x [y0, y1] on a plane at distance ``h`` perpendicular
        to ``direction`` has ``a`` in [x0 / h, x1 / h] (e.g. a mammography field whose edge is
        the chest wall). The same limits as for ``half_angles_rad`` apply.

    Raises
    ------
    InputError
        A vector that is not three numbers, half-angles that are not two numbers in range, a
        field too wide to sample, both or neither of ``energy_kev`` and ``spectrum``, or a
        spectrum refused (see :class:`ctdose.physics.spectrum.Spectrum`).
    """

    position_mm: Sequence[float]
    direction: Sequence[float]
    energy_kev: float | None = None
    spectrum: object | None = None
    collimation: str = "fan"
    half_angles_rad: Sequence[float] = (0.1, 0.01)
    fan_axis: Sequence[float] | None = None
    cone_half_angle_rad: float = 0.1
    sampling: str = "solid_angle"
    field_tan: Sequence[Sequence[float]] | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        p = _vector3(self.position_mm, "PointSource.position_mm")
        if not np.all(np.isfinite(p)):
            raise InputError(f"PointSource.position_mm must be finite, got {self.position_mm!r}")
        self._pos = p
        self._d = _unit(self.direction, "PointSource.direction")
        if self.sampling not in ("solid_angle", "plane"):
            raise InputError(f"PointSource.sampling must be 'solid_angle' or 'plane', got {self.sampling!r}")
        if self.collimation not in ("fan", "cone"):
            raise InputError(f"PointSource.collimation must be 'fan' or 'cone', got {self.collimation!r}")
        if self.collimation == "fan":
            if self.field_tan is not None:
                bounds = np.asarray(self.field_tan, dtype=np.float64)
                if bounds.shape != (2, 2) or not np.all(np.isfinite(bounds)) or np.any(bounds[:, 1] <= bounds[:, 0]):
                    raise InputError(
                        f"PointSource.field_tan must be ((a_lo, a_hi), (b_lo, b_hi)) with lo < hi, got {self.field_tan!r}"
                    )
                self._field = tuple((float(lo), float(hi)) for lo, hi in bounds)
            else:
                try:
                    a1, a2 = (float(a) for a in np.asarray(self.half_angles_rad, dtype=np.float64).reshape(2))
                except (TypeError, ValueError):
                    raise InputError(
                        f"PointSource.half_angles_rad must be two numbers (fan, perpendicular) in radians, "
                        f"got {self.half_angles_rad!r}"
                    ) from None
                if not (0 < a1 < math.pi / 2 and 0 < a2 < math.pi / 2):
                    raise InputError(
                        f"PointSource.half_angles_rad must be in (0, pi/2), got {self.half_angles_rad!r}"
                    )
                t1, t2 = math.tan(a1), math.tan(a2)
                self._field = ((-t1, t1), (-t2, t2))
            given = "field_tan" if self.field_tan is not None else "half_angles_rad"
            _check_field(*self._field, self.sampling == "solid_angle",
                         f"PointSource.{given}={getattr(self, given)!r}")
            if self.fan_axis is None:
                ax = np.cross([0.0, 0.0, 1.0], self._d)
                if np.linalg.norm(ax) < 1e-9:
                    ax = np.array([1.0, 0.0, 0.0])
            else:
                ax = _vector3(self.fan_axis, "PointSource.fan_axis")
            ax = ax - np.dot(ax, self._d) * self._d
            self._e1 = _unit(ax, "PointSource.fan_axis (must not be parallel to direction)")
            self._e2 = np.cross(self._d, self._e1)
            if self.field_tan is None:
                self.solid_angle_sr = rectangle_solid_angle_sr(a1, a2)
            else:
                self.solid_angle_sr = tangent_rectangle_solid_angle_sr(*self._field)
        else:
            a = float(self.cone_half_angle_rad)
            if not (0 < a <= math.pi):
                raise InputError(f"PointSource.cone_half_angle_rad must be in (0, pi], got {a}")
            self.solid_angle_sr = 2.0 * math.pi * (1.0 - math.cos(a))
        self._e, self._mid, self._w, self._p, self._phi = _spectrum_arrays(self.energy_kev, self.spectrum)

    # -- public properties -------------------------------------------------------------------
    @property
    def max_energy_kev(self) -> float:
        """Highest energy a photon can have (keV): the top edge of the highest bin of non-zero weight."""
        return float(np.max((self._mid + 0.5 * self._w)[self._p > 0]))

    @property
    def photons_per_mas(self) -> float | None:
        """Photons per mAs into the collimated field (None without an absolute spectrum)."""
        if self._phi is None or self.sampling != "solid_angle":
            return None
        return self._phi * _REFERENCE_DISTANCE_MM**2 * self.solid_angle_sr

    @property
    def dose_scale_per_mas(self) -> float | None:
        """Factor from dose per simulated photon to dose per mAs."""
        return self.photons_per_mas

    def probe_directions(self) -> tuple[np.ndarray, np.ndarray]:
        """Origin and a few extreme directions of the field (for geometry checks)."""
        return self._pos, self._d

    # -- sampling ------------------------------------------------------------------------------
    #: Uniform numbers per photon for :meth:`sample`'s ``u``: two field coordinates, the energy.
    sample_dims = 3

    def sample(self, n: int, gen: torch.Generator, u: torch.Tensor | None = None) -> PhotonState:
        """Draw ``n`` photons (weight 1) on the generator's device.

        ``u`` (n, 3) float64 in [0, 1), optional: the photons as a monotone map of these
        numbers (field coordinates, cone angle and azimuth, energy by inversion; see
        :mod:`ctdose.physics.quasi_random`) instead of random draws from ``gen``.
        """
        dev = gen.device
        key = str(dev)
        if key not in self._cache:
            self._cache[key] = _EnergySampler(self._mid, self._w, self._p, dev)
        if u is not None:
            u = u.to(dev)
        energy, _ = self._cache[key].sample(n, gen) if u is None else self._cache[key].from_uniform(u[:, 2])
        d = torch.tensor(self._d, dtype=torch.float32, device=dev)
        if self.collimation == "fan":
            if u is None:
                a, b = _sample_rectangle(n, *self._field, gen, dev, self.sampling == "solid_angle")
            else:
                a, b = _rectangle_from_uniforms(u[:, 0], u[:, 1], *self._field, self.sampling == "solid_angle")
            e1 = torch.tensor(self._e1, dtype=torch.float32, device=dev)
            e2 = torch.tensor(self._e2, dtype=torch.float32, device=dev)
            dx = d[0] + a * e1[0] + b * e2[0]
            dy = d[1] + a * e1[1] + b * e2[1]
            dz = d[2] + a * e1[2] + b * e2[2]
            inv = torch.rsqrt(dx * dx + dy * dy + dz * dz)
            cos_x, cos_y, cos_z = dx * inv, dy * inv, dz * inv
        else:
            cmin = math.cos(float(self.cone_half_angle_rad))
            u_c = torch.rand(n, generator=gen, device=dev) if u is None else u[:, 0].to(torch.float32)
            u_phi = torch.rand(n, generator=gen, device=dev) if u is None else u[:, 1].to(torch.float32)
            c = 1.0 - u_c * (1.0 - cmin)
            phi = u_phi * (2.0 * math.pi)
            ones = torch.ones(n, device=dev)
            cos_x, cos_y, cos_z = rotate_direction(ones * d[0], ones * d[1], ones * d[2], c, phi)
        pos = [torch.full((n,), float(self._pos[i]), dtype=torch.float32, device=dev) for i in range(3)]
        return PhotonState(pos[0], pos[1], pos[2], cos_x, cos_y, cos_z, energy, torch.ones(n, device=dev))


class CTSource:
    """The CT scanner's x-ray source over a protocol (axial or helical).

    Parameters
    ----------
    scanner : ctdose.physics.scanner.CTScanner
        Geometry (``source_to_isocentre_mm``, ``collimation_mm``, ``fan_half_angle_rad()``),
        ``spectrum`` and ``bowtie`` (with ``transmission(energy_kev, angle_rad)``).
    protocol : ctdose.physics.scanner.Protocol
        ``source_positions(scanner)`` gives ``angle_rad``, ``z_mm`` and ``mas`` per position
        and, for a continuous rotation, the angle and z interval each position stands for:
        a photon's position is drawn by tube load, then its gantry angle (and helical z)
        uniformly over that interval.
    bowtie : bool
        Apply the bowtie weight (default True).
    angular_modulation : ctdose.physics.angular_modulation.AngularModulation, optional
        Tube current over the gantry angle: the load of each source position is multiplied
        by its factor at the position's angle and z, and all loads are then scaled back to
        the protocol's total mAs (doses stay per mAs of one rotation at its reference
        current). With a continuous rotation the current is constant over each position's
        interval: ``projections_per_rotation`` sets how finely it follows the modulation.

    Notes
    -----
    ``dose_scale_per_mas`` converts dose per simulated photon into dose per mAs of one
    rotation: (total mAs of the scan) x (photons per mAs into the field) / (mAs per rotation).
    """

    def __init__(self, scanner, protocol, bowtie: bool = True, angular_modulation=None):
        self.scanner = scanner
        self.protocol = protocol
        pos = protocol.source_positions(scanner)
        if angular_modulation is not None:
            pos = angular_modulation.apply(pos)
        self.angle_rad = np.asarray(pos.angle_rad, dtype=np.float64).ravel()
        self.z_mm = np.asarray(pos.z_mm, dtype=np.float64).ravel()
        self.mas = np.asarray(pos.mas, dtype=np.float64).ravel()
        # continuous rotation: the interval each position stands for (None: point projections)
        self.angle_width_rad, self.z_width_mm = (
            None if getattr(pos, name, None) is None else np.asarray(getattr(pos, name), dtype=np.float64).ravel()
            for name in ("angle_width_rad", "z_width_mm")
        )
        if self.angle_rad.size == 0 or not (self.angle_rad.size == self.z_mm.size == self.mas.size):
            raise InputError("CT protocol: no source positions, or arrays of unequal length")
        if not (np.all(np.isfinite(self.mas)) and np.all(self.mas >= 0) and self.mas.sum() > 0):
            raise InputError("CT protocol: tube loads (mAs) must be finite, >= 0 and not all zero")
        for name in ("angle_width_rad", "z_width_mm"):
            arr = getattr(self, name)
            if arr is not None and (arr.shape != self.angle_rad.shape or not np.all(np.isfinite(arr)) or np.any(arr < 0)):
                raise InputError(f"CT protocol: {name} must be finite, >= 0 and one per source position")
        self.distance_mm = float(scanner.source_to_isocentre_mm)
        self.fan_half_angle_rad = float(scanner.fan_half_angle_rad())
        self.z_half_angle_rad = math.atan(0.5 * float(scanner.collimation_mm) / self.distance_mm)
        self.solid_angle_sr = rectangle_solid_angle_sr(self.fan_half_angle_rad, self.z_half_angle_rad)
        t1, t2 = math.tan(self.fan_half_angle_rad), math.tan(self.z_half_angle_rad)
        _check_field((-t1, t1), (-t2, t2), True, f"CT scanner field (fan half-angle {self.fan_half_angle_rad:g} rad, "
                     f"z half-angle {self.z_half_angle_rad:g} rad)")
        self._e, self._mid, self._w, self._p, self._phi = _spectrum_arrays(None, scanner.spectrum)
        self.use_bowtie = bool(bowtie) and getattr(scanner, "bowtie", None) is not None
        self._gamma = np.linspace(-self.fan_half_angle_rad, self.fan_half_angle_rad, _N_BOWTIE_ANGLES)
        if self.use_bowtie:
            cols = [np.asarray(scanner.bowtie.transmission(self._e, float(g)), dtype=np.float64).ravel() for g in self._gamma]
            table = np.stack(cols, axis=1)  # (n_e, n_gamma)
            if table.shape != (self._e.size, self._gamma.size) or not np.all(np.isfinite(table)):
                raise InputError("CT scanner bowtie: transmission table is not finite or has a wrong shape")
            if not np.any(self._p @ table > 0):  # no photon would leave the source
                name = getattr(scanner.bowtie, "description", "") or "bowtie"
                raise InputError(f"CT scanner bowtie ({name}): its transmission is 0 for the whole spectrum "
                                 "at every fan angle, so the source emits nothing")
        else:
            table = np.ones((self._e.size, self._gamma.size))
        self._bowtie = table
        tube = float(protocol.tube_current_ma) * float(protocol.rotation_time_s)
        self.mas_per_rotation = tube if tube > 0 else float(self.mas.sum())
        self._cache: dict = {}

    @property
    def max_energy_kev(self) -> float:
        """Highest energy a photon can have (keV): the top edge of the highest bin of non-zero weight."""
        return float(np.max((self._mid + 0.5 * self._w)[self._p > 0]))

    @property
    def photons_per_mas(self) -> float | None:
        if self._phi is None:
            return None
        return self._phi * _REFERENCE_DISTANCE_MM**2 * self.solid_angle_sr

    @property
    def dose_scale_per_mas(self) -> float | None:
        """Dose per simulated photon -> dose per mAs of one rotation (see class notes)."""
        if self.photons_per_mas is None:
            return None
        return self.photons_per_mas * float(self.mas.sum()) / self.mas_per_rotation

    def _device_tables(self, dev):
        key = str(dev)
        if key not in self._cache:
            cdf = np.cumsum(self.mas)
            cdf /= cdf[-1]
            self._cache[key] = dict(
                energy=_EnergySampler(self._mid, self._w, self._p, dev),
                pos_cdf=torch.tensor(cdf, dtype=torch.float64, device=dev),
                angle=torch.tensor(self.angle_rad, dtype=torch.float32, device=dev),
                z=torch.tensor(self.z_mm, dtype=torch.float32, device=dev),
                bowtie=torch.tensor(self._bowtie.reshape(-1), dtype=torch.float32, device=dev),
                **{key: None if arr is None else torch.tensor(arr, dtype=torch.float32, device=dev)
                   for key, arr in (("angle_width", self.angle_width_rad), ("z_width", self.z_width_mm))},
            )
        return self._cache[key]

    #: Uniform numbers per photon for :meth:`sample`'s ``u``: the tube position along the scan,
    #: two field coordinates, the energy.
    sample_dims = 4

    def sample(self, n: int, gen: torch.Generator, u: torch.Tensor | None = None) -> PhotonState:
        """Draw ``n`` photons; the bowtie enters as the photon weight.

        ``u`` (n, 4) float64 in [0, 1), optional: the photons as a monotone map of these numbers
        (see :mod:`ctdose.physics.quasi_random`): the first picks the tube position by its load
        and, for a continuous rotation, the phase within its interval (so that it runs
        continuously along the scan), then the field coordinates and the energy.
        """
        dev = gen.device
        t = self._device_tables(dev)
        if u is not None:
            u = u.to(dev)
        energy, ebin = t["energy"].sample(n, gen) if u is None else t["energy"].from_uniform(u[:, 3])
        r = torch.rand(n, generator=gen, device=dev, dtype=torch.float64) if u is None else u[:, 0].contiguous()
        k = torch.searchsorted(t["pos_cdf"], r).clamp_(max=self.angle_rad.size - 1)
        ang = t["angle"][k]
        z0 = t["z"][k]
        if t["angle_width"] is not None:  # continuous rotation: uniform over the position's interval
            if u is None:
                phase = torch.rand(n, generator=gen, device=dev) - 0.5
            else:  # where r lies within its position's share of the cumulative load
                start = torch.where(k > 0, t["pos_cdf"][(k - 1).clamp(min=0)], 0.0)
                share = (t["pos_cdf"][k] - start).clamp(min=1e-300)
                phase = ((r - start) / share).clamp(0.0, 1.0).to(torch.float32) - 0.5
            ang = ang + phase * t["angle_width"][k]
            if t["z_width"] is not None:
                z0 = z0 + phase * t["z_width"][k]
        sa, ca = torch.sin(ang), torch.cos(ang)
        t1, t2 = math.tan(self.fan_half_angle_rad), math.tan(self.z_half_angle_rad)
        if u is None:
            a, b = _sample_rectangle(n, (-t1, t1), (-t2, t2), gen, dev)
        else:
            a, b = _rectangle_from_uniforms(u[:, 1], u[:, 2], (-t1, t1), (-t2, t2))
        # central direction (-sin, cos, 0), fan axis (cos, sin, 0), e2 = z
        dx = -sa + a * ca
        dy = ca + a * sa
        dz = b
        inv = torch.rsqrt(dx * dx + dy * dy + dz * dz)
        x0 = self.distance_mm * sa
        y0 = -self.distance_mm * ca
        if self.use_bowtie:
            n_g = self._gamma.size
            g = torch.atan(a)
            p = ((g + self.fan_half_angle_rad) / (2 * self.fan_half_angle_rad) * (n_g - 1)).clamp(0.0, n_g - 1.001)
            j = p.to(torch.int64)
            f = p - j
            base = ebin * n_g + j
            weight = t["bowtie"][base] * (1.0 - f) + t["bowtie"][base + 1] * f
        else:
            weight = torch.ones(n, device=dev)
        return PhotonState(x0, y0, z0, dx * inv, dy * inv, dz * inv, energy, weight)
