"""Organ-dose accuracy on validation cases: the paper's checkpoint selection rule (2.3.1).

"The best performing network was chosen from these ten networks based on organ dose
prediction accuracy." We measure it as the **mean absolute relative organ-dose
deviation from MC**: for every validation case and every dose group present in it,
``|D_NN - D_MC| / D_MC`` with organ doses = mean voxel dose over the organ (paper 2.3.2),
averaged over the organs of a case and then over the cases. The network prediction is a
full-volume sliding-window prediction (:mod:`ctdose.learn.inference`).

The **constant-dose baseline** predicts one dose everywhere: the mean MC dose over the
body voxels of the training cases. Its organ-dose deviation on the same validation cases
is what a network must clearly beat.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import MissingStepError
from .inference import predict_members
from .checkpoint import Member
from .loss import MC_UNCERTAINTY_FRACTION
from .normalise import DOSE_VARIABLE, Normaliser, kerma_variable

__all__ = [
    "OrganDoseEvaluator",
    "body_dose_moments",
    "constant_dose_baseline",
    "default_dose_groups",
    "organ_dose_deviation",
]

BODY_VARIABLE = "body_mask"


def default_dose_groups() -> dict[str, list[int]]:
    """The organ dose groups of the label scheme (``ctdose.anatomy.organs.dose_groups``)."""
    try:
        from ..anatomy.organs import dose_groups
    except ImportError as exc:  # the anatomy package is not installed in this tree
        raise MissingStepError(f"organ dose groups unavailable ({exc}); pass groups explicitly") from None
    return dose_groups()


def _organ_means(dose: np.ndarray, labels: np.ndarray, groups: Mapping[str, Iterable[int]]) -> dict[str, float]:
    from ..dosimetry import organ_mean_doses

    return organ_mean_doses(dose, labels, groups)


def organ_dose_deviation(
    dose_pred: np.ndarray, dose_mc: np.ndarray, labels: np.ndarray, groups: Mapping[str, Iterable[int]]
) -> float:
    """Mean over organs of ``|D_pred - D_MC| / D_MC`` for one case (organs present only).

    Returns NaN when no organ of `groups` is in the case or every MC organ dose is zero.
    """
    pred = _organ_means(dose_pred, labels, groups)
    ref = _organ_means(dose_mc, labels, groups)
    devs = [abs(pred[k] - ref[k]) / abs(ref[k]) for k in ref if k in pred and ref[k] != 0]
    return float(np.mean(devs)) if devs else float("nan")


def _case_volumes(store, case_id: str, kerma_mode: str):
    ds = store.read_case(case_id, variables=["labels", "density_e", kerma_variable(kerma_mode), DOSE_VARIABLE])
    full = store.read_case(case_id)
    mask = (full[BODY_VARIABLE].values > 0) if BODY_VARIABLE in full else (ds["labels"].values > 0)
    return ds, mask


class OrganDoseEvaluator:
    """Validation organ-dose deviation of a network (callable on a net).

    Parameters
    ----------
    store : CaseStore
    case_ids : sequence of str
        Validation cases.
    kerma_mode : str
    normaliser : Normaliser
    groups : mapping
        ``{dose group: [label ids]}``.
    window : int
        Sliding window edge (voxels).
    overlap : float
        Window overlap fraction.
    batch_size : int
        Windows per forward pass.
    floor_fraction : float
        Eq. 5 floor (only affects sigma, not the organ doses).
    max_cases : int, optional
        Evaluate at most this many validation cases, spread evenly over the sorted ids (the
        paper uses all; small CPU profiles cap the cost of full-volume predictions at every
        checkpoint). ``None`` = all.
    """

    def __init__(
        self,
        store,
        case_ids: Sequence[str],
        kerma_mode: str,
        normaliser: Normaliser,
        groups: Mapping[str, Iterable[int]],
        window: int,
        overlap: float = 0.5,
        batch_size: int = 4,
        floor_fraction: float = MC_UNCERTAINTY_FRACTION,
        max_cases: int | None = None,
    ):
        case_ids = sorted(case_ids)
        if max_cases is not None and 0 < int(max_cases) < len(case_ids):
            picks = np.linspace(0, len(case_ids) - 1, int(max_cases)).round().astype(int)
            case_ids = [case_ids[i] for i in picks]
        self.store, self.case_ids = store, case_ids
        self._volumes: dict[str, tuple] = {}  # read once, reused at every checkpoint
        self.kerma_mode, self.normaliser = kerma_mode, normaliser
        self.groups = {k: list(v) for k, v in groups.items()}
        self.window, self.overlap, self.batch_size = int(window), float(overlap), int(batch_size)
        self.floor_fraction = float(floor_fraction)

    def __call__(self, net: torch.nn.Module, device: str | torch.device = "cpu") -> float:
        """Mean over validation cases of the case's mean absolute relative organ-dose deviation."""
        was_training = net.training
        member = Member(net=net, normaliser=self.normaliser,
                        meta={"kerma_mode": self.kerma_mode, "floor_fraction": self.floor_fraction,
                              "patch_size": self.window, "spacing_mm": [1.0, 1.0, 1.0]})
        devs = []
        for case_id in self.case_ids:
            if case_id not in self._volumes:
                ds, mask = _case_volumes(self.store, case_id, self.kerma_mode)
                self._volumes[case_id] = (ds["density_e"].values, ds[kerma_variable(self.kerma_mode)].values,
                                          ds[DOSE_VARIABLE].values, ds["labels"].values, mask)
            density, kerma, dose, labels, mask = self._volumes[case_id]
            mu, _ = predict_members([member], density, kerma, window=self.window, overlap=self.overlap,
                                    batch_size=self.batch_size, device=device, mask=mask)
            devs.append(organ_dose_deviation(mu[0], dose, labels, self.groups))
        net.train(was_training)
        devs = [d for d in devs if np.isfinite(d)]
        return float(np.mean(devs)) if devs else float("nan")


