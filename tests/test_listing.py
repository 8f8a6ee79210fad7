"""Tests of ctdose._listing: the short name lists of messages."""

from ctdose._listing import first_names


def test_first_names_cut_the_list_after_three():
    assert first_names([]) == ""
    assert first_names(["a"]) == "a"
    assert first_names(["a", "b", "c"]) == "a, b, c"
    assert first_names(["a", "b", "c", "d"]) == "a, b, c, ..."
    assert first_names(["a", "b"], shown=1) == "a, ..."
