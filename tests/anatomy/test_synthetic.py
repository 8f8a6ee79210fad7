import numpy as np
import pytest
from scipy import stats

from ctdose.anatomy.phantom import VOLUME_ORGANS, reference_organ_volumes_ml
from ctdose.anatomy.synthetic import sample_synthetic, synthetic_params
from ctdose.errors import InputError


@pytest.fixture(scope="module")
def design():
    return sample_synthetic(200, seed=7)


def test_sex_split_and_ranges(design):
    assert (design["sex"] == "M").sum() == 100 and (design["sex"] == "F").sum() == 100
    assert design["height_m"].between(1.50, 2.10).all()
    assert design["fat_scale"].between(0.90, 1.10).all()
    for organ in VOLUME_ORGANS:
        assert design[f"rel_{organ}"].between(0.90, 1.10).all()
    ref = {s: reference_organ_volumes_ml(s) for s in "MF"}
    for sex in "MF":
        sub = design[design["sex"] == sex]
        ratio = sub["vol_liver_ml"] / ref[sex]["liver"]
        np.testing.assert_allclose(ratio, sub["rel_liver"])


def test_uniform_distributions(design):
    # KS test against the paper's uniform ranges (p-values are fixed by the seed)
    assert stats.kstest(design["height_m"], stats.uniform(1.50, 0.60).cdf).pvalue > 0.01
    assert stats.kstest(design["fat_scale"], stats.uniform(0.90, 0.20).cdf).pvalue > 0.01
    assert stats.kstest(design["rel_lungs"], stats.uniform(0.90, 0.20).cdf).pvalue > 0.01
    # heights concentrated around the mean (normal, sd 0.1 m) are rejected: the test can fail
    normal = np.random.default_rng(0).normal(1.8, 0.1, 200)
    assert stats.kstest(normal, stats.uniform(1.50, 0.60).cdf).pvalue < 0.01


def test_random_combination_is_independent(design):
    cols = ["height_m", "fat_scale"] + [f"rel_{o}" for o in VOLUME_ORGANS]
    corr = np.corrcoef(design[cols].to_numpy().T)
    off = corr[~np.eye(len(cols), dtype=bool)]
    assert np.abs(off).max() < 0.25  # 200 samples: |r| of independent pairs stays below ~0.25


def test_seed_reproducibility_and_params():
    a, b, c = sample_synthetic(10, 3), sample_synthetic(10, 3), sample_synthetic(10, 4)
    assert a.equals(b) and not a.equals(c)
    p = synthetic_params(a.iloc[0])
    assert p.arms == "down" and not p.table and p.offset_x_mm == 0 and p.offset_y_mm == 0
    assert p.organ_volumes_ml["liver"] == a.iloc[0]["vol_liver_ml"]
    with pytest.raises(InputError):
        sample_synthetic(0, 1)