def constant_dose_baseline(
    store,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    groups: Mapping[str, Iterable[int]],
) -> tuple[float, float]:
    """Organ-dose deviation of the constant-dose baseline on the validation cases.

    Returns
    -------
    (dose_gy_per_mas, deviation)
        The constant (mean MC dose over the training cases' body voxels) and the mean
        absolute relative organ-dose deviation it gives on `val_ids`.
    """
    total, count = 0.0, 0
    for case_id in train_ids:
        full = store.read_case(case_id)
        mask = (full[BODY_VARIABLE].values > 0) if BODY_VARIABLE in full else (full["labels"].values > 0)
        dose = full[DOSE_VARIABLE].values
        total += float(dose[mask].sum(dtype=np.float64))
        count += int(mask.sum())
    constant = total / max(count, 1)
    devs = []
    for case_id in val_ids:
        ds = store.read_case(case_id, variables=["labels", DOSE_VARIABLE])
        mc = ds[DOSE_VARIABLE].values
        devs.append(organ_dose_deviation(np.full(mc.shape, constant), mc, ds["labels"].values, groups))
    devs = [d for d in devs if np.isfinite(d)]
    return constant, (float(np.mean(devs)) if devs else float("nan"))


def body_dose_moments(store, case_ids: Sequence[str]) -> tuple[float, float]:
    """Mean and variance of the MC dose over the body voxels of `case_ids` (Gy/mAs, (Gy/mAs)^2)."""
    total, total_sq, count = 0.0, 0.0, 0
    for case_id in case_ids:
        full = store.read_case(case_id)
        mask = (full[BODY_VARIABLE].values > 0) if BODY_VARIABLE in full else (full["labels"].values > 0)
        dose = full[DOSE_VARIABLE].values[mask].astype(np.float64)
        total, total_sq, count = total + dose.sum(), total_sq + (dose**2).sum(), count + dose.size
    mean = total / max(count, 1)
    return mean, max(total_sq / max(count, 1) - mean**2, 0.0)
