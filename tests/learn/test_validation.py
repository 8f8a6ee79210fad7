import numpy as np
import pytest

from ctdose.learn.validation import constant_dose_baseline, organ_dose_deviation


def test_organ_dose_deviation_by_hand():
    labels = np.array([[[0, 1, 1, 2, 3]]], np.uint8)
    mc = np.array([[[5.0, 1.0, 3.0, 4.0, 9.0]]])
    pred = np.array([[[0.0, 2.0, 2.0, 5.0, 9.0]]])
    # organ a: MC mean 2, NN 2 -> 0; organ b: 4 vs 5 -> 0.25; organ c absent
    assert organ_dose_deviation(pred, mc, labels, {"a": [1], "b": [2], "c": [7]}) == pytest.approx(0.125)


def test_constant_baseline_uses_mean_body_dose_of_training_cases(learning_store):
    from learn_fakes import GROUPS

    ids = learning_store.case_ids()
    const, dev = constant_dose_baseline(learning_store, ids[:3], ids[3:5], GROUPS)
    doses = [learning_store.read_case(c).load() for c in ids[:3]]
    body = np.concatenate([d["dose_mc"].values[d["body_mask"].values > 0] for d in doses])
    assert const == pytest.approx(body.mean(), rel=1e-6)
    expect = np.mean([
        organ_dose_deviation(np.full(d["dose_mc"].shape, const), d["dose_mc"].values, d["labels"].values, GROUPS)
        for d in (learning_store.read_case(c).load() for c in ids[3:5])
    ])
    assert dev == pytest.approx(expect) and dev > 0.05
