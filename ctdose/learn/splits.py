"""Training data mixes of real and synthetic cases, and the fixed real test set (paper 2.3.1).

The paper trains four networks on 0/10/20/100 % real data ("0 % NN" ... "100 % NN"),
noting that "the number of training data slightly increases from the 0 % NN to the
20 % NN". We therefore build the mixes like this (any percentage works):

1. **Real source.** "Real" means the ``clinical`` cohort when the store holds clinical
   cases, otherwise the ``surrogate`` cohort; every split records which. Synthetic cases
   are the ``synthetic`` cohort (and ``xcat`` phantoms, the paper's synthetic source).
2. **Test set.** ``n_test`` real cases, drawn once with the run seed, shared by all
   models and never used for training or validation.
3. **Mixes.** The synthetic set is fixed (all synthetic cases) and real cases are
   *added* until they make up the requested fraction:
   ``n_real = round(p / (100 - p) * n_synthetic)`` (at least one for p > 0). The real
   cases are taken as a prefix of one seeded order of the non-test real pool, so the
   10 % set is contained in the 20 % set. 0 % uses no real case; 100 % uses all non-test
   real cases and no synthetic one.
4. **Validation.** 15 % of each mix (``val_fraction``), stratified by cohort
   (``round(val_fraction * n)`` per cohort, at least one case overall), again as prefixes
   of seeded per-cohort orders: the synthetic validation cases are the same in every mix
   that holds all synthetic cases.

The result is one row per (mix, case) with the role ``train``, ``val`` or ``test``, written
to ``<run_dir>/tables/splits.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, MissingStepError

__all__ = [
    "REAL_COHORTS",
    "SYNTHETIC_COHORTS",
    "make_splits",
    "mix_name",
    "n_real_for_percent",
    "profile_splits",
    "real_source",
    "split_cases",
    "write_splits",
    "cases_of",
    "check_fraction",
    "test_ids",
]

REAL_COHORTS = ("clinical", "surrogate")
"""Real-data cohorts in order of preference."""
SYNTHETIC_COHORTS = ("synthetic", "xcat")
"""Cohorts that count as synthetic data."""
PERCENT_FULL = 100
SPLITS_TABLE = "splits"
# independent random streams derived from the run seed (arbitrary fixed tags)
_STREAM_TEST, _STREAM_REAL_ORDER, _STREAM_VAL = 1, 2, 3


def mix_name(percent_real: int) -> str:
    """``10 -> "mix010"`` (the suffix of a model id)."""
    return f"mix{int(percent_real):03d}"


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream, *extra]))


def real_source(cohorts: Mapping[str, str]) -> str:
    """``"clinical"`` if any case is clinical, else ``"surrogate"``.

    Parameters
    ----------
    cohorts : mapping
        ``{case_id: cohort}``.
    """
    present = set(cohorts.values())
    for name in REAL_COHORTS:
        if name in present:
            return name
    return REAL_COHORTS[-1]


def n_real_for_percent(percent_real: float, n_synthetic: int) -> int:
    """Real cases to add to `n_synthetic` synthetic ones for a real fraction of `percent_real` %.

    ``round(p / (100 - p) * n_synthetic)``, at least 1 for ``p > 0``. Not defined for 100 %
    (all real cases are used there).
    """
    if not 0 <= percent_real < PERCENT_FULL:
        raise InputError(f"mix {percent_real} % real: expected 0 <= percent < 100 here")
    if percent_real == 0:
        return 0
    return max(1, _round_half_up(percent_real / (PERCENT_FULL - percent_real) * n_synthetic))


def split_cases(
    cohorts: Mapping[str, str],
    percents_real: Iterable[float],
    n_test: int,
    val_fraction: float,
    seed: int,
) -> pd.DataFrame:
    """Assign every case a role per mix (pure function of the case list and the seed).

    Parameters
    ----------
    cohorts : mapping
        ``{case_id: cohort}`` of all cases in the store.
    percents_real : iterable of number
        Mixes, percent of real cases (e.g. ``[0, 10, 20, 100]``).
    n_test : int
        Real cases in the shared test set (profile ``cohort.n_test``).
    val_fraction : float
        Validation fraction (paper: 0.15).
    seed : int
        Run seed.

    Returns
    -------
    pandas.DataFrame
        Columns ``mix, percent_real, case_id, cohort, role, real_source``; roles
        ``train``/``val``/``test``. Cases not used by a mix are not listed for it.
    """
    source = real_source(cohorts)
    real = sorted(c for c, k in cohorts.items() if k == source)
    synthetic = sorted(c for c, k in cohorts.items() if k in SYNTHETIC_COHORTS)
    if n_test > len(real):
        raise InputError(f"cohort.n_test = {n_test}, but the store has only {len(real)} {source} cases")
    if not 0 < val_fraction < 1:
        raise InputError(f"train.val_fraction = {val_fraction}: expected a value between 0 and 1")
    test = sorted(_rng(seed, _STREAM_TEST).choice(real, size=n_test, replace=False).tolist()) if n_test else []
    pool = [c for c in real if c not in set(test)]
    real_order = [pool[i] for i in _rng(seed, _STREAM_REAL_ORDER).permutation(len(pool))]
    val_order = {}
    for name, ids in (("real", real_order), ("synthetic", synthetic)):
        val_order[name] = [ids[i] for i in _rng(seed, _STREAM_VAL, len(val_order)).permutation(len(ids))]

    rows = []
    for percent in percents_real:
        percent = int(percent) if float(percent).is_integer() else float(percent)
        if percent >= PERCENT_FULL:
            chosen_real, chosen_syn = list(real_order), []
        else:
            n_real = n_real_for_percent(percent, len(synthetic))
            if n_real > len(real_order):
                raise InputError(
                    f"mix {percent} % real: needs {n_real} {source} cases besides the {n_test} test "
                    f"cases to join {len(synthetic)} synthetic ones, the store has {len(real_order)}"
                )
            chosen_real, chosen_syn = real_order[:n_real], list(synthetic)
        if not chosen_real and not chosen_syn:
            raise InputError(f"mix {percent} % real: no training cases (store has no {source}/synthetic cases)")
        groups = {"real": set(chosen_real), "synthetic": set(chosen_syn)}
        n_val = {k: _round_half_up(val_fraction * len(v)) for k, v in groups.items()}
        total = len(chosen_real) + len(chosen_syn)
        if sum(n_val.values()) == 0 and total >= 2:
            n_val[max(groups, key=lambda k: len(groups[k]))] = 1
        val = set()
        for name, members in groups.items():
            ordered = [c for c in val_order[name] if c in members]
            val.update(ordered[: n_val[name]])
        if val and len(val) == total:  # keep at least one training case
            val.discard(sorted(val)[0])
        for case_id in sorted(chosen_real + chosen_syn):
            rows.append((mix_name(percent), percent, case_id, cohorts[case_id],
                         "val" if case_id in val else "train", source))
        rows += [(mix_name(percent), percent, c, cohorts[c], "test", source) for c in test]
    return pd.DataFrame(rows, columns=["mix", "percent_real", "case_id", "cohort", "role", "real_source"])


def make_splits(store, cfg) -> pd.DataFrame:
    """Splits of a run from its store and profile (``cohort.n_test``, ``train.*``, ``seed``)."""
    cohorts = {c: store.case_attrs(c).get("cohort") for c in store.run_case_ids(say="splits")}
    try:
        return profile_splits(cohorts, cfg)
    except MissingStepError as exc:
        raise MissingStepError(f"{store.root}: {exc}") from None


def profile_splits(cohorts: Mapping[str, str], cfg) -> pd.DataFrame:
    """:func:`split_cases` of ``{case_id: cohort}`` with the profile's ``train.mixes_percent_real``,
    ``cohort.n_test``, ``train.val_fraction`` and ``seed``; :class:`MissingStepError` where there
    are no cases."""
    if not cohorts:
        raise MissingStepError("no cases; run notebooks 01_phantom_sampling and 02_mc_preparation first")
    return split_cases(
        cohorts,
        cfg["train"]["mixes_percent_real"],
        int(cfg["cohort"]["n_test"]),
        float(cfg["train"]["val_fraction"]),
        int(cfg["seed"]),
    )


def write_splits(store, cfg) -> pd.DataFrame:
    """Compute the splits and write ``<run_dir>/tables/splits.csv``; returns them."""
    splits = make_splits(store, cfg)
    store.write_table(SPLITS_TABLE, splits)
    return splits


def cases_of(splits: pd.DataFrame, percent_real: float, role: str) -> list[str]:
    """Sorted case ids of one mix and role."""
    rows = splits[(splits["percent_real"].astype(float) == float(percent_real)) & (splits["role"] == role)]
    return sorted(rows["case_id"].tolist())


def test_ids(splits: pd.DataFrame) -> list[str]:
    """Sorted ids of the fixed test set (``role == "test"``; the same in every mix)."""
    return sorted(set(splits.loc[splits["role"] == "test", "case_id"].astype(str)))


def check_fraction(splits: pd.DataFrame, percent_real: float, roles: Sequence[str] = ("train", "val")) -> float:
    """Realised real fraction (0..1) of a mix over the given roles."""
    rows = splits[(splits["percent_real"].astype(float) == float(percent_real)) & splits["role"].isin(roles)]
    if rows.empty:
        raise InputError(f"mix {percent_real} %: not in the splits table")
    return float((rows["cohort"] == rows["real_source"]).mean())
