import pandas as pd
import pytest

from ctdose.errors import InputError
from ctdose.learn.splits import cases_of, check_fraction, n_real_for_percent, split_cases, write_splits


def _cohorts(n_syn, n_real, real="surrogate", extra=None):
    c = {f"syn{i:03d}": "synthetic" for i in range(n_syn)}
    c.update({f"real{i:03d}": real for i in range(n_real)})
    c.update(extra or {})
    return c


@pytest.mark.parametrize("percent", [0, 10, 20, 35, 50])
def test_mixes_have_the_requested_real_fraction(percent):
    n_syn = 90
    splits = split_cases(_cohorts(n_syn, 110), [percent], n_test=10, val_fraction=0.15, seed=3)
    frac = check_fraction(splits, percent)
    n_total = len(cases_of(splits, percent, "train")) + len(cases_of(splits, percent, "val"))
    # the nearest achievable fraction with a fixed synthetic set: within half a case
    assert abs(frac - percent / 100) <= 0.5 / n_total + 1e-12
    assert n_total - round(frac * n_total) == n_syn  # synthetic set fixed


def test_exact_fractions_and_counts_of_the_paper_mixes():
    splits = split_cases(_cohorts(90, 40), [0, 10, 20, 100], n_test=10, val_fraction=0.15, seed=1)
    used = {p: cases_of(splits, p, "train") + cases_of(splits, p, "val") for p in (0, 10, 20, 100)}
    assert check_fraction(splits, 10) == pytest.approx(0.10)  # 10 real + 90 synthetic
    assert check_fraction(splits, 0) == 0.0 and check_fraction(splits, 100) == 1.0
    assert len(used[0]) < len(used[10]) < len(used[20])  # "slightly increases"
    assert len(used[100]) == 30  # all non-test real cases
    real10 = {c for c in used[10] if c.startswith("real")}
    real20 = {c for c in used[20] if c.startswith("real")}
    assert real10 < real20  # nested


def test_test_set_is_fixed_real_shared_and_disjoint():
    splits = split_cases(_cohorts(20, 15), [0, 10, 20, 100], n_test=4, val_fraction=0.15, seed=7)
    tests = {p: cases_of(splits, p, "test") for p in (0, 10, 20, 100)}
    assert all(t == tests[0] for t in tests.values()) and len(tests[0]) == 4
    assert all(c.startswith("real") for c in tests[0])
    for p in (0, 10, 20, 100):
        assert not set(tests[0]) & set(cases_of(splits, p, "train") + cases_of(splits, p, "val"))
    again = split_cases(_cohorts(20, 15), [0, 10, 20, 100], n_test=4, val_fraction=0.15, seed=7)
    pd.testing.assert_frame_equal(splits, again)
    other = split_cases(_cohorts(20, 15), [0], n_test=4, val_fraction=0.15, seed=8)
    assert cases_of(other, 0, "test") != tests[0]


def test_validation_is_15_percent_per_cohort():
    splits = split_cases(_cohorts(60, 50), [20], n_test=10, val_fraction=0.15, seed=2)
    rows = splits[splits.role != "test"]
    for cohort, group in rows.groupby("cohort"):
        assert (group.role == "val").sum() == int(round(0.15 * len(group)))


def test_clinical_cases_are_real_when_present():
    cohorts = _cohorts(10, 0, extra={"cli000": "clinical", "cli001": "clinical", "sur000": "surrogate"})
    splits = split_cases(cohorts, [100], n_test=1, val_fraction=0.15, seed=0)
    assert set(splits.real_source) == {"clinical"}
    assert set(splits.case_id) == {"cli000", "cli001"}


def test_too_few_real_cases_is_an_error_naming_the_mix():
    assert n_real_for_percent(20, 90) == 23  # 22.5 rounds up
    with pytest.raises(InputError, match="mix 20 % real"):
        split_cases(_cohorts(90, 12), [20], n_test=2, val_fraction=0.15, seed=0)


def test_write_splits_writes_the_table(learning_store):
    from learn_fakes import tiny_profile

    splits = write_splits(learning_store, tiny_profile())
    assert (learning_store.run_dir / "tables" / "splits.csv").is_file()
    assert set(splits.role) == {"train", "val", "test"}
