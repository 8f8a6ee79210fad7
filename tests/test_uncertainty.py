import numpy as np
import pandas as pd
import pytest

from ctdose import uncertainty as unc
from ctdose.errors import InputError


def _ensemble():
    # three members, two voxels; hand-computed below
    mu = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 13.0]])
    sigma = np.array([[0.1, 1.0], [0.2, 1.0], [0.3, 2.0]])
    return mu, sigma


def test_eq3_eq4_eq6_eq7_hand_values():
    mu, sigma = _ensemble()
    np.testing.assert_allclose(unc.ensemble_mean(mu), [2.0, 11.0])
    # population variance (1/M): ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3 ; (1 + 1 + 4) / 3 = 2
    np.testing.assert_allclose(unc.epistemic_variance(mu), [2.0 / 3.0, 2.0])
    # (0.01 + 0.04 + 0.09) / 3 ; (1 + 1 + 4) / 3
    np.testing.assert_allclose(unc.aleatoric_variance(sigma), [0.14 / 3.0, 2.0])
    np.testing.assert_allclose(unc.total_sigma([2.0 / 3.0, 2.0], [0.14 / 3.0, 2.0]), [np.sqrt(2.14 / 3.0), 2.0])


def test_eq4_matches_independent_population_variance():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(5, 4, 3, 2))
    expected = np.mean((mu - mu.mean(axis=0)) ** 2, axis=0)
    np.testing.assert_allclose(unc.epistemic_variance(mu), expected, rtol=1e-12)
    assert not np.allclose(unc.epistemic_variance(mu), mu.var(axis=0, ddof=1))


def test_eq5_floor():
    mu = np.array([100.0, 100.0])
    sigma = unc.floored_sigma(mu, np.array([0.0, 16.0]))
    np.testing.assert_allclose(sigma, [5.5, np.sqrt(16.0 + 5.5**2)])
    with pytest.raises(InputError):
        unc.floored_sigma(mu, np.array([-1.0, 0.0]))


def test_voxel_uncertainty_floored_and_raw_inputs_agree():
    rng = np.random.default_rng(0)
    mu = rng.uniform(1, 2, size=(4, 3, 3, 3))
    tilde = rng.uniform(0, 0.01, size=mu.shape)
    a = unc.voxel_uncertainty(mu, sigma_tilde_sq=tilde)
    b = unc.voxel_uncertainty(mu, unc.floored_sigma(mu, tilde))
    np.testing.assert_allclose(a.sigma_total, b.sigma_total)
    np.testing.assert_allclose(a.sigma_total**2, a.sigma_aleatoric**2 + a.sigma_epistemic**2)
    # single member: no epistemic part, floor at 5.5 % at least
    one = unc.voxel_uncertainty(mu[:1], sigma_tilde_sq=np.zeros_like(mu[:1]))
    np.testing.assert_allclose(one.sigma_epistemic, 0.0)
    np.testing.assert_allclose(one.sigma_total, 0.055 * mu[0])
    with pytest.raises(InputError):
        unc.voxel_uncertainty(mu)


def test_eq8_full_correlation_vs_covariance_matrix():
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.1, 1.0, size=(2, 3, 4))
    labels = rng.integers(0, 3, size=sigma.shape).astype(np.uint8)
    groups = {"a": [1], "b": [2], "ab": [1, 2]}
    got = unc.organ_sigma(sigma, labels, groups)
    for name, ids in groups.items():
        s = sigma[np.isin(labels, ids)]
        n = s.size
        cov = np.outer(s, s)  # correlation coefficient 1 between every pair of voxels
        weights = np.full(n, 1.0 / n)  # organ dose = mean of voxel doses
        assert got[name] == pytest.approx(np.sqrt(weights @ cov @ weights), rel=1e-12)
        # and it exceeds the uncorrelated value for n > 1
        assert got[name] > np.sqrt(np.sum(s**2)) / n


def test_organ_uncertainties_total_not_quadrature_under_full_correlation():
    # two voxels of one organ: voxel 1 purely aleatoric, voxel 2 purely epistemic
    result = unc.VoxelUncertainty(
        dose=np.array([[[1.0, 1.0]]]),
        sigma_aleatoric=np.array([[[0.3, 0.0]]]),
        sigma_epistemic=np.array([[[0.0, 0.4]]]),
        sigma_total=np.array([[[0.3, 0.4]]]),
    )
    table = unc.organ_uncertainties(result, np.array([[[1, 1]]], dtype=np.uint8), {"o": [1]})
    row = table.iloc[0]
    assert row["sigma_aleatoric"] == pytest.approx(0.15)
    assert row["sigma_epistemic"] == pytest.approx(0.2)
    assert row["sigma_tot"] == pytest.approx(0.35)
    assert row["sigma_tot"] > np.hypot(0.15, 0.2)


def test_eq9_summed_dose_and_sigma_full_correlation():
    doses = {"a": 1.0, "b": 2.0, "c": 3.0}
    sigmas = {"a": 0.1, "b": 0.3, "c": 0.2}
    d_sum, s_sum = unc.summed_organ_dose(doses, sigmas)
    assert d_sum == pytest.approx(6.0)
    ones = np.ones(3)
    s = np.array([0.1, 0.3, 0.2])
    assert s_sum == pytest.approx(np.sqrt(ones @ np.outer(s, s) @ ones))
    with pytest.raises(InputError):
        unc.summed_organ_dose(doses, {"a": 0.1})


def test_max_relative_uncertainty_per_component_and_k2():
    summed = pd.DataFrame(
        {
            "model_id": ["m1", "m1", "m2"],
            "case_id": ["c1", "c2", "c1"],
            "dose_sum": [10.0, 20.0, 5.0],
            "sigma_aleatoric_sum": [1.0, 1.0, 0.1],
            "sigma_epistemic_sum": [0.1, 4.0, 0.2],
            "sigma_tot_sum": [1.2, 4.2, 0.25],
        }
    )
    table = unc.max_relative_uncertainty(summed).set_index("model_id")
    assert table.loc["m1", "rel_aleatoric_percent"] == pytest.approx(10.0)  # case c1
    assert table.loc["m1", "rel_epistemic_percent"] == pytest.approx(20.0)  # case c2
    assert table.loc["m1", "rel_tot_percent"] == pytest.approx(21.0)
    assert table.loc["m1", "rel_tot_k2_percent"] == pytest.approx(42.0)
    assert table.loc["m2", "rel_tot_k2_percent"] == pytest.approx(10.0)
    assert table.loc["m1", "n_cases"] == 2


def test_trs457_limits_and_check():
    table = unc.trs457_limits().set_index("purpose")
    assert table.loc["adult", "limit_percent"] == 20.0
    assert table.loc["child", "limit_percent"] == 7.0
    assert (table["k"] == 2).all()
    assert unc.trs457_check(17.8, "adult")["passes"]
    assert not unc.trs457_check(10.0, "comparative")["passes"]
    with pytest.raises(InputError, match="purpose"):
        unc.trs457_check(1.0, "dog")
