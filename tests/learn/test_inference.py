import numpy as np
import pytest
import torch

from ctdose.errors import MissingStepError
from ctdose.learn.checkpoint import Member
from ctdose.learn.inference import (
    blending_weights, load_ensemble, predict_members, predict_model, sliding_window_predict, window_starts,
)
from ctdose.learn.normalise import MinMax, Normaliser


class Identity(torch.nn.Module):
    out_channels = 2

    def forward(self, x):
        return x.clone()


class PositionDependent(torch.nn.Module):
    """Returns the input plus a window-local ramp: blending must average the ramps."""

    out_channels = 1

    def forward(self, x):
        ramp = torch.arange(x.shape[-1], dtype=x.dtype)
        return x[:, :1] + ramp


@pytest.mark.parametrize("shape", [(11, 13, 17), (8, 8, 8), (5, 19, 6)])
@pytest.mark.parametrize("blend", ["gaussian", "linear"])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_identity_model_is_reproduced_exactly(shape, blend, overlap):
    x = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    out = sliding_window_predict(Identity(), x, window=8, overlap=overlap, batch_size=3, blend=blend)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, x, rtol=1e-5, atol=0)  # float32 accumulation


def test_blending_is_a_weighted_mean_of_the_windows():
    # along x (size 12, window 8, stride 4): windows start at 0 and 4; voxel i sees ramp
    # values i (first window) and i - 4 (second), weighted by the 1D Gaussian weights
    x = np.zeros((1, 8, 8, 12), np.float32)
    out = sliding_window_predict(PositionDependent(), x, window=8, overlap=0.5)[0, 4, 4]
    w = blending_weights(8)[4, 4, :] / blending_weights(8)[4, 4, :].max()
    for i in range(12):
        parts = [(i - s, w[i - s]) for s in (0, 4) if 0 <= i - s < 8]
        expect = sum(r * wi for r, wi in parts) / sum(wi for _, wi in parts)
        assert out[i] == pytest.approx(expect, rel=1e-5)


def test_window_starts_cover_the_axis():
    for n in range(1, 40):
        starts = window_starts(n, 8, 4)
        covered = np.zeros(max(n, 8), bool)
        for s in starts:
            covered[s : s + 8] = True
        assert covered[:n].all() and starts[-1] + 8 >= n and starts[-1] <= max(n - 8, 0)


def test_windows_without_body_are_skipped():
    x = np.ones((2, 8, 8, 32), np.float32)
    mask = np.zeros((8, 8, 32), bool)
    mask[4, 4, 2] = True
    out = sliding_window_predict(Identity(), x, window=8, overlap=0.5, mask=mask)
    assert np.all(out[..., :8] == 1) and np.all(out[..., 12:] == 0)


class ConstantNet(torch.nn.Module):
    """mu = 0.4, sigma_tilde^2 = 0 everywhere (normalised units)."""

    size_multiple = 1

    def forward(self, x):
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        out[:, 0] = 0.4
        return out


def test_members_return_gray_per_mas_with_the_eq5_floor():
    dose = MinMax(0.0, 1e-3)
    n = Normaliser(MinMax(0, 4e29), MinMax(0, 2e-4), dose)
    member = Member(ConstantNet(), n, {"kerma_mode": "cylinder", "floor_fraction": 0.055, "patch_size": 4})
    mu, sigma = predict_members([member, member], np.ones((4, 4, 4)), np.ones((4, 4, 4)) * 1e-4)
    assert mu.shape == sigma.shape == (2, 4, 4, 4)
    assert np.allclose(mu, dose.inverse(0.4))
    assert np.allclose(sigma, 0.055 * 0.4 * dose.scale)  # floor on the normalised mu


def test_missing_model_says_to_run_notebook_03(tmp_path):
    from ctdose.store import CaseStore

    store = CaseStore.for_run(tmp_path)
    with pytest.raises(MissingStepError, match="03_training"):
        predict_model(store, "cylinder_mix000", ["a"], "cpu", False)
    with pytest.raises(MissingStepError, match="03_training"):
        load_ensemble(tmp_path, "cylinder_mix010")
