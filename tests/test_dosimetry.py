import numpy as np
import pytest

from ctdose import dosimetry as dm
from ctdose.errors import InputError


def test_organ_mean_doses_independent_and_absent_groups():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(3, 4, 5)).astype(np.uint8)
    dose = rng.uniform(size=labels.shape)
    groups = {"one": [1], "two_three": [2, 3], "missing": [9], "air": [0]}
    got = dm.organ_mean_doses(dose, labels, groups)
    assert set(got) == {"one", "two_three", "air"}
    assert got["one"] == pytest.approx(dose[labels == 1].mean())
    assert got["two_three"] == pytest.approx(dose[(labels == 2) | (labels == 3)].mean())


def test_organ_mean_doses_errors():
    with pytest.raises(InputError, match="shape"):
        dm.organ_mean_doses(np.zeros((2, 2, 2)), np.zeros((2, 2, 3), np.uint8), {"a": [0]})
    with pytest.raises(InputError, match="integer"):
        dm.organ_mean_doses(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), {"a": [0]})
    dose = np.zeros((1, 1, 2))
    dose[0, 0, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        dm.organ_mean_doses(dose, np.array([[[1, 2]]], np.uint8), {"b": [2]})


def test_table4_organ_doses_order():
    labels = np.array([[[1, 2, 3]]], np.uint8)
    dose = np.array([[[1.0, 2.0, 3.0]]])
    got = dm.table4_organ_doses(dose, labels, {"liver": [3], "lung": [1], "xyz": [2]})
    assert list(got) == ["lung", "liver"]


def test_icrp103_weights_sum_to_one():
    table = dm.icrp103_weights()
    weighted = table[~table["remainder_member"]]
    assert weighted["w_t"].sum() == pytest.approx(1.0, abs=1e-12)
    assert len(weighted) == 15  # 14 named tissues + remainder
    assert table["remainder_member"].sum() == 14  # 13 per sex, prostate and uterus sex-specific
    assert weighted.loc[weighted["tissue"] == "remainder", "w_t"].item() == 0.12


def test_partial_effective_dose_rules():
    # all specified tissues + two remainder tissues at known doses
    doses = {"lung": 1.0, "liver": 2.0, "heart": 3.0, "kidney": 5.0, "fat": 100.0}
    expected = 0.12 * 1.0 + 0.04 * 2.0 + 0.12 * (3.0 + 5.0) / 2.0  # fat carries no weight
    assert dm.partial_effective_dose(doses) == pytest.approx(expected)
    w = dm.partial_effective_dose_weights(dm.TABLE4_ORGANS)
    assert sum(w.values()) == pytest.approx(0.69)  # 1 - breast, gonads, bladder, thyroid, bone surface, salivary, skin
    # uniform dose: E_partial = sum of used weights x dose
    uniform = {g: 2.0 for g in dm.TABLE4_ORGANS}
    assert dm.partial_effective_dose(uniform) == pytest.approx(2.0 * 0.69)
    assert np.isnan(dm.partial_effective_dose({"fat": 1.0}))


def _ellipse_mask(a_mm, b_mm, spacing, n_slices=3, shape=(400, 500)):
    dz, dy, dx = spacing
    y = (np.arange(shape[0]) - (shape[0] - 1) / 2) * dy
    x = (np.arange(shape[1]) - (shape[1] - 1) / 2) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    sl = (xx / a_mm) ** 2 + (yy / b_mm) ** 2 <= 1.0
    return np.repeat(sl[None], n_slices, axis=0)


def test_effective_diameter_of_ellipse_is_analytic():
    a_mm, b_mm = 160.0, 110.0  # lateral and AP semi-axes
    spacing = (5.0, 1.0, 1.0)
    mask = _ellipse_mask(a_mm, b_mm, spacing)
    analytic_cm = 2.0 * np.sqrt(a_mm * b_mm) / 10.0
    assert dm.effective_diameter_cm(mask, spacing) == pytest.approx(analytic_cm, rel=5e-3)
    assert dm.effective_diameter_cm(mask, spacing, method="area") == pytest.approx(analytic_cm, rel=5e-3)
    table = dm.slice_diameters_cm(mask, spacing)
    assert table["lat_cm"].iloc[0] == pytest.approx(32.0, abs=0.2)
    assert table["ap_cm"].iloc[0] == pytest.approx(22.0, abs=0.2)


def test_effective_diameter_roi_and_errors():
    spacing = (5.0, 2.0, 2.0)
    mask = _ellipse_mask(100.0, 100.0, spacing, n_slices=4, shape=(150, 150))
    mask[3] = False
    mask[0] = _ellipse_mask(50.0, 50.0, spacing, n_slices=1, shape=(150, 150))[0]
    full = dm.effective_diameter_cm(mask, spacing)
    roi = dm.effective_diameter_cm(mask, spacing, slices=slice(1, 3))
    assert roi == pytest.approx(20.0, rel=0.02)
    assert full == pytest.approx((10.0 + 20.0 + 20.0) / 3.0, rel=0.02)  # empty slice skipped
    with pytest.raises(InputError, match="no body"):
        dm.effective_diameter_cm(np.zeros((2, 3, 3)), spacing)
    with pytest.raises(InputError, match="method"):
        dm.effective_diameter_cm(mask, spacing, method="wed")


def test_coverage_and_reliability_of_gaussian_errors():
    rng = np.random.default_rng(42)
    n = 20000
    sigma = rng.uniform(0.5, 2.0, n)
    nn = rng.normal(10.0, 1.0, n)
    mc = nn + rng.normal(0.0, sigma)
    assert dm.coverage_fraction(nn, mc, sigma, k=2.0) == pytest.approx(0.9545, abs=0.01)
    curve = dm.reliability_curve(nn, mc, sigma)
    np.testing.assert_allclose(curve["observed"], curve["nominal"], atol=0.015)
    # a predictor whose sigma is too small by 2 is over-confident
    half = dm.reliability_curve(nn, mc, sigma / 2)
    assert (half["observed"] < half["nominal"] - 0.02).all()


def test_calibration_table_per_model():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "model_id": ["a", "a", "b", "b"],
            "dose_nn": [1.0, 1.0, 1.0, 1.0],
            "dose_mc": [1.1, 1.5, 1.1, 1.5],
            "sigma_tot": [0.1, 0.1, 1.0, 1.0],
        }
    )
    table = dm.calibration_table(frame)
    k2 = table[np.isclose(table["k"], 2.0)].set_index("model_id")
    assert k2.loc["a", "observed"] == 0.5
    assert k2.loc["b", "observed"] == 1.0


def test_mgy_per_rotation():
    # 1e-5 Gy/mAs at 200 mA and 0.5 s = 1e-5 * 100 mAs = 1 mGy
    assert float(dm.mgy_per_rotation(1e-5, 200.0, 0.5)) == pytest.approx(1.0)
