"""Conversion of attribute and metadata values to plain Python (JSON) types."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["to_plain"]


def to_plain(value: Any, what: str = "attribute") -> Any:
    """Nested mappings/sequences of numpy scalars, arrays and paths as dict/list/int/float/str.

    Raises
    ------
    InputError
        A value that has no plain (JSON) form; the message names ``what`` it is.
    """
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, what) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, what) for v in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist(), what)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise InputError(f"{what} value {value!r} of type {type(value).__name__} is not JSON-serialisable")
