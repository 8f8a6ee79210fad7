"""Public Monte Carlo API: any voxel geometry, any media, any source.

>>> from ctdose.materials import get_medium
>>> from ctdose.physics.mc import VoxelGeometry, simulate
>>> from ctdose.physics.sources import PointSource
>>> import numpy as np
>>> geo = VoxelGeometry(np.zeros((4, 4, 4), np.uint8), np.ones((4, 4, 4), np.float32),
...                     [get_medium("water")], (5.0, 5.0, 5.0), (-7.5, -7.5, -7.5))
>>> src = PointSource((0, 0, -100.0), (0, 0, 1), energy_kev=60.0, collimation="cone",
...                   cone_half_angle_rad=0.05)
>>> res = simulate(geo, src, 2000, n_batches=4, seed=1)
>>> bool(res.energy_ev.sum() > 0)
True

Coordinates follow docs/architecture.md: arrays ``[z, y, x]``, ``origin_mm`` = centre of voxel
[0, 0, 0] as (z0, y0, x0), ``spacing_mm`` = (dz, dy, dx). Photon physics and estimators:
:mod:`ctdose.physics.transport` and :mod:`ctdose.physics.interactions`.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import as_int as _as_int, as_real as _as_real
from ..errors import InputError
from .transport import WINDOW_ESTIMATORS, TransportGrid, TransportTally, enter_grid, prepare_transport, run_transport
from .fluorescence import FLUORESCENCE_MIN_KEV
from .quasi_random import SOURCE_SAMPLING
from .weight_window import DEFAULT_MIN_WEIGHT
from .xsection import ENERGY_MAX_KEV, ENERGY_MIN_KEV

__all__ = [
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "MAX_MEDIA",
    "MIN_BATCHES",
    "MIN_CUTOFF_KEV",
    "DoseResult",
    "VoxelGeometry",
    "check_device_name",
    "check_run_settings",
    "geometry_from_case",
    "resolve_device",
    "simulate",
]

#: Joule per keV.
J_PER_KEV = 1.602176634e-16
#: Most media in one geometry (the transport grid stores the medium index in one byte).
MAX_MEDIA = 256
#: Energy scoring methods of :func:`simulate` (:mod:`ctdose.physics.transport`).
ESTIMATORS = ("expected_track_length", "track_length", "collision", "analogue")
#: The estimator of :func:`simulate` (and of the profiles' ``mc.estimator``) unless one is asked for.
DEFAULT_ESTIMATOR = "expected_track_length"
#: Default photon energy cutoff (keV): the paper's EGSnrc photon cutoff (PCUT 0.001 MeV).
DEFAULT_CUTOFF_KEV = 1.0
#: Lowest photon energy cutoff (keV): the cross-section tables start there.
MIN_CUTOFF_KEV = ENERGY_MIN_KEV
#: Fewest batches: the batch method needs two for a statistical uncertainty.
MIN_BATCHES = 2
#: Photons in flight at once (bounded memory): CPU and CUDA.
POOL_SIZE = {"cpu": 1 << 17, "cuda": 1 << 22}
#: Largest tally (bytes) for running all batches in one shared photon pool.
_MAX_TALLY_BYTES = 1 << 30
#: Seed offset between the generators of parallel workers.
_WORKER_SEED_STRIDE = 1_000_003
#: Second word of the pilot run's seed sequence (seed, this): a stream apart from the batches'.
_PILOT_STREAM = 0x57
#: Photons sampled to check that a source reaches the geometry at all.
_PROBE_PHOTONS = 4096
#: Largest mass density (g/cm^3) of a voxel or medium. The densest element, osmium, has
#: 22.59 g/cm^3; more is a unit mistake (water in kg/m^3 reads as 1000 g/cm^3), and densities
#: beyond float32's range (3.4e38) hang the transport or give infinite doses.
MAX_DENSITY_G_CM3 = 100.0
#: Farthest a voxel grid may reach from the origin of coordinates (mm): 1 km, far beyond any
#: scanner or phantom and far inside float32's range (the transport's coordinates): a grid of
#: 1e38 mm voxels overflows it and gives NaN doses.
MAX_WORLD_MM = 1.0e6
#: Smallest voxel edge (mm): 0.1 micrometre, far below any CT or micro-CT voxel; smaller
#: spacings lose their inverse (1/mm) in float32.
MIN_SPACING_MM = 1.0e-4
#: A composition summing to 1 within this was normalised already (check_composition's or
#: custom_medium's result is 1 to a few float64 roundings, < 1e-14 for 98 elements) and is
#: transported as given; a sum further from 1 is renormalised as custom_medium does.
_NORMALISED_SUM_TOLERANCE = 1.0e-12
#: Relative tolerance of a source's photon energies above its ``max_energy_kev``: the float32
#: rounding of the energies and bin edges (float32's epsilon is 1.2e-7).
_ENERGY_ROUNDING = 1.0e-6
#: Largest deviation of a source photon's direction from unit length: float32 normalisation and
#: rotation leave it unit to about 1e-7; a direction off by more would scale every path.
_UNIT_DIRECTION_TOLERANCE = 1.0e-5
#: Relative tolerance of uniform coordinates in a stored case (their float32/float64 rounding
#: is about 1e-6 of a spacing; a missing slice or a varying slice spacing is off by far more).
_UNIFORM_SPACING_RTOL = 1.0e-3


@dataclass
class VoxelGeometry:
    """A voxel world: medium index and mass density per voxel.

    Parameters
    ----------
    media_index : ndarray [z, y, x] of integers
        Index into ``media`` per voxel (0 .. len(media) - 1; at most ``MAX_MEDIA`` media).
    density_g_cm3 : ndarray [z, y, x] float32
        Mass density per voxel (g/cm^3), >= 0.
    media : list of ctdose.materials.Medium
    spacing_mm : (dz, dy, dx)
    origin_mm : (z0, y0, x0), centre of voxel [0, 0, 0]
    """

    media_index: np.ndarray
    density_g_cm3: np.ndarray
    media: list
    spacing_mm: Sequence[float]
    origin_mm: Sequence[float]

    def validate(self) -> None:
        """Raise :class:`InputError` for inconsistent or unphysical input.

        Raises
        ------
        InputError
            Unequal or empty shapes, bad medium indices (or not of an integer dtype), densities
            that are not real numbers, NaN, negative or above :data:`MAX_DENSITY_G_CM3`, a
            medium that is not a :class:`ctdose.materials.Medium` (a medium's name, for
            instance), a medium whose composition is empty, has Z outside 1..98, negative,
            NaN or non-numeric fractions or fractions not summing to 1 within 1 %
            (:func:`ctdose.materials.check_composition`; :func:`simulate` transports them
            renormalised, as :func:`ctdose.materials.custom_medium` does), a spacing that is not
            finite or below :data:`MIN_SPACING_MM`, an origin that is not finite, or a grid
            reaching farther than :data:`MAX_WORLD_MM` from the origin of coordinates.
        """
        mi = np.asarray(self.media_index)
        rho = np.asarray(self.density_g_cm3)
        if mi.ndim != 3 or rho.shape != mi.shape:
            raise InputError(
                f"VoxelGeometry: media_index {mi.shape} and density_g_cm3 {rho.shape} must be equal 3-D shapes"
            )
        if mi.size == 0:
            raise InputError("VoxelGeometry: empty grid")
        if not np.issubdtype(mi.dtype, np.integer):
            raise InputError(f"VoxelGeometry: media_index must hold non-negative integers, got dtype {mi.dtype}")
        if mi.min() < 0:
            raise InputError(f"VoxelGeometry: media_index must hold non-negative integers, got {int(mi.min())}")
        if not self.media:
            raise InputError("VoxelGeometry: no media given")
        if len(self.media) > MAX_MEDIA:
            raise InputError(
                f"VoxelGeometry: {len(self.media)} media given, at most {MAX_MEDIA} are supported (one byte per "
                "voxel); merge media of equal composition (density is per voxel)"
            )
        if int(mi.max()) >= len(self.media):
            raise InputError(
                f"VoxelGeometry: media_index refers to medium {int(mi.max())} but only {len(self.media)} media are given"
            )
        if rho.dtype.kind not in "fiu":  # complex would lose its imaginary part in the float32 cast
            raise InputError(f"VoxelGeometry: density_g_cm3 must hold real numbers (g/cm^3), got dtype {rho.dtype}")
        if not np.all(np.isfinite(rho)):
            raise InputError("VoxelGeometry: density_g_cm3 contains NaN or infinite values")
        if rho.min() < 0:
            raise InputError(f"VoxelGeometry: negative density ({float(rho.min())} g/cm^3)")
        if rho.max() > MAX_DENSITY_G_CM3:
            raise InputError(
                f"VoxelGeometry: density {float(rho.max()):g} g/cm^3 is above {MAX_DENSITY_G_CM3:g} g/cm^3 (the "
                "densest element, osmium, has 22.59 g/cm^3); densities must be in g/cm^3 (not kg/m^3)"
            )
        for i, m in enumerate(self.media):
            _clean_composition(m, f"VoxelGeometry: media[{i}]", "VoxelGeometry: ")
        try:
            sp = np.asarray(self.spacing_mm, dtype=float)
            og = np.asarray(self.origin_mm, dtype=float)
        except (TypeError, ValueError):
            sp = og = np.empty(0)
        if (sp.shape != (3,) or og.shape != (3,) or not np.all(np.isfinite(sp)) or not np.all(sp > 0)
                or not np.all(np.isfinite(og))):
            raise InputError(f"VoxelGeometry: spacing_mm {self.spacing_mm!r} must be 3 finite positive numbers, "
                             f"origin_mm {self.origin_mm!r} 3 finite numbers")
        if sp.min() < MIN_SPACING_MM:
            raise InputError(f"VoxelGeometry: spacing_mm {self.spacing_mm!r}: every voxel edge must be at least "
                             f"{MIN_SPACING_MM:g} mm")
        # the grid's corners: voxel centres origin + i * spacing, i = 0 .. n - 1, +- half a voxel
        n = np.asarray(mi.shape, dtype=float)
        reach = float(np.max(np.maximum(np.abs(og - 0.5 * sp), np.abs(og + (n - 0.5) * sp))))
        if not reach <= MAX_WORLD_MM:
            raise InputError(
                f"VoxelGeometry: the grid (shape {mi.shape}, spacing_mm {self.spacing_mm!r}, origin_mm "
                f"{self.origin_mm!r}) reaches {reach:g} mm from the origin of coordinates; at most "
                f"{MAX_WORLD_MM:g} mm (1 km) is supported (spacing and origin in mm?)"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in np.shape(self.media_index))

    @property
    def voxel_volume_cm3(self) -> float:
        return float(np.prod(np.asarray(self.spacing_mm, dtype=float))) / 1000.0

    def voxel_mass_kg(self) -> np.ndarray:
        """Mass per voxel in kg, [z, y, x]."""
        return np.asarray(self.density_g_cm3, dtype=np.float64) * self.voxel_volume_cm3 / 1000.0


def _clean_composition(medium, where: str, prefix: str):
    """The medium to transport: ``medium`` itself when its composition is normalised already (a
    shipped medium, one from :func:`ctdose.materials.custom_medium`), else the same medium with
    the composition :func:`ctdose.materials.check_composition` returns, as ``custom_medium``
    would have built it (fractions summing to 1 within 1 % renormalised, zeros dropped).

    ``where`` names the entry for a medium given by name (``"VoxelGeometry: media[0]"``);
    ``prefix`` goes before the composition checks' messages (``"VoxelGeometry: "``).

    Raises
    ------
    InputError
        A string instead of a Medium, no composition, non-numeric fractions (text: build the
        medium with ``custom_medium``, which reads it), or what ``check_composition`` refuses.
    """
    from dataclasses import replace

    from ..materials import Medium, check_composition

    if isinstance(medium, str):
        raise InputError(
            f"{where} is the string {medium!r}, not a Medium: use ctdose.materials.get_medium({medium!r}) for a "
            "shipped medium, or ctdose.materials.custom_medium(name, density, fractions)"
        )
    name = getattr(medium, "name", str(medium))
    fractions = getattr(medium, "mass_fractions", None)
    if not fractions:
        raise InputError(f"{prefix}medium {name!r} has no elemental composition")
    if hasattr(fractions, "items"):
        for z, w in fractions.items():
            value = w.item() if isinstance(w, np.ndarray) and w.ndim == 0 else w
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InputError(
                    f"{prefix}medium {name!r}: mass fraction of Z={z!r} is {w!r} ({type(w).__name__}), not a number; "
                    "give numbers, or build the medium with ctdose.materials.custom_medium (which reads text)"
                )
    try:
        clean = check_composition(name, fractions)
    except InputError as exc:
        raise InputError(f"{prefix}{exc}") from None
    if abs(sum(float(w) for w in fractions.values()) - 1.0) <= _NORMALISED_SUM_TOLERANCE:
        return medium  # as given: the same tables (and random stream) as before
    if isinstance(medium, Medium):
        return replace(medium, mass_fractions=clean)
    return Medium(name=name, density_g_cm3=float(medium.density_g_cm3), mass_fractions=clean)


@dataclass
class DoseResult:
    """Result of :func:`simulate`.

    Attributes
    ----------
    energy_ev : ndarray [z, y, x] float64
        Mean energy deposited per source photon (eV).
    dose_gy : ndarray [z, y, x] float64
        Dose per source photon (Gy), or per mAs when ``per_mas`` (a source with an absolute
        spectrum; for a CT protocol per mAs of one rotation).
    rel_sigma : ndarray [z, y, x] float64
        Relative standard error of the mean (batch method); 1.0 where nothing was scored.
    escaped_energy_ev, emitted_energy_ev : float
        Per source photon: energy that left the grid (or missed it) and energy emitted.
    deposited_energy_ev : float
        Total of ``energy_ev``.
    n_photons, n_batches : int
    wall_s : float
    per_mas : bool
    dose_scale_per_mas : float or None
        Factor from dose per photon to dose per mAs.
    estimator, device : str
    """

    energy_ev: np.ndarray
    dose_gy: np.ndarray
    rel_sigma: np.ndarray
    escaped_energy_ev: float
    emitted_energy_ev: float
    deposited_energy_ev: float
    n_photons: int
    n_batches: int
    wall_s: float
    per_mas: bool
    dose_scale_per_mas: float | None
    estimator: str
    device: str
    n_steps: int = 0
    batch_energy_ev: np.ndarray | None = None

    def sum_with_sigma(self, weights: np.ndarray, quantity: str = "energy_ev") -> tuple[float, float]:
        """Weighted voxel sum of ``energy_ev`` or ``dose_gy`` and its standard error (batch method).

        Needs ``keep_batches=True`` for the error (else NaN). ``weights`` broadcast to [z, y, x].
        """
        values = np.asarray(getattr(self, quantity))
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), values.shape).reshape(-1)
        idx = np.flatnonzero(w)  # only the weighted voxels (a VOI is a small part of the grid)
        w = w[idx]
        total = float(values.reshape(-1)[idx] @ w)
        if self.batch_energy_ev is None:
            return total, float("nan")
        per_batch = self.batch_energy_ev.reshape(self.n_batches, -1)[:, idx].astype(np.float64) @ w
        if quantity != "energy_ev":
            scale = total / max(float(np.asarray(self.energy_ev).reshape(-1)[idx] @ w), 1e-300)
            per_batch = per_batch * scale
        return total, float(per_batch.std(ddof=1) / np.sqrt(self.n_batches))

    @property
    def dose_gy_per_mas(self) -> np.ndarray:
        """Dose per mAs (Gy/mAs). Raises InputError if the source had no absolute spectrum."""
        if not self.per_mas:
            raise InputError("this source has no absolute fluence per mAs (monoenergetic or relative spectrum)")
        return self.dose_gy

    @property
    def dose_gy_per_photon(self) -> np.ndarray:
        """Dose per simulated source photon (Gy)."""
        if self.per_mas:
            return self.dose_gy / self.dose_scale_per_mas
        return self.dose_gy

    @property
    def sigma_gy(self) -> np.ndarray:
        """Absolute standard error of ``dose_gy``."""
        return self.dose_gy * self.rel_sigma

    @property
    def histories_per_s(self) -> float:
        return self.n_photons / self.wall_s if self.wall_s > 0 else float("nan")


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:<n>"`` as given.

    Raises
    ------
    InputError
        Any other device (``"tpu"``, ``"gpu"``, ``"mps"``, ...), or CUDA where none is available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = check_device_name(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) are available")
    return dev


def check_device_name(device: str | torch.device, where: str = "") -> torch.device | None:
    """Check that ``device`` names a device :func:`resolve_device` takes, without asking for it.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:<n>"``.
    where : str
        Prefix of the message (e.g. ``"profile 'demo': "``).

    Returns
    -------
    torch.device or None
        The device (None for ``"auto"``). Whether CUDA is available is not checked here.

    Raises
    ------
    InputError
        Any other name (``"tpu"``, ``"gpu"``, ``"mps"``, ``"meta"``, ...).
    """
    if str(device) == "auto":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise InputError(f"{where}device must be 'cpu', 'cuda', 'cuda:<n>' or 'auto', got {device!r}")
    return dev


def check_run_settings(
    n_photons: int,
    n_batches: int,
    estimator: str = DEFAULT_ESTIMATOR,
    energy_cutoff_kev: float = DEFAULT_CUTOFF_KEV,
    where: str = "simulate: ",
) -> tuple[int, int, str, float]:
    """Check the run settings that :func:`simulate` and the profiles' ``mc`` section share.

    Parameters
    ----------
    n_photons : int
        Source photons (histories): a positive integer (a float only when integral, e.g. ``1e6``).
    n_batches : int
        Batches: an integer in [``MIN_BATCHES``, ``n_photons``].
    estimator : str
        One of :data:`ESTIMATORS`.
    energy_cutoff_kev : float
        Photon energy cutoff (keV): finite and >= :data:`MIN_CUTOFF_KEV`.
    where : str
        Put before the setting's name in a message: ``"simulate: "`` gives
        "simulate: n_photons must be ...", ``"profile 'demo': mc."`` gives
        "profile 'demo': mc.n_photons must be ...".

    Returns
    -------
    tuple
        ``(n_photons, n_batches, estimator, energy_cutoff_kev)`` as int, int, str, float.

    Raises
    ------
    InputError
        A setting of the wrong type or out of range; the message names it and the value given.
    """
    n_photons_in, n_batches_in = n_photons, n_batches
    n_photons, n_batches = _as_int(n_photons), _as_int(n_batches)
    if n_photons is None or n_photons <= 0:
        raise InputError(f"{where}n_photons must be a positive integer, got {n_photons_in!r}")
    if n_batches is None or n_batches < MIN_BATCHES or n_batches > n_photons:
        raise InputError(f"{where}n_batches must be in [{MIN_BATCHES}, n_photons], got {n_batches_in!r}")
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise InputError(f"{where}estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    cutoff = _as_real(energy_cutoff_kev)
    if cutoff is None or cutoff < MIN_CUTOFF_KEV:
        raise InputError(
            f"{where}energy_cutoff_kev must be a finite number >= {MIN_CUTOFF_KEV:g} keV, got {energy_cutoff_kev!r}"
        )
    return n_photons, n_batches, estimator, cutoff


def _source_max_energy(source) -> float:
    """The source's ``max_energy_kev``: a finite number in (0, ENERGY_MAX_KEV] (the tables' top)."""
    for attr in ("sample", "max_energy_kev"):
        if not hasattr(source, attr):
            raise InputError(f"simulate: the source {type(source).__name__} has no {attr!r} (give a PointSource, a "
                             "CTSource, or an object with sample(n, gen), max_energy_kev and dose_scale_per_mas)")
    raw = source.max_energy_kev
    energy = _as_real(raw)
    if energy is None or not 0.0 < energy <= ENERGY_MAX_KEV:
        raise InputError(f"simulate: the source's max_energy_kev must be a finite number in (0, {ENERGY_MAX_KEV:g}] "
                         f"keV (the cross-section tables end at {ENERGY_MAX_KEV:g} keV), got {raw!r}")
    return energy


def _probe_source(source, device, max_energy_kev: float):
    """Photons of the source from a generator of its own (seed 0; the run's stream is untouched),
    checked: finite positions, unit directions, energies in (0, max_energy_kev], weights >= 0.

    Only these ``_PROBE_PHOTONS`` photons are checked, not every photon of the run.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    probe = source.sample(_PROBE_PHOTONS, gen)
    what = f"simulate: the source's photons (a probe of {_PROBE_PHOTONS} from sample(n, gen))"
    cols = {}
    for f in ("x", "y", "z", "u", "v", "w", "energy_kev", "weight"):
        t = getattr(probe, f, None)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (_PROBE_PHOTONS,):
            raise InputError(f"{what}: sample(n, gen) must return a PhotonState of n photons; its {f!r} is "
                             f"{'missing' if t is None else tuple(getattr(t, 'shape', ())) or type(t).__name__}")
        if t.is_complex() or not t.is_floating_point():
            raise InputError(f"{what}: {f} must be real floating-point numbers, got {t.dtype}")
        cols[f] = t.detach().to("cpu", torch.float64)
    pos = torch.stack([cols["x"], cols["y"], cols["z"]])
    if not bool(torch.isfinite(pos).all()):
        raise InputError(f"{what}: {int((~torch.isfinite(pos)).any(0).sum())} have NaN or infinite positions")
    length = torch.sqrt(cols["u"] ** 2 + cols["v"] ** 2 + cols["w"] ** 2)
    off = (length - 1.0).abs()
    if not bool((off <= _UNIT_DIRECTION_TOLERANCE).all()):  # NaN fails too
        raise InputError(f"{what}: directions (u, v, w) must be unit vectors (within {_UNIT_DIRECTION_TOLERANCE:g}), "
                         f"got lengths {float(length.min()):g}..{float(length.max()):g} "
                         f"({int((~(off <= _UNIT_DIRECTION_TOLERANCE)).sum())} photons off)")
    e = cols["energy_kev"]
    top = max_energy_kev * (1.0 + _ENERGY_ROUNDING)
    if not bool(((e > 0.0) & (e <= top)).all()):
        raise InputError(f"{what}: energies must be finite and in (0, {max_energy_kev:g}] keV (the source's "
                         f"max_energy_kev), got {float(e.min()):g}..{float(e.max()):g} keV")
    wt = cols["weight"]
    if not bool((torch.isfinite(wt) & (wt >= 0.0)).all()):
        raise InputError(f"{what}: weights must be finite and >= 0, got {float(wt.min()):g}..{float(wt.max()):g}")
    return probe


def _check_source_reaches(grid: TransportGrid, probe) -> None:
    _, missed = enter_grid(probe, grid)
    if bool(missed.all()):
        raise InputError(
            "source: none of its photons reaches the voxel grid (a source outside the world "
            "pointing away?); grid spans "
            f"x {grid.lo_mm[0]:.1f}..{grid.hi_mm[0]:.1f}, y {grid.lo_mm[1]:.1f}..{grid.hi_mm[1]:.1f}, "
            f"z {grid.lo_mm[2]:.1f}..{grid.hi_mm[2]:.1f} mm"
        )


def _check_flag(value, name: str, allow_none: bool = False):
    """``value`` as a bool (or None where allowed); a string such as "no" is refused, not read as True."""
    if allow_none and value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputError(f"simulate: {name} must be True or False{' (or None)' if allow_none else ''}, got {value!r}")


def _ambient_medium(ambient):
    """None or "vacuum", a medium name of :func:`ctdose.materials.get_medium`, or a Medium (its
    composition checked and, like a voxel medium's, renormalised as custom_medium does)."""
    if ambient is None or (isinstance(ambient, str) and ambient == "vacuum"):
        return None
    if isinstance(ambient, str):
        from ..materials import get_medium, media_names

        if ambient not in media_names():
            raise InputError(f"simulate: ambient medium {ambient!r} unknown; use 'vacuum' (or None) or one of "
                             f"{', '.join(media_names())}")
        return get_medium(ambient)
    name = getattr(ambient, "name", ambient)
    density = _as_real(getattr(ambient, "density_g_cm3", None))
    if not getattr(ambient, "mass_fractions", None) or getattr(ambient, "density_g_cm3", None) is None:
        raise InputError(f"simulate: ambient medium {name!r} needs a composition and a density")
    if density is None or not 0.0 < density <= MAX_DENSITY_G_CM3:
        raise InputError(f"simulate: ambient medium {name!r}: density must be finite, > 0 and at most "
                         f"{MAX_DENSITY_G_CM3:g} g/cm^3, got {ambient.density_g_cm3!r}")
    return _clean_composition(ambient, "simulate: ambient", "simulate: ambient ")


def simulate(
    geometry: VoxelGeometry,
    source,
    n_photons: int,
    n_batches: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    energy_cutoff_kev: float = DEFAULT_CUTOFF_KEV,
    estimator: str = DEFAULT_ESTIMATOR,
    pool_size: int | None = None,
    keep_batches: bool = False,
    majorant_floor_per_mm: float = 0.0,
    workers: int = 1,
    majorant: str = "auto",
    block_vox: int = 8,
    track_spacing_mm: float | None = None,
    compile: bool | None = None,
    ambient=None,
    weight_window: bool = False,
    window_min_weight: float | None = None,
    source_sampling: str = "sobol",
    fluorescence_min_kev: float | None = FLUORESCENCE_MIN_KEV,
) -> DoseResult:
    """Run the photon Monte Carlo in ``geometry`` for ``source``.

    Parameters
    ----------
    geometry : VoxelGeometry
    source : PointSource or CTSource (anything with ``sample(n, gen)``, ``max_energy_kev``,
        ``dose_scale_per_mas``)
        ``max_energy_kev`` must be finite, > 0 and at most the tables' 150 keV; a probe of the
        source's photons (its own generator: the run's stream is untouched) must have finite
        positions, unit directions, energies in (0, ``max_energy_kev``] and finite weights >= 0.
    n_photons : int
        Source photons (histories), split into ``n_batches`` batches.
    n_batches : int
        Batches for the per-voxel statistical uncertainty (>= 2).
    seed : int
        Seed of the torch generator, in [0, 2**63); the same seed gives the same result on CPU.
    device : "cpu", "cuda" or "auto"
    progress : bool
        Show a tqdm bar (only when stderr is a terminal).
    energy_cutoff_kev : float
        Photons below this energy deposit it locally (>= 1 keV, below the source's highest
        energy).
    estimator : "expected_track_length" (default), "track_length", "collision" or "analogue"
        How energy is scored; all four are unbiased (see :mod:`ctdose.physics.transport`).
        The expected-track-length estimator traverses every flight voxel by voxel to the
        grid's exit and scores its expected energy transfer there
        (:mod:`ctdose.physics.ray_kernels`); it needs no majorant.
    pool_size : int, optional
        Photons in flight at once (memory bound; at least 2); default per device.
    keep_batches : bool
        Also return every batch's mean energy per photon (``DoseResult.batch_energy_ev``,
        float32 [batch, z, y, x]) for uncertainties of sums over voxels (VOIs, organs).
    majorant_floor_per_mm : float
        Minimum majorant (1/mm): more track-length scoring sites in low-density regions
        (air-filled chambers, a free-in-air kerma). 0 = the media's own majorant.
    workers : int
        At least 1. CPU only: split the batches into this many groups run in parallel, each with one
        torch intra-op thread and its own generator: in worker processes for the compiled
        kernels of the expected-track-length, track-length and collision estimators
        (:mod:`ctdose.physics.mc_workers`; a script that uses them needs the usual
        ``if __name__ == "__main__":`` guard), in threads for the analogue estimator (eager).
        Inside a daemonic process (a Dask worker) the compiled kernels use this many OpenMP
        threads instead, with the result of ``workers=1``. The caller's torch thread count is
        restored afterwards. The result depends on ``seed`` and ``workers``; ``workers=1`` is
        the reference stream.
    majorant : "auto" | "global" | "block"
        Woodcock majorant: one for the whole grid, or local per block of ``block_vox``^3
        voxels (fewer virtual collisions in air and bone-free regions; exact, see
        :func:`ctdose.physics.transport.build_block_majorant`). "auto" (default): "block"
        with the track-length estimator (its fused kernel makes the block bookkeeping cheap),
        "global" with the collision and analogue estimators (the collision estimator scores
        at the tentative sites: with 8-voxel blocks it had fewer of them in the demo thorax,
        and 1.5x less efficiency).
    block_vox : int
        Block edge in voxels for ``majorant="block"``.
    track_spacing_mm : float, optional
        Track-length estimator: spacing of the scoring points along a flight (mm); default
        the smallest voxel edge. Smaller is less noisy and slower; any value is unbiased.
    compile : bool, optional
        Fuse the steps of the expected-track-length, track-length and collision estimators
        with :func:`torch.compile` (default: yes, unless the environment sets
        ``CTDOSE_MC_COMPILE=0``; falls back to eager PyTorch with a warning where no compiler
        works). See :mod:`ctdose.physics.kernels`.
    ambient : str or Medium, optional
        Medium filling the world outside the voxel grid (e.g. ``"air"``; default None or
        ``"vacuum"``).
        Photons that start outside the grid reach it attenuated by it: their weight is
        multiplied by exp(-mu(E) L) over the path L from the source to the grid entry, and
        the energy removed counts as escaped. Photons scattered in the ambient medium are not
        followed: in TG-195 Case 4 (cylinder grid, ``ambient="air"``) every VOI agrees within
        0.15 % with the cylinder in a voxelised air world reaching the source (centre VOI
        within its 0.6 % noise). For a CT scan with the patient grid cropped to the body,
        ``"air"`` removes about 1 % of the primary over the ~30-40 cm of air between the
        focal spot and the grid.
    weight_window : bool
        The expected-track-length or track-length estimator (with the block majorant, which
        the window's blocks need): split and roulette photons against target weights from a
        pilot run (:mod:`ctdose.physics.weight_window`; unbiased). The track-length estimator
        applies the window after every step; the expected-track-length estimator along its
        whole flights (its collisions follow the window voxel by voxel, see
        :func:`ctdose.physics.ray_kernels.ray_chunk_split`). Evens out the noise between the
        near and the far side of thick phantoms. One 120 kVp projection, 2e6 photons, 2
        workers (``benchmarks/bench_mc.py``): with expected track length the mean relative
        error over the body falls 3.2-fold in the 32 cm water cylinder for 4.2 times the run
        time (2.3x the efficiency), 1.6-fold in the demo thorax (1.14x the efficiency) and
        1.7-fold in the paper thorax (no gain); with track length 3.4-fold in water (2.5x).
        With the track-length estimator a helical CT scan gained nothing. With a narrow beam
        in a long phantom it also multiplies the photons in the scatter far from the beam
        (TG-195 Case 4, 10 mm: 4x the time); a larger ``window_min_weight`` bounds that. The
        pilot (5 % of ``n_photons``, at least 20 000) is not part of the result; its time is.
    window_min_weight : float, optional
        Smallest target weight, in (0, 1]: at most ``1/window_min_weight`` times more photons
        than at the entrance (default ``weight_window.DEFAULT_MIN_WEIGHT`` = 1/64).
    source_sampling : "sobol" (default) or "random"
        How source photons are drawn: from one scrambled Sobol' sequence per batch
        (randomised quasi-Monte Carlo, :mod:`ctdose.physics.quasi_random`; for sources with
        ``sample_dims`` and ``sample(n, gen, u)``, others are drawn at random), or from
        independent random numbers. Both are unbiased and keep the batches independent; the
        Sobol' points spread each batch's primary rays evenly, which lowers the noise of the
        expected-track-length estimator's primary dose.
    fluorescence_min_kev : float or None
        Fluorescence lines of at least this energy (keV; default
        :data:`ctdose.physics.fluorescence.FLUORESCENCE_MIN_KEV` = 10 keV) leave a
        photoabsorption as photons, isotropically, and are transported (iodine, barium,
        gadolinium, tin, tungsten, lead: their K lines); weaker lines, cascades and Auger
        electrons are deposited at the absorption. None: every line is deposited there (as
        codes without atomic relaxation do). No element of the body has a line of 10 keV or
        more, so this changes nothing for body media. See :mod:`ctdose.physics.fluorescence`.

    Returns
    -------
    DoseResult

    Raises
    ------
    InputError
        Zero photons, bad geometry (negative density, medium without composition or whose
        mass fractions do not sum to 1), a source that misses the grid, a spectrum with NaN,
        an unknown estimator or device; before any work: ``n_photons``, ``n_batches``,
        ``seed``, ``workers``, ``pool_size`` or ``block_vox`` not an integer in range (a float
        is taken only when integral, e.g. ``1e6``), a ``majorant_floor_per_mm`` or
        ``track_spacing_mm`` that is not finite and positive (the floor may be 0), an
        ``energy_cutoff_kev`` at or above the source's highest energy, a
        ``fluorescence_min_kev`` that is neither None nor a positive number, ``progress``,
        ``keep_batches``, ``weight_window`` or ``compile`` not a bool (``compile`` may be None),
        a ``window_min_weight`` without ``weight_window=True`` or outside (0, 1], a source whose
        ``max_energy_kev`` or probe photons are bad (see ``source``).

    A :class:`ctdose.materials.Medium` built directly whose fractions sum to 1 within 1 % is
    transported renormalised, exactly as :func:`ctdose.materials.custom_medium` builds it.
    """
    n_photons, n_batches, estimator, cutoff = check_run_settings(n_photons, n_batches, estimator, energy_cutoff_kev)
    if fluorescence_min_kev is not None:
        fl_min = _as_real(fluorescence_min_kev)
        if fl_min is None or fl_min <= 0:
            raise InputError(f"simulate: fluorescence_min_kev must be a positive number (keV) or None, "
                             f"got {fluorescence_min_kev!r}")
        fluorescence_min_kev = fl_min
    seed_in, seed = seed, _as_int(seed)
    if seed is None or not 0 <= seed < 2**63:
        raise InputError(f"simulate: seed must be an integer in [0, 2**63), got {seed_in!r}")
    workers_in, workers = workers, _as_int(workers)
    if workers is None or workers < 1:
        raise InputError(f"simulate: workers must be an integer >= 1, got {workers_in!r}")
    if pool_size is not None:
        # the pool is topped up below half of pool_size: 0 or 1 would never draw a photon
        pool_in, pool_size = pool_size, _as_int(pool_size)
        if pool_size is None or pool_size < 2:
            raise InputError(f"simulate: pool_size must be None or an integer >= 2, got {pool_in!r}")
    block_in, block_vox = block_vox, _as_int(block_vox)
    if block_vox is None or block_vox < 1:
        raise InputError(f"simulate: block_vox must be an integer >= 1, got {block_in!r}")
    floor = _as_real(majorant_floor_per_mm)
    if floor is None or floor < 0:
        raise InputError(f"simulate: majorant_floor_per_mm must be a finite number >= 0, got {majorant_floor_per_mm!r}")
    majorant_floor_per_mm = floor
    if track_spacing_mm is not None:
        spacing = _as_real(track_spacing_mm)
        if spacing is None or spacing <= 0:
            raise InputError(f"simulate: track_spacing_mm must be None or a finite number > 0, got {track_spacing_mm!r}")
        track_spacing_mm = spacing
    if majorant not in ("auto", "global", "block"):
        raise InputError(f"simulate: majorant must be 'auto', 'global' or 'block', got {majorant!r}")
    if source_sampling not in SOURCE_SAMPLING:
        raise InputError(f"simulate: source_sampling must be one of {', '.join(SOURCE_SAMPLING)}, "
                         f"got {source_sampling!r}")
    progress = _check_flag(progress, "progress")
    keep_batches = _check_flag(keep_batches, "keep_batches")
    weight_window = _check_flag(weight_window, "weight_window")
    compile = _check_flag(compile, "compile", allow_none=True)
    if window_min_weight is not None and not weight_window:
        raise InputError(f"simulate: window_min_weight ({window_min_weight!r}) is given but weight_window is off; "
                         "pass weight_window=True, or leave window_min_weight at None")
    if window_min_weight is not None:
        min_weight = _as_real(window_min_weight)
        if min_weight is None or not 0.0 < min_weight <= 1.0:
            raise InputError(f"simulate: window_min_weight must be in (0, 1], got {window_min_weight!r}")
    else:
        min_weight = DEFAULT_MIN_WEIGHT
    sample_dims = int(getattr(source, "sample_dims", 0)) if source_sampling == "sobol" else 0
    max_energy_kev = _source_max_energy(source)
    if cutoff >= max_energy_kev:
        # every photon would deposit its whole energy at its first interaction
        raise InputError(
            f"simulate: energy_cutoff_kev ({cutoff:g} keV) must be below the source's highest energy "
            f"({max_energy_kev:g} keV)"
        )
    dev = resolve_device(device)
    geometry.validate()
    if not np.any(np.asarray(geometry.density_g_cm3) > 0):
        warnings.warn(
            f"simulate: the voxel grid {tuple(geometry.shape)} has no matter (every density is 0 g/cm^3): every "
            "photon crosses it unscattered and the dose is 0 everywhere",
            RuntimeWarning,
            stacklevel=2,
        )
    if majorant == "auto":
        # the expected-track-length flights need no majorant; its weight window needs the blocks
        wants_block = estimator == "track_length" or (estimator == "expected_track_length" and weight_window)
        majorant = "block" if wants_block else "global"
    if weight_window and (estimator not in WINDOW_ESTIMATORS or majorant != "block"):
        raise InputError(
            f"simulate: weight_window needs the expected_track_length or track_length estimator with the block "
            f"majorant, got estimator={estimator!r}, majorant={majorant!r}"
        )
    t0 = time.perf_counter()
    mi = np.asarray(geometry.media_index)
    rho = np.asarray(geometry.density_g_cm3, dtype=np.float32)
    # a Medium built directly with fractions summing to 1 within 1 % goes in renormalised, as
    # custom_medium builds it (the shipped media and custom_medium's go in as given)
    media = [_clean_composition(m, f"VoxelGeometry: media[{i}]", "VoxelGeometry: ")
             for i, m in enumerate(geometry.media)]
    ambient_medium = _ambient_medium(ambient)
    probe = _probe_source(source, dev, max_energy_kev)
    prep = prepare_transport(
        mi, rho, media, geometry.spacing_mm, geometry.origin_mm, max_energy_kev, dev,
        estimator, majorant, block_vox, majorant_floor_per_mm, track_spacing_mm, compile, ambient_medium,
        fluorescence_min_kev,
    )
    grid, tables, block, track_setup = prep.grid, prep.tables, prep.block, prep.track_setup
    _check_source_reaches(grid, probe)
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    pool = pool_size if pool_size is not None else POOL_SIZE.get(dev.type, 1 << 17)
    window = None
    if weight_window:
        window = _pilot_window(geometry, prep, source, n_photons, int(seed), float(energy_cutoff_kev), pool, min_weight)
    sizes = [n_photons // n_batches + (1 if b < n_photons % n_batches else 0) for b in range(n_batches)]
    # all batches share one photon pool unless their tallies would not fit in memory. With
    # workers > 1 the batches are split into that many groups, each with its own generator:
    # the eager (analogue) estimator runs them in threads (torch releases the GIL in its kernels);
    # the compiled kernels hold the GIL, so their groups go to worker processes
    # (ctdose.physics.mc_workers), or, where processes cannot be started, the kernels use
    # several OpenMP threads instead.
    from . import mc_workers

    fused = track_setup is not None and track_setup.compiled
    cpu_parallel = dev.type == "cpu" and int(workers) > 1
    use_processes = cpu_parallel and fused and mc_workers.can_use_processes()
    n_threads = max(1, int(workers)) if (cpu_parallel and fused and not use_processes) else 1
    n_workers = max(1, min(int(workers), n_batches)) if (cpu_parallel and (use_processes or not fused)) else 1
    per_worker = np.array_split(np.arange(n_batches), n_workers)
    if n_batches * grid.n_vox * 8 <= _MAX_TALLY_BYTES:
        groups = [[sizes[i] for i in idx] for idx in per_worker]
    else:
        groups = [[nb] for nb in sizes]
    s1 = torch.zeros(grid.n_vox, dtype=torch.float64, device=dev)
    s2 = torch.zeros(grid.n_vox, dtype=torch.float64, device=dev)
    escaped = emitted = 0.0
    steps = 0
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=n_photons, unit="ph", unit_scale=True, desc="MC")

    def run_group(group, group_gen):
        return run_transport(
            grid,
            tables,
            source.sample,
            group,
            group_gen,
            estimator=estimator,
            cutoff_kev=float(energy_cutoff_kev),
            pool_size=pool,
            on_progress=(bar.update if bar is not None else None),
            block=block,
            track_setup=track_setup,
            ambient=prep.ambient,
            window=window,
            sample_dims=sample_dims,
        )

    # one batch's mean per photon (keV) and its square: buffers reused for every batch
    buf = {"mean": torch.empty_like(s1), "square": torch.empty_like(s1)}
    kept = {"ev": np.empty((n_batches, grid.n_vox), np.float32), "n": 0} if keep_batches else None

    def add_group(group, tally):
        nonlocal escaped, emitted, steps
        per = tally.energy_kev.view(len(group), grid.n_vox)
        # in place, with the caller's threads (elementwise: the same sums on any thread count)
        with _torch_threads(saved_threads if dev.type == "cpu" else None):
            mean_b = buf["mean"]
            for i, nb in enumerate(group):
                torch.div(per[i], nb, out=mean_b)
                s1.add_(mean_b)
                s2.add_(torch.mul(mean_b, mean_b, out=buf["square"]))
                if kept is not None:  # eV per photon as float32, straight into the array of all batches
                    torch.from_numpy(kept["ev"][kept["n"]]).copy_(torch.mul(mean_b, 1e3, out=buf["square"]))
                    kept["n"] += 1
        escaped += tally.escaped_kev
        emitted += tally.emitted_kev
        steps += tally.n_steps

    # CPU: one intra-op thread per worker (intra-op threads scale poorly on the eager photon
    # arrays and collapse on a shared, busy machine); parallelism comes from workers
    saved_threads = torch.get_num_threads()
    try:
        with _torch_threads(n_threads if dev.type == "cpu" else None):
            if n_workers > 1 and len(groups) == n_workers and use_processes:
                jobs = [
                    mc_workers.GroupJob(
                        mi, rho, list(media), tuple(geometry.spacing_mm), tuple(geometry.origin_mm), source,
                        list(group), int(seed) + _WORKER_SEED_STRIDE * g, estimator, float(energy_cutoff_kev), pool,
                        float(majorant_floor_per_mm), track_spacing_mm, compile, majorant, int(block_vox),
                        ambient_medium, None if window is None else window.target.cpu().numpy(), sample_dims,
                        fluorescence_min_kev,
                    )
                    for g, group in enumerate(groups[1:], start=1)
                ]
                futures = mc_workers.submit(jobs)
                tallies = [run_group(groups[0], gen)]
                for fut, group in zip(futures, groups[1:]):
                    r = fut.result()
                    tallies.append(
                        TransportTally(torch.from_numpy(r.energy_kev).to(dev), r.escaped_kev, r.emitted_kev, r.n_steps)
                    )
                    if bar is not None:
                        bar.update(int(sum(group)))
            elif n_workers > 1 and len(groups) == n_workers:
                from concurrent.futures import ThreadPoolExecutor

                gens = [gen]
                for g in range(1, n_workers):
                    extra = torch.Generator(device=dev)
                    extra.manual_seed(int(seed) + _WORKER_SEED_STRIDE * g)
                    gens.append(extra)
                with ThreadPoolExecutor(n_workers) as ex:
                    tallies = list(ex.map(run_group, groups, gens))
            else:
                # one group after the other, each added as soon as it is done: with one batch per
                # group (tallies above _MAX_TALLY_BYTES) only one batch's tally is held at a time
                for group in groups:
                    add_group(group, run_group(group, gen))
                tallies = []
    finally:
        if bar is not None:
            bar.close()
    # the parallel groups' statistics with the caller's threads (elementwise: the same result)
    for group, tally in zip(groups, tallies):
        add_group(group, tally)
    buf.clear()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    # batch statistics in place on the CPU arrays (s1 becomes the mean, s2 the relative
    # standard error; the same arithmetic as out-of-place numpy, without the temporaries)
    b = float(n_batches)
    mean = np.divide(s1.cpu().numpy(), b)
    var_mean = s2.cpu().numpy()
    np.divide(var_mean, b, out=var_mean)
    var_mean -= mean * mean
    np.clip(var_mean, 0.0, None, out=var_mean)
    var_mean /= b - 1.0
    positive = mean > 0
    rel = np.sqrt(var_mean, out=var_mean)
    np.divide(rel, mean, out=rel, where=positive)
    rel[~positive] = 1.0
    # weighting of batches: equal sizes up to one photon; mean per photon over all batches
    shape = geometry.shape
    energy_kev = mean.reshape(shape)
    mass = geometry.voxel_mass_kg()
    dose = np.zeros(shape)
    np.multiply(energy_kev, J_PER_KEV, out=dose)
    np.divide(dose, mass, out=dose, where=mass > 0)
    dose[~(mass > 0)] = 0.0
    scale = getattr(source, "dose_scale_per_mas", None)
    per_mas = scale is not None
    if per_mas:
        dose *= float(scale)
    wall = time.perf_counter() - t0
    return DoseResult(
        energy_ev=energy_kev * 1e3,
        dose_gy=dose,
        rel_sigma=rel.reshape(shape),
        escaped_energy_ev=escaped / n_photons * 1e3,
        emitted_energy_ev=emitted / n_photons * 1e3,
        deposited_energy_ev=float(energy_kev.sum()) * 1e3,
        n_photons=n_photons,
        n_batches=n_batches,
        wall_s=wall,
        per_mas=per_mas,
        dose_scale_per_mas=(float(scale) if per_mas else None),
        estimator=estimator,
        device=str(dev),
        n_steps=steps,
        batch_energy_ev=(kept["ev"].reshape((n_batches,) + tuple(geometry.shape)) if kept is not None else None),
    )


def _pilot_window(geometry, prep, source, n_photons: int, seed: int, cutoff_kev: float, pool: int,
                  min_weight: float):
    """Weight window from a pilot run (its own random stream; not part of the result)."""
    from .weight_window import REFERENCE_ENERGY_KEV, WeightWindow, pilot_photons, window_targets

    grid, tables, block, ts = prep.grid, prep.tables, prep.block, prep.track_setup
    gen = torch.Generator(device=grid.density.device)
    gen.manual_seed(int(np.random.SeedSequence([int(seed), _PILOT_STREAM]).generate_state(1)[0]))
    tally = run_transport(grid, tables, source.sample, [pilot_photons(n_photons)], gen, estimator="track_length",
                          cutoff_kev=cutoff_kev, pool_size=pool, block=block, track_setup=ts, ambient=prep.ambient)
    ie, fe = tables.energy_index(torch.tensor([REFERENCE_ENERGY_KEV], device=grid.density.device))
    rows = torch.arange(len(geometry.media), device=ie.device) * tables.n_rows + ie
    tr = (tables.tr_a[rows] + fe * tables.tr_b[rows]).cpu().numpy()
    target = window_targets(tally.energy_kev.cpu().numpy().reshape(geometry.shape), geometry.media_index,
                            geometry.density_g_cm3, tr, block.block_vox, block.n_blocks, min_weight)
    return WeightWindow(torch.from_numpy(target).to(grid.density.device), ts.block_f, ts.grid_f, ts.block_i)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (None: leave them), then restore."""
    saved = torch.get_num_threads()
    if n is None or n == saved:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def geometry_from_case(case_ds, density_set: str = "paper") -> VoxelGeometry:
    """Voxel geometry of a stored case: labels -> media (``organs.csv``) -> mass densities.

    Parameters
    ----------
    case_ds : xarray.Dataset
        A case from :class:`ctdose.store.CaseStore` with ``labels`` [z, y, x] and the
        ``spacing_mm`` / ``origin_mm`` attributes (or z/y/x coordinates in mm).
    density_set : "paper" | "icru46"

    Returns
    -------
    VoxelGeometry

    Raises
    ------
    InputError
        No ``labels``, a label without a medium, or an unknown voxel grid: neither the
        attributes nor uniform coordinates, or an axis of one voxel without ``spacing_mm``.
    """
    from ..materials import get_medium, medium_index_map, medium_of_label

    if "labels" not in case_ds:
        raise InputError(f"case {case_ds.attrs.get('case_id', '?')}: no 'labels' variable")
    labels = np.asarray(case_ds["labels"].values)
    names_of_label = list(medium_of_label())
    if labels.size and int(labels.max()) >= len(names_of_label):
        raise InputError(
            f"case {case_ds.attrs.get('case_id', '?')}: label {int(labels.max())} is not in organs.csv"
        )
    present = [int(v) for v in np.unique(labels)]
    missing = [v for v in present if not names_of_label[v]]
    if missing:
        raise InputError(
            f"case {case_ds.attrs.get('case_id', '?')}: label ids {missing} have no medium in ctdose/data/organs.csv"
        )
    used = sorted({names_of_label[v] for v in present})
    media = [get_medium(n, density_set=density_set) for n in used]
    mi = np.asarray(medium_index_map(labels, used), dtype=np.uint8)
    rho = np.array([m.density_g_cm3 for m in media], dtype=np.float32)[mi]
    spacing, origin = _grid_of(case_ds)
    return VoxelGeometry(mi, rho, media, spacing, origin)


def _grid_of(case_ds) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Spacing and origin (z, y, x) of a case: its ``spacing_mm`` and ``origin_mm`` attributes,
    else its z/y/x coordinates (uniform, within ``_UNIFORM_SPACING_RTOL``); an axis of one
    voxel takes its spacing from the ``spacing_mm`` attribute. Nothing is assumed.

    Raises
    ------
    InputError
        A case without the attributes whose coordinates are missing or not uniform, or an axis of
        one voxel without a ``spacing_mm`` attribute.
    """
    attrs = case_ds.attrs
    if "spacing_mm" in attrs and "origin_mm" in attrs:
        return tuple(float(v) for v in attrs["spacing_mm"]), tuple(float(v) for v in attrs["origin_mm"])
    case = f"case {attrs.get('case_id', '?')}"
    sp, og = [], []
    for i, dim in enumerate(("z", "y", "x")):
        c = np.asarray(case_ds[dim].values, dtype=float) if dim in case_ds.coords else np.empty(0)
        if c.size == 0:
            raise InputError(f"{case}: no 'spacing_mm'/'origin_mm' attributes and no {dim!r} coordinates (mm): the "
                             "voxel grid is unknown")
        if c.size > 1:
            d = np.diff(c)
            if not (np.all(np.isfinite(c)) and np.all(np.abs(d - d[0]) <= _UNIFORM_SPACING_RTOL * abs(d[0]))):
                raise InputError(f"{case}: the {dim!r} coordinates are not uniformly spaced (steps "
                                 f"{float(d.min()):g}..{float(d.max()):g} mm); give a uniform grid or the "
                                 "'spacing_mm'/'origin_mm' attributes")
            sp.append(float(c[1] - c[0]))
        elif "spacing_mm" in attrs:
            sp.append(float(attrs["spacing_mm"][i]))
        else:
            raise InputError(f"{case}: the {dim!r} axis has one voxel and the case no 'spacing_mm' attribute: its "
                             "spacing is unknown")
        og.append(float(c[0]))
    return tuple(sp), tuple(og)
