import numpy as np
import pytest

from ctdose.anatomy.organs import body_mask
from ctdose.anatomy.phantom import build_phantom
from ctdose.anatomy.roi import thorax_roi_z_mm
from ctdose.anatomy.surrogate import population, sample_surrogate, surrogate_params
from ctdose.errors import InputError


@pytest.fixture(scope="module")
def design():
    return sample_surrogate(400, seed=11)


def test_population_statistics(design):
    P = population()
    male = design["sex"] == "M"
    assert male.mean() == pytest.approx(P[("male_fraction", "")], abs=0.01)
    assert design.loc[male, "height_m"].mean() * 100 == pytest.approx(P[("height_mean", "M")], abs=1.5)
    assert design.loc[~male, "bmi"].mean() == pytest.approx(P[("bmi_mean", "F")], abs=1.5)
    assert design["offset_y_mm"].between(-50, 50).all() and design["offset_x_mm"].between(-50, 50).all()
    assert design["offset_y_mm"].mean() == pytest.approx(P[("offset_y_mean", "")], abs=3)
    assert (design["arms"] == "raised").mean() == pytest.approx(0.8, abs=0.06)


def test_organ_volumes_follow_body_size_not_uniform(design):
    ratio = design["vol_liver_ml"] / design.groupby("sex")["vol_liver_ml"].transform("median")
    assert (ratio.max() - ratio.min()) > 0.4  # wider than the synthetic +-10 %
    r_bsa = np.corrcoef(design["bsa_m2"], design["vol_liver_ml"])[0, 1]
    r_lung = np.corrcoef(design["height_m"], design["vol_lungs_ml"])[0, 1]
    r_organs = np.corrcoef(np.log(design["vol_spleen_ml"]), np.log(design["vol_kidneys_ml"]))[0, 1]
    assert r_bsa > 0.3 and r_lung > 0.3 and r_organs > 0.1


def test_effective_diameters_span_the_clinical_range():
    design = sample_surrogate(16, seed=5)
    d_eff = []
    for row in design.to_dict("records"):
        ph = build_phantom(surrogate_params(row))
        roi = thorax_roi_z_mm(ph.landmarks_z_mm(), 30.0, row["case_id"])
        lab, _ = ph.voxelise(10.0, roi, calibrate=False)
        area = body_mask(lab).sum(axis=(1, 2)).mean() * 100.0
        d_eff.append(2 * np.sqrt(area / np.pi) / 10.0)
    assert 20.0 < min(d_eff) < 28.0 and 33.0 < max(d_eff) < 45.0


def test_reproducible_and_checked():
    assert sample_surrogate(5, 2).equals(sample_surrogate(5, 2))
    assert not sample_surrogate(5, 2).equals(sample_surrogate(5, 3))
    p = surrogate_params(sample_surrogate(3, 2).iloc[0])
    assert p.table and set(p.organ_shift_mm) >= {"liver", "heart"}
    with pytest.raises(InputError, match="arms_raised_fraction"):
        sample_surrogate(5, 1, arms_raised_fraction=1.5)
