"""Numeric columns of a user's CSV file (spectra, bowtie profiles, tube-current records), with
errors that name the file and what is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["read_number_columns"]


def read_number_columns(path: str | Path, columns: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """The columns ``columns`` of the CSV file ``path`` as float64 arrays, in file order.

    Lines starting with ``#`` are comments; column names match without regard to case and
    surrounding blanks; other columns are ignored.

    Parameters
    ----------
    path : str or Path
    columns : sequence of str
        The column names needed.
    what : str
        What the file holds, for the messages ("spectrum", "tube-current", ...).

    Raises
    ------
    InputError
        No such file, not a readable CSV table, a missing column or a value that is not a
        number; the message names the file.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     f = os.path.join(d, "s.csv")
    ...     _ = open(f, "w").write("# a comment\\nEnergy_keV, weight\\n30, 1\\n40, 2\\n")
    ...     read_number_columns(f, ["energy_kev", "weight"], "spectrum")["weight"].tolist()
    [1.0, 2.0]
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what} file")
    try:
        table = pd.read_csv(path, comment="#", skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV table ({exc})") from None
    names = {str(c).strip().lower(): c for c in table.columns}
    missing = [c for c in columns if c.lower() not in names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (a {what} file needs "
                         f"{', '.join(columns)}; found {', '.join(map(str, table.columns)) or 'none'})")
    try:
        return {c: pd.to_numeric(table[names[c.lower()]], errors="raise").to_numpy(np.float64) for c in columns}
    except (TypeError, ValueError):
        raise InputError(f"{path}: {', '.join(columns)} must be numbers") from None
