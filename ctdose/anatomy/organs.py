"""The one label scheme of ctdose: label id -> organ name, tissue group, dose group, medium.

The scheme is data, not code: ``ctdose/data/organs.csv`` with columns
``id,name,tissue_group,dose_group,medium,in_body`` (see ``docs/architecture.md``).
Every cohort (synthetic, surrogate, clinical, xcat) is written with these ids, so the
organ-dose groups of the paper's Table 4 (:func:`dose_groups`) and the media of its
Table 2 (:func:`medium_of_labels`) mean the same thing for every case.

Examples
--------
>>> label_id("liver")
12
>>> sorted(dose_groups())[:3]
['adrenal', 'blood', 'brain']
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from .._data import read_table
from ..errors import InputError

__all__ = [
    "ORGANS_TABLE",
    "organ_table",
    "dose_groups",
    "label_id",
    "label_name",
    "medium_of_labels",
    "body_label_ids",
    "check_labels",
    "body_mask",
]

ORGANS_TABLE = "organs.csv"


@lru_cache(maxsize=1)
def _table() -> pd.DataFrame:
    table = read_table(ORGANS_TABLE)
    table["dose_group"] = table["dose_group"].fillna("").astype(str)
    table["id"] = table["id"].astype(int)
    if table["id"].duplicated().any() or table["name"].duplicated().any():
        raise InputError(f"ctdose/data/{ORGANS_TABLE}: duplicate id or name")
    if table["id"].min() != 0 or table["id"].max() > 255:
        raise InputError(f"ctdose/data/{ORGANS_TABLE}: ids must start at 0 and fit uint8")
    return table.set_index("id", drop=False).sort_index()


def organ_table() -> pd.DataFrame:
    """The label table, one row per label id (a copy).

    Returns
    -------
    pandas.DataFrame
        Columns ``id, name, tissue_group, dose_group, medium, in_body``; ``dose_group`` is
        ``""`` for labels that belong to no organ-dose group of the paper's Table 4.
    """
    return _table().reset_index(drop=True).copy()


def dose_groups() -> dict[str, list[int]]:
    """Organ-dose groups of the paper's Table 4 and their label ids.

    Returns
    -------
    dict of str to list of int
        ``{"lung": [4, 5], "heart": [6, 7, 8], ...}``; the mean dose over all voxels with
        these labels is the organ dose of that group.
    """
    table = _table()
    groups: dict[str, list[int]] = {}
    for lab, group in zip(table["id"], table["dose_group"]):
        if group:
            groups.setdefault(group, []).append(int(lab))
    return groups


def label_id(name: str) -> int:
    """Label id of an organ name of the scheme (``InputError`` if unknown)."""
    table = _table()
    hit = table.index[table["name"] == name]
    if len(hit) == 0:
        raise InputError(f"ctdose/data/{ORGANS_TABLE}: unknown organ name {name!r}")
    return int(hit[0])


def label_name(label: int) -> str:
    """Organ name of a label id (``InputError`` if unknown)."""
    table = _table()
    if int(label) not in table.index:
        raise InputError(f"ctdose/data/{ORGANS_TABLE}: unknown label id {label}")
    return str(table.loc[int(label), "name"])


def medium_of_labels() -> np.ndarray:
    """Lookup array label id -> medium name.

    Returns
    -------
    numpy.ndarray of object, shape (max_id + 1,)
        ``medium_of_labels()[labels]`` gives the medium name of every voxel. Ids missing
        from the table map to ``""``.
    """
    table = _table()
    lut = np.full(int(table["id"].max()) + 1, "", dtype=object)
    lut[table["id"].to_numpy()] = table["medium"].to_numpy()
    return lut


def body_label_ids() -> list[int]:
    """Label ids that belong to the patient (``in_body == 1``): not outside air, not the table."""
    table = _table()
    return [int(i) for i in table["id"][table["in_body"].astype(int) == 1]]


def body_mask(labels: np.ndarray) -> np.ndarray:
    """Body mask (uint8 0/1) of a label volume: every voxel whose label is ``in_body``."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[body_label_ids()] = 1
    return lut[np.asarray(labels, dtype=np.uint8)]


def check_labels(labels: np.ndarray, where: str = "labels") -> None:
    """Raise ``InputError`` naming ``where`` if ``labels`` holds ids that the scheme lacks."""
    present = np.unique(np.asarray(labels))
    unknown = sorted(set(int(v) for v in present) - set(int(i) for i in _table()["id"]))
    if unknown:
        raise InputError(f"{where}: label ids {unknown} are not in ctdose/data/{ORGANS_TABLE}")
