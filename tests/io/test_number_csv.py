"""Tests of ctdose.io.number_csv: numeric columns of a user's CSV file, and the messages for bad files."""

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.io.number_csv import read_number_columns

COLUMNS = ("energy_kev", "weight")


def _write(tmp_path, text):
    f = tmp_path / "table.csv"
    f.write_text(text)
    return f


def test_comment_lines_inline_comments_and_blank_lines_are_not_rows(tmp_path):
    f = _write(tmp_path, "# made by hand\nEnergy_keV, weight  # header\n30, 1\n\n   \n40, 2 # last\n")
    values = read_number_columns(f, COLUMNS, "spectrum")
    np.testing.assert_array_equal(values["energy_kev"], [30.0, 40.0])
    np.testing.assert_array_equal(values["weight"], [1.0, 2.0])


def test_a_row_with_one_field_more_than_the_header_is_refused_with_its_line(tmp_path):
    # pandas took the first column for the index: energies [1, 2], weights [0.1, 0.1]
    f = _write(tmp_path, "energy_kev,weight\n30,1,0.1\n40,2,0.1\n")
    with pytest.raises(InputError) as err:
        read_number_columns(f, COLUMNS, "spectrum")
    assert str(err.value) == (f"{f}, line 2: 3 fields, but the header (line 1) has 2; every row of a spectrum "
                              "file must have one value per column")


def test_a_trailing_comma_is_named_as_an_extra_empty_field(tmp_path):
    f = _write(tmp_path, "# c\nenergy_kev,weight\n30,1\n40,2,\n")
    with pytest.raises(InputError, match=r"line 4: 3 fields, but the header \(line 2\) has 2 "
                                         r"\(a trailing comma adds an empty field\)") as err:
        read_number_columns(f, COLUMNS, "spectrum")
    assert str(f) in str(err.value)


def test_a_short_row_is_refused_with_its_line(tmp_path):
    f = _write(tmp_path, "energy_kev,weight\n30,1\n40\n")
    with pytest.raises(InputError, match=r"table\.csv, line 3: 1 field, but the header \(line 1\) has 2"):
        read_number_columns(f, COLUMNS, "spectrum")


def test_a_header_without_data_rows_is_refused(tmp_path):
    f = _write(tmp_path, "# only a header\nfan_angle_deg,al_thickness_mm\n")
    with pytest.raises(InputError) as err:
        read_number_columns(f, ("fan_angle_deg", "al_thickness_mm"), "bowtie")
    assert str(err.value) == (f"{f}: no data rows below the header (a bowtie file needs rows of "
                              "fan_angle_deg, al_thickness_mm)")


def test_a_missing_file_and_text_values_are_named(tmp_path):
    with pytest.raises(InputError, match="no such spectrum file"):
        read_number_columns(tmp_path / "none.csv", COLUMNS, "spectrum")
    f = _write(tmp_path, "energy_kev,weight\n30,abc\n")
    with pytest.raises(InputError, match=rf"{f}: energy_kev, weight must be numbers"):
        read_number_columns(f, COLUMNS, "spectrum")
