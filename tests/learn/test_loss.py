import math

import numpy as np
import pytest
import torch

from ctdose.learn.loss import MC_UNCERTAINTY_FRACTION, gaussian_nll, log_variance, masked_nll_loss

F = MC_UNCERTAINTY_FRACTION


def _voxel_loss_by_hand(y, mu, s2, f=F):
    var = s2 + (f * mu) ** 2
    return 0.5 * (y - mu) ** 2 / var + 0.5 * math.log(var)


def test_floor_is_the_papers_mc_uncertainty():
    assert MC_UNCERTAINTY_FRACTION == 0.055


def test_loss_equals_eq1_with_the_eq5_floor_on_hand_made_numbers():
    # two patches of 1x1x2 voxels; the second voxel of patch 1 is outside the body
    mu = [[0.5, 0.2], [0.8, 0.05]]
    s2 = [[0.01, 0.0], [0.0, 0.002]]
    y = [[0.6, 0.9], [0.7, 0.05]]
    m = [[1, 0], [1, 1]]
    output = torch.tensor([[mu[b], s2[b]] for b in range(2)], dtype=torch.float64).reshape(2, 2, 1, 1, 2)
    target = torch.tensor(y, dtype=torch.float64).reshape(2, 1, 1, 2)
    mask = torch.tensor(m, dtype=torch.float64).reshape(2, 1, 1, 2)
    loss = masked_nll_loss(output, target, mask, eps=0.0)
    expected = np.mean([sum(m[b][v] * _voxel_loss_by_hand(y[b][v], mu[b][v], s2[b][v]) for v in range(2))
                        for b in range(2)])
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # a voxel with sigma_tilde = 0 has variance (0.055 mu)^2: here 0.8 -> sd 0.044
    assert math.exp(log_variance(torch.tensor(0.8), torch.tensor(0.0), eps=0.0).item()) == pytest.approx(0.044**2)


def test_masked_voxels_do_not_contribute_and_batch_is_averaged():
    torch.manual_seed(1)
    out = torch.rand(3, 2, 4, 4, 4) + 0.1
    y = torch.rand(3, 1, 4, 4, 4)
    mask = (torch.rand(3, 1, 4, 4, 4) > 0.5).float()
    y_changed = torch.where(mask > 0, y, y + 100.0)
    assert masked_nll_loss(out, y, mask) == pytest.approx(masked_nll_loss(out, y_changed, mask).item())
    per_patch = [masked_nll_loss(out[b : b + 1], y[b : b + 1], mask[b : b + 1]) for b in range(3)]
    assert masked_nll_loss(out, y, mask).item() == pytest.approx(sum(p.item() for p in per_patch) / 3, rel=1e-6)


@pytest.mark.parametrize("mu,s2,y", [(0.5, 0.0, 0.6), (0.3, 1e-4, 0.25), (0.9, 0.02, 0.2)])
def test_gradient_includes_the_floor(mu, s2, y):
    # dL/dmu with V = s2 + f^2 mu^2:  -(y - mu)/V + (1/2)(1/V - (y-mu)^2/V^2) * 2 f^2 mu
    V = s2 + F**2 * mu**2
    analytic_mu = -(y - mu) / V + 0.5 * (1 / V - (y - mu) ** 2 / V**2) * 2 * F**2 * mu
    analytic_s2 = 0.5 * (1 / V - (y - mu) ** 2 / V**2)
    mu_t = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
    s2_t = torch.tensor(s2, dtype=torch.float64, requires_grad=True)
    loss = gaussian_nll(torch.tensor(y, dtype=torch.float64), mu_t, log_variance(mu_t, s2_t, eps=0.0))
    loss.backward()
    assert mu_t.grad.item() == pytest.approx(analytic_mu, rel=1e-9)
    assert s2_t.grad.item() == pytest.approx(analytic_s2, rel=1e-9)
    # and by central finite differences of the hand formula
    h = 1e-7
    fd = (_voxel_loss_by_hand(y, mu + h, s2) - _voxel_loss_by_hand(y, mu - h, s2)) / (2 * h)
    assert mu_t.grad.item() == pytest.approx(fd, rel=1e-5)
    # without the floor the mu-gradient would be -(y - mu)/s2 only: the floor term matters
    if s2 == 0.0:
        assert abs(0.5 * (1 / V - (y - mu) ** 2 / V**2) * 2 * F**2 * mu) > 1e-3 * abs(analytic_mu)


def test_zero_mean_and_variance_stay_finite():
    out = torch.zeros(1, 2, 2, 2, 2, requires_grad=True)
    loss = masked_nll_loss(out, torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(out.grad))
