"""Numeric columns of a user's CSV file (spectra, bowtie profiles, tube-current records), with
errors that name the file and what is wrong."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["read_number_columns"]

#: Starts a comment: the rest of the line is ignored (pandas' ``comment``).
_COMMENT = "#"


def _check_field_counts(path: Path, what: str) -> None:
    """Refuse a data row whose number of fields differs from the header's, naming its line.

    pandas would take a first column without a header for the index (shifting every value one
    column over) and pad short rows with NaN. Blank and comment lines are skipped, as pandas
    skips them; a trailing comma is one more (empty) field.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a readable CSV table ({exc})") from None
    header = None
    for number, line in enumerate(lines, start=1):
        body = line.split(_COMMENT, 1)[0]
        if not body.strip():
            continue
        try:
            fields = next(csv.reader([body], skipinitialspace=True))
        except csv.Error as exc:
            raise InputError(f"{path}, line {number}: not a readable CSV row ({exc})") from None
        if header is None:
            header = (number, len(fields))
            continue
        if len(fields) != header[1]:
            hint = " (a trailing comma adds an empty field)" if fields[-1].strip() == "" else ""
            plural = "s" if len(fields) != 1 else ""
            raise InputError(
                f"{path}, line {number}: {len(fields)} field{plural}, but the header (line {header[0]}) has {header[1]}"
                f"{hint}; every row of a {what} file must have one value per column"
            )


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
        No such file, not a readable CSV table, a row with more or fewer fields than the
        header, no data rows, a missing column or a value that is not a number; the message
        names the file (and the line of a bad row).

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
    _check_field_counts(path, what)
    try:
        table = pd.read_csv(path, comment=_COMMENT, skipinitialspace=True, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV table ({exc})") from None
    names = {str(c).strip().lower(): c for c in table.columns}
    missing = [c for c in columns if c.lower() not in names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (a {what} file needs "
                         f"{', '.join(columns)}; found {', '.join(map(str, table.columns)) or 'none'})")
    if len(table) == 0:
        raise InputError(f"{path}: no data rows below the header (a {what} file needs rows of {', '.join(columns)})")
    try:
        return {c: pd.to_numeric(table[names[c.lower()]], errors="raise").to_numpy(np.float64) for c in columns}
    except (TypeError, ValueError):
        raise InputError(f"{path}: {', '.join(columns)} must be numbers") from None
