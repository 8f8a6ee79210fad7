import numpy as np
import pytest

from ctdose._data import read_table
from ctdose.anatomy import organs
from ctdose.errors import InputError

ALLOWED_GROUPS = {"muscle", "lung", "fat", "blood", "heart", "kidney", "liver", "pancreas", "brain", "spleen",
                  "red_marrow", "stomach", "gallbladder", "adrenal", "colon", "oesophagus"}


def test_table_is_consistent():
    t = organs.organ_table()
    assert list(t.columns[:5]) == ["id", "name", "tissue_group", "dose_group", "medium"]
    assert t["id"].is_unique and t["name"].is_unique
    assert t.loc[t["id"] == 0, "name"].item() == "air_outside"
    media = set(read_table("media.csv")["name"])
    assert set(t["medium"]) <= media


def test_every_table4_group_has_labels():
    groups = organs.dose_groups()
    assert set(groups) == ALLOWED_GROUPS
    assert groups["kidney"] == [organs.label_id("kidney_right"), organs.label_id("kidney_left")]
    assert organs.label_id("table") not in sum(groups.values(), [])


def test_lookups_and_errors():
    for name in ("liver", "red_marrow", "table", "trachea"):
        assert organs.label_name(organs.label_id(name)) == name
    with pytest.raises(InputError, match="unknown organ"):
        organs.label_id("appendix")
    lut = organs.medium_of_labels()
    assert lut[organs.label_id("table")] == "carbon_fibre"
    assert lut[organs.label_id("trachea")] == "air"
    assert lut[organs.label_id("red_marrow")] == "red_marrow"


def test_body_mask_excludes_air_and_table():
    labels = np.array([[[0, organs.label_id("table"), organs.label_id("skin"), organs.label_id("air_in_body")]]],
                      np.uint8)
    assert organs.body_mask(labels).tolist() == [[[0, 0, 1, 1]]]
    organs.check_labels(labels)
    with pytest.raises(InputError, match="250"):
        organs.check_labels(np.array([250], np.uint8), "case x")
