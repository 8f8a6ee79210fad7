"""The shipped reference tables: every one cites its source and parses; one row by key."""

from __future__ import annotations

from importlib import resources

import pytest

from ctdose._data import read_table, table_row, table_source
from ctdose.errors import InputError


def _tables() -> list[str]:
    root = resources.files("ctdose") / "data"
    names = [p.name for p in root.iterdir() if p.name.endswith(".csv")]
    return sorted(names)


@pytest.mark.parametrize("name", _tables())
def test_every_shipped_table_cites_its_source_and_parses(name):
    header = table_source(name)
    assert any(line.startswith("source:") for line in header.splitlines()), f"{name}: no '# source:' line"
    table = read_table(name)
    assert len(table) > 0 and len(table.columns) > 1


def test_table_row_finds_a_row_and_names_the_file_when_it_cannot():
    assert table_row("trs457_limits.csv", "purpose", "adult")["limit_percent"] == 20.0
    with pytest.raises(InputError, match=r"ctdose/data/trs457_limits\.csv: no purpose 'infant' \(has adult, child"):
        table_row("trs457_limits.csv", "purpose", "infant")
    with pytest.raises(InputError, match=r"ctdose/data/nope\.csv: no such reference table"):
        read_table("nope.csv")
