"""Min-max normalisation of network inputs and targets to [0.001, 1] (paper 2.3.2).

Each quantity (electron density, air-kerma map, MC dose) is mapped linearly with
dataset-wide constants::

    x_n = 0.001 + (x - x_min) / (x_max - x_min) * (1 - 0.001)

The constants are the minimum and maximum over **all voxels of the whole volumes** of a
model's *training* cases (not only body voxels): then every voxel a training patch can
contain, air included, lies in [0.001, 1]. Validation and test cases use the same
constants (values outside the training range map slightly outside [0.001, 1]; nothing is
clipped). The constants travel with the model in its checkpoint so that predictions are
converted back to Gy per mAs with :meth:`Normaliser.dose_from_normalised` and
:meth:`Normaliser.sigma_from_normalised`.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = [
    "KERMA_MODES",
    "NORMALISED_HIGH",
    "NORMALISED_LOW",
    "MinMax",
    "Normaliser",
    "case_ranges",
    "fit_normaliser",
    "kerma_variable",
]

NORMALISED_LOW = 0.001
"""Lower end of the normalised range (paper: 0.001)."""
NORMALISED_HIGH = 1.0
"""Upper end of the normalised range (paper: 1)."""
KERMA_MODES = ("cylinder", "patient")
"""Air-kerma input maps: the paper's 32 cm water cylinder, or patient-specific."""
DENSITY_VARIABLE = "density_e"
DOSE_VARIABLE = "dose_mc"


def kerma_variable(kerma_mode: str) -> str:
    """Store variable of a kerma input mode (``"cylinder"`` -> ``"kerma_cylinder"``)."""
    if kerma_mode not in KERMA_MODES:
        raise InputError(f"kerma mode {kerma_mode!r}: expected one of {', '.join(KERMA_MODES)}")
    return f"kerma_{kerma_mode}"


@dataclass(frozen=True)
class MinMax:
    """A min-max map of one quantity ``[lo, hi] -> [0.001, 1]`` (lo, hi in physical units)."""

    lo: float
    hi: float

    def __post_init__(self):
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.hi > self.lo):
            raise InputError(f"min-max normalisation: need finite lo < hi, got lo={self.lo}, hi={self.hi}")

    @property
    def scale(self) -> float:
        """Physical units per normalised unit."""
        return (self.hi - self.lo) / (NORMALISED_HIGH - NORMALISED_LOW)

    def forward(self, x):
        """Physical -> normalised."""
        return NORMALISED_LOW + (x - self.lo) / self.scale

    def inverse(self, x_n):
        """Normalised -> physical."""
        return self.lo + (x_n - NORMALISED_LOW) * self.scale


@dataclass(frozen=True)
class Normaliser:
    """Normalisation constants of one model: density (m^-3), kerma and dose (Gy per mAs)."""

    density: MinMax
    kerma: MinMax
    dose: MinMax

    def inputs(self, density_e: np.ndarray, kerma_gy_per_mas: np.ndarray) -> np.ndarray:
        """Stack the normalised inputs as float32 ``[2, z, y, x]`` (density, kerma)."""
        return np.stack(
            [self.density.forward(np.asarray(density_e, np.float64)),
             self.kerma.forward(np.asarray(kerma_gy_per_mas, np.float64))]
        ).astype(np.float32)

    def dose_to_normalised(self, dose_gy_per_mas: np.ndarray) -> np.ndarray:
        """MC dose (Gy per mAs) -> normalised float32."""
        return self.dose.forward(np.asarray(dose_gy_per_mas, np.float64)).astype(np.float32)

    def dose_from_normalised(self, mu_n):
        """Normalised dose -> Gy per mAs."""
        return self.dose.inverse(mu_n)

    def sigma_from_normalised(self, sigma_n):
        """A standard deviation in normalised units -> Gy per mAs (scale only, no offset)."""
        return sigma_n * self.dose.scale

    def to_dict(self) -> dict:
        """Plain floats (stored in checkpoints)."""
        return {name: [float(getattr(self, name).lo), float(getattr(self, name).hi)]
                for name in ("density", "kerma", "dose")}

    @classmethod
    def from_dict(cls, data: dict) -> "Normaliser":
        try:
            return cls(**{name: MinMax(float(data[name][0]), float(data[name][1]))
                          for name in ("density", "kerma", "dose")})
        except (KeyError, IndexError, TypeError) as exc:
            raise InputError(f"normalisation constants {data!r}: malformed ({exc})") from None


def case_ranges(store, case_id: str, variables: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Minimum and maximum of each variable over the whole volume of one case.

    Reads one variable of one case at a time.
    """
    ds = store.read_case(case_id, variables=list(variables))
    ranges = {}
    for name in variables:
        values = np.asarray(ds[name].values)
        if not np.all(np.isfinite(values)):
            raise InputError(f"case {case_id!r}, variable {name!r}: holds NaN or infinite values")
        ranges[name] = (float(values.min()), float(values.max()))
    return ranges


def fit_normaliser(
    store,
    case_ids: Iterable[str],
    kerma_mode: str,
    cache: MutableMapping | None = None,
) -> Normaliser:
    """Dataset-wide min-max constants over the whole volumes of `case_ids` (training cases).

    Parameters
    ----------
    store : CaseStore
    case_ids : iterable of str
        The model's training cases.
    kerma_mode : str
        ``"cylinder"`` or ``"patient"``: which kerma map is the second input.
    cache : dict, optional
        ``{(case_id, variable): (min, max)}``, filled and reused across calls.
    """
    case_ids = list(case_ids)
    if not case_ids:
        raise InputError("fit_normaliser: no training cases")
    names = {"density": DENSITY_VARIABLE, "kerma": kerma_variable(kerma_mode), "dose": DOSE_VARIABLE}
    cache = {} if cache is None else cache
    lo = {k: np.inf for k in names}
    hi = {k: -np.inf for k in names}
    for case_id in case_ids:
        missing = [v for v in names.values() if (case_id, v) not in cache]
        if missing:
            for var, rng in case_ranges(store, case_id, missing).items():
                cache[(case_id, var)] = rng
        for key, var in names.items():
            a, b = cache[(case_id, var)]
            lo[key], hi[key] = min(lo[key], a), max(hi[key], b)
    return Normaliser(**{k: MinMax(lo[k], hi[k]) for k in names})
