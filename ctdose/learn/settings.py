"""The ``train`` section of a profile, checked before any work (``ctdose run``, ``ctdose profile``).

Notebook 03 trains after the phantoms and the Monte Carlo of notebooks 01-02 (minutes to
hours); a bad training value found only there would waste that work. :func:`check_train_profile`
applies the ranges that every part of the training takes for granted (counts are positive
integers, fractions lie in their intervals, the schedule is a known one) and names the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import as_int, as_real, number_from_text
from ..errors import ConfigError

__all__ = ["LR_SCHEDULES", "check_train_profile"]

#: Learning-rate schedules: constant, or cosine annealing from the initial rate to 0 over the
#: epochs (:class:`ctdose.learn.module.DoseModule`).
LR_SCHEDULES = ("constant", "cosine")

#: Keys that count something: integers >= 1.
POSITIVE_COUNTS = ("members", "width", "depth", "patch_size", "patches_per_epoch", "batch_size", "epochs",
                   "checkpoint_every", "val_patches", "cache_cases", "infer_batch_size")
#: Keys that are integers >= 1 or null.
OPTIONAL_COUNTS = ("val_organ_cases", "infer_window")
#: Keys that are integers >= 0.
NON_NEGATIVE_COUNTS = ("bn_calibration_patches",)
#: Keys that are true or false.
FLAGS = ("start_at_mean_dose", "lazy_patches")


def check_train_profile(cfg: Mapping[str, Any]) -> None:
    """Check a profile's ``train`` section; keys that are absent are not checked.

    Parameters
    ----------
    cfg : Profile
        Uses ``train.*``: the counts of :data:`POSITIVE_COUNTS`, :data:`OPTIONAL_COUNTS` and
        :data:`NON_NEGATIVE_COUNTS`, ``mixes_percent_real`` (a non-empty list of percentages in
        [0, 100]), ``learning_rate`` (> 0), ``lr_schedule`` (:data:`LR_SCHEDULES`),
        ``val_fraction`` and ``infer_overlap`` (in [0, 1)), ``floor_fraction`` (>= 0) and the flags of :data:`FLAGS`.

    Raises
    ------
    ConfigError
        The message names the profile, the key and the value.
    """
    train = cfg.get("train", {}) or {}
    where = f"profile {cfg['name']!r}: train." if cfg.get("name") else "train."
    for key in POSITIVE_COUNTS + OPTIONAL_COUNTS + NON_NEGATIVE_COUNTS:
        if key not in train or (train[key] is None and key in OPTIONAL_COUNTS):
            continue
        low = 0 if key in NON_NEGATIVE_COUNTS else 1
        value = _integer(train[key])
        if value is None or value < low:
            kind = "an integer >= 0" if low == 0 else "a positive integer"
            raise ConfigError(f"{where}{key} must be {kind}{' or null' if key in OPTIONAL_COUNTS else ''}, "
                              f"got {train[key]!r}")
    if "mixes_percent_real" in train:
        mixes = train["mixes_percent_real"]
        if isinstance(mixes, str) or not isinstance(mixes, (list, tuple)) or not mixes or any(
                not _in_range(m, 0.0, 100.0, upper_closed=True) for m in mixes):
            raise ConfigError(f"{where}mixes_percent_real must be a non-empty list of percentages in [0, 100], "
                              f"got {mixes!r}")
    _check_real(train, "learning_rate", where, lambda v: v > 0, "a number > 0")
    _check_real(train, "val_fraction", where, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
    _check_real(train, "infer_overlap", where, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
    _check_real(train, "floor_fraction", where, lambda v: v >= 0, "a number >= 0")
    if "lr_schedule" in train and train["lr_schedule"] not in LR_SCHEDULES:
        raise ConfigError(f"{where}lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                          f"got {train['lr_schedule']!r}")
    for key in FLAGS:
        if key in train and not isinstance(train[key], bool):
            raise ConfigError(f"{where}{key} must be true or false, got {train[key]!r}")


def _real(value: Any) -> float | None:
    """``value`` (a number, or one written as text) as a finite float, else None."""
    return as_real(number_from_text(value))


def _integer(value: Any) -> int | None:
    """``value`` as an int if it is integral (16, 16.0, "16"; not 16.5), else None."""
    return as_int(number_from_text(value))


def _in_range(value: Any, low: float, high: float, upper_closed: bool = False) -> bool:
    real = _real(value)
    return real is not None and low <= real and (real <= high if upper_closed else real < high)


def _check_real(train: Mapping[str, Any], key: str, where: str, rule, text: str) -> None:
    if key not in train:
        return
    real = _real(train[key])
    if real is None or not rule(real):
        raise ConfigError(f"{where}{key} must be {text}, got {train[key]!r}")
