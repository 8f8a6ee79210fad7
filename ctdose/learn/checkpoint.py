"""Save and load trained ensemble members safely (``torch.load(weights_only=True)``).

A checkpoint is a plain dictionary of tensors and Python scalars, strings, lists and
dicts, so it loads with ``weights_only=True`` (no pickled code is executed)::

    format          "ctdose-unet/1"
    state_dict      the U-Net weights (tensors)
    net             {"in_channels", "out_channels", "width", "depth"}
    normaliser      {"density": [lo, hi], "kerma": [lo, hi], "dose": [lo, hi]}
    kerma_mode      "cylinder" | "patient"
    percent_real    data mix, percent of real training cases
    real_source     "clinical" | "surrogate"
    member, seed    ensemble member index and its seed
    profile         profile name
    spacing_mm      [dz, dy, dx] of the training grid
    patch_size      training patch edge (voxels)
    infer_window    sliding-window edge for full volumes (voxels)
    floor_fraction  eq. 5 floor (0.055)
    best_epoch, val_organ_dev, n_train, n_val, train_cases_sha1, ctdose_version

Loading can be restricted to a kerma mode and a grid: a checkpoint trained on another
input mode or on a grid spacing that differs by more than :data:`SPACING_RTOL` is refused
with an :class:`~ctdose.errors.InputError` that says what differs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._atomic import atomic_path
from .._plain import to_plain
from ..errors import InputError
from .loss import MC_UNCERTAINTY_FRACTION
from .normalise import Normaliser
from .unet import UNet3d

__all__ = ["CHECKPOINT_FORMAT", "SPACING_RTOL", "Member", "check_compatible", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "ctdose-unet/1"
SPACING_RTOL = 0.01
"""Largest relative difference of a voxel edge from the training spacing that is accepted."""

_REQUIRED = ("format", "state_dict", "net", "normaliser", "kerma_mode", "percent_real", "spacing_mm")


@dataclass
class Member:
    """A loaded ensemble member: the network (eval mode), its normaliser and metadata."""

    net: UNet3d
    normaliser: Normaliser
    meta: dict

    @property
    def kerma_mode(self) -> str:
        return self.meta["kerma_mode"]

    @property
    def spacing_mm(self) -> list[float]:
        return [float(s) for s in self.meta["spacing_mm"]]

    @property
    def floor_fraction(self) -> float:
        return float(self.meta["floor_fraction"])


def save_checkpoint(
    path: str | os.PathLike,
    net: UNet3d,
    normaliser: Normaliser,
    *,
    kerma_mode: str,
    percent_real: float,
    spacing_mm: Sequence[float],
    **meta: Any,
) -> Path:
    """Write a checkpoint atomically (temporary file, then rename).

    Parameters
    ----------
    path : path
        Target file (``<run_dir>/models/<model_id>/member<k>.pt``).
    net : UNet3d
        Trained network (its weights are copied to CPU).
    normaliser : Normaliser
        Normalisation constants of the model's training set.
    kerma_mode : str
        Input mode the network was trained with.
    percent_real : number
        Data mix.
    spacing_mm : sequence of 3 float
        Voxel size of the training cases (mm).
    **meta
        Further plain values (member, seed, profile, real_source, best_epoch, ...).
    """
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "net": net.hyper_parameters(),
        "normaliser": normaliser.to_dict(),
        "kerma_mode": str(kerma_mode),
        "percent_real": percent_real,
        "spacing_mm": [float(s) for s in spacing_mm],
        "ctdose_version": __version__,
    }
    payload.update(to_plain(meta, "checkpoint metadata"))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def check_compatible(
    meta: dict,
    kerma_mode: str | None = None,
    spacing_mm: Sequence[float] | None = None,
    path: str | os.PathLike = "checkpoint",
) -> None:
    """Refuse a checkpoint (its metadata) for another kerma mode or an incompatible grid.

    Raises
    ------
    InputError
        Naming the checkpoint, what it was trained with and what was asked for.
    """
    if kerma_mode is not None and meta["kerma_mode"] != kerma_mode:
        raise InputError(
            f"{path}: trained with the {meta['kerma_mode']!r} kerma input, cannot be used for "
            f"{kerma_mode!r} inputs; train a {kerma_mode} model (notebook 03_training)"
        )
    if spacing_mm is not None:
        trained = np.asarray(meta["spacing_mm"], float)
        wanted = np.asarray(list(spacing_mm), float)
        if trained.shape != wanted.shape or np.any(np.abs(wanted - trained) > SPACING_RTOL * trained):
            raise InputError(
                f"{path}: trained on a {tuple(trained.tolist())} mm grid, refused for a "
                f"{tuple(wanted.tolist())} mm grid (resample the case or train on this spacing)"
            )


def load_checkpoint(
    path: str | os.PathLike,
    kerma_mode: str | None = None,
    spacing_mm: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> Member:
    """Load a checkpoint with ``weights_only=True`` and check it fits its use.

    Parameters
    ----------
    path : path
        Checkpoint file.
    kerma_mode : str, optional
        Required input mode; a checkpoint of another mode is refused.
    spacing_mm : sequence of 3 float, optional
        Grid it will be applied to; refused when a voxel edge differs from the training
        spacing by more than :data:`SPACING_RTOL` (relative).
    device : str or torch.device
        Where to put the network.

    Returns
    -------
    Member
        Network in eval mode, normaliser and metadata (all keys except ``state_dict``).

    Raises
    ------
    InputError
        Missing or unreadable file, not a ctdose checkpoint, wrong input mode or grid.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, pickled code, ...
        raise InputError(f"{path}: not a loadable ctdose checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
        raise InputError(f"{path}: not a ctdose checkpoint (missing keys)")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: checkpoint format {payload['format']!r}, expected {CHECKPOINT_FORMAT!r}")
    check_compatible(payload, kerma_mode, spacing_mm, path)
    net = UNet3d(**payload["net"])
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit the stored network ({exc})") from None
    net.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta.setdefault("floor_fraction", MC_UNCERTAINTY_FRACTION)
    meta["path"] = str(path)
    return Member(net=net, normaliser=Normaliser.from_dict(payload["normaliser"]), meta=meta)
