import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.learn.normalise import MinMax, Normaliser, fit_normaliser, kerma_variable


def test_minmax_maps_the_range_to_0001_and_1_and_back():
    m = MinMax(2.0, 12.0)
    assert m.forward(2.0) == pytest.approx(0.001)
    assert m.forward(12.0) == pytest.approx(1.0)
    assert m.forward(7.0) == pytest.approx(0.001 + 0.5 * 0.999)
    x = np.linspace(-3, 20, 11)
    assert np.allclose(m.inverse(m.forward(x)), x)


def test_sigma_converts_by_scale_only():
    n = Normaliser(MinMax(0, 1), MinMax(0, 1), MinMax(1e-5, 2e-4))
    # a difference of doses maps like a standard deviation
    d1, d2 = 5e-5, 8e-5
    diff_n = n.dose_to_normalised(np.array(d2)) - n.dose_to_normalised(np.array(d1))
    assert n.sigma_from_normalised(diff_n) == pytest.approx(d2 - d1, rel=1e-5)
    assert Normaliser.from_dict(n.to_dict()) == n


def test_degenerate_range_is_refused():
    with pytest.raises(InputError, match="lo < hi"):
        MinMax(1.0, 1.0)
    with pytest.raises(InputError, match="kerma mode"):
        kerma_variable("sphere")


def test_fit_uses_whole_volumes_of_the_training_cases_only(learning_store):
    ids = learning_store.case_ids()[:3]
    n = fit_normaliser(learning_store, ids, "patient")
    vols = [learning_store.read_case(c).load() for c in ids]
    assert n.density.lo == pytest.approx(min(float(v["density_e"].min()) for v in vols))
    assert n.kerma.hi == pytest.approx(max(float(v["kerma_patient"].max()) for v in vols))
    assert n.dose.lo == pytest.approx(min(float(v["dose_mc"].min()) for v in vols))
    other = fit_normaliser(learning_store, learning_store.case_ids()[3:], "patient")
    assert other.dose != n.dose
    inputs = n.inputs(vols[0]["density_e"].values, vols[0]["kerma_patient"].values)
    assert inputs.shape == (2, *vols[0]["labels"].shape) and inputs.dtype == np.float32
    assert inputs.min() >= 0.001 - 1e-6 and inputs.max() <= 1 + 1e-6
