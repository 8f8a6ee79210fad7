"""Heteroscedastic Gaussian loss with the paper's variance floor (eqs. 1, 2 and 5).

The network predicts ``mu(x)`` and ``sigma_tilde(x)^2`` per voxel. The variance used in
the likelihood is floored by the Monte Carlo uncertainty of the training data, 5.5 %
(k = 1) of the dose (eq. 5)::

    log sigma^2(x) = log(sigma_tilde^2(x) + (f mu(x))^2),      f = 0.055

and the per-voxel loss is the Gaussian negative log-likelihood without its constant
(eq. 1)::

    L(x) = 1/2 exp(-log sigma^2(x)) (y(x) - mu(x))^2 + 1/2 log sigma^2(x)

summed over the body voxels ``M(x) = 1`` of a patch (eq. 2) and averaged over the patches
of a batch. Everything is written out explicitly: :func:`torch.nn.functional.gaussian_nll_loss`
clamps the variance without gradient, which would cut the floor's gradient with respect to
``mu``.

Units: ``mu`` and ``y`` are *normalised* doses (min-max to [0.001, 1],
:mod:`ctdose.learn.normalise`); the floor applies to the normalised ``mu`` as in the paper.
"""

from __future__ import annotations

import torch

__all__ = ["MC_UNCERTAINTY_FRACTION", "VARIANCE_EPS", "gaussian_nll", "log_variance", "masked_nll_loss"]

MC_UNCERTAINTY_FRACTION = 0.055
"""Relative MC uncertainty of the training doses (k = 1), the eq. 5 floor (paper 2.3.2)."""

VARIANCE_EPS = 1e-12
"""Added inside the logarithm of eq. 5 so that ``mu = sigma_tilde = 0`` stays finite.

Far below the smallest floor of a body voxel, ``(0.055 * 0.001)^2 = 3e-9`` (normalised units).
"""


def log_variance(
    mu: torch.Tensor,
    sigma_tilde_sq: torch.Tensor,
    floor_fraction: float = MC_UNCERTAINTY_FRACTION,
    eps: float = VARIANCE_EPS,
) -> torch.Tensor:
    """Eq. 5: ``log sigma^2 = log(sigma_tilde^2 + (floor_fraction * mu)^2 + eps)``.

    Parameters
    ----------
    mu : Tensor
        Predicted mean dose (normalised units).
    sigma_tilde_sq : Tensor
        Second network channel, non-negative (normalised units squared).
    floor_fraction : float
        Relative floor of the standard deviation; the paper's MC uncertainty 0.055.
    eps : float
        Tiny variance keeping the logarithm finite (see :data:`VARIANCE_EPS`).

    Returns
    -------
    Tensor
        ``log sigma^2`` with the shape of `mu`.
    """
    return torch.log(sigma_tilde_sq + (floor_fraction * mu) ** 2 + eps)


def gaussian_nll(y: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``1/2 exp(-log sigma^2) (y - mu)^2 + 1/2 log sigma^2`` per voxel."""
    return 0.5 * torch.exp(-log_var) * (y - mu) ** 2 + 0.5 * log_var


def masked_nll_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    floor_fraction: float = MC_UNCERTAINTY_FRACTION,
    eps: float = VARIANCE_EPS,
) -> torch.Tensor:
    """Eq. 2 with eqs. 1 and 5: body-masked sum of the voxel losses, mean over the batch.

    Parameters
    ----------
    output : Tensor, shape (batch, 2, z, y, x)
        Network output: channel 0 ``mu``, channel 1 ``sigma_tilde^2`` (>= 0).
    target : Tensor, shape (batch, z, y, x) or (batch, 1, z, y, x)
        MC dose ``y`` (normalised units).
    mask : Tensor, same shape as `target`
        Body mask ``M(x)`` (0/1 or bool).
    floor_fraction, eps : float
        See :func:`log_variance`.

    Returns
    -------
    Tensor
        Scalar loss: ``mean_batch sum_x M(x) L(x)``.
    """
    mu, var = output[:, 0], output[:, 1]
    target = target.reshape(mu.shape)
    mask = mask.reshape(mu.shape).to(mu.dtype)
    voxel_loss = gaussian_nll(target, mu, log_variance(mu, var, floor_fraction, eps))
    masked = voxel_loss * mask
    return masked.flatten(1).sum(dim=1).mean()
