"""Reference tables shipped with the package.

Every table is a CSV file under ``ctdose/data/`` whose first lines are comments
(``# ...``) citing the source; at least one of them starts with ``# source:``.
Tables are read with :mod:`importlib.resources`, so they work from a wheel too.
"""

from __future__ import annotations

import io
from functools import lru_cache
from importlib import resources

import pandas as pd

from .errors import InputError

__all__ = ["read_table", "table_row", "table_source"]


def _text(name: str) -> str:
    ref = resources.files("ctdose") / "data" / name
    if not ref.is_file():
        raise InputError(f"ctdose/data/{name}: no such reference table")
    return ref.read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _cached(name: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(_text(name)), comment="#", skipinitialspace=True)


def read_table(name: str) -> pd.DataFrame:
    """Read a shipped reference table.

    Parameters
    ----------
    name : str
        File name under ``ctdose/data/`` (for example ``"organs.csv"``).

    Returns
    -------
    pandas.DataFrame
        A fresh copy; callers may modify it.
    """
    return _cached(name).copy()


def table_row(name: str, column: str, value) -> pd.Series:
    """The row of a shipped table whose ``column`` equals ``value``.

    Raises
    ------
    InputError
        No such row; the message names the file and the values it has.
    """
    table = _cached(name)
    hit = table[table[column] == value]
    if hit.empty:
        raise InputError(f"ctdose/data/{name}: no {column} {value!r} (has {', '.join(map(str, table[column]))})")
    return hit.iloc[0].copy()


def table_source(name: str) -> str:
    """Return the comment header of a shipped table (its citation), without ``#``."""
    lines = []
    for line in _text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines)
