"""Full-volume prediction by sliding windows with overlap blending (paper 2.3.2, eqs. 3-6 inputs).

The network was trained on patches; a whole case is predicted window by window. Windows
of edge ``window`` are placed every ``stride = window * (1 - overlap)`` voxels along each
axis, the last one flush with the volume's end, so every voxel is covered. Overlapping
predictions are blended with weights that fall off towards the window border (a Gaussian,
``sigma = 0.125 window``, or a linear tent), then divided by the summed weights: a
weighted mean, so a network that returns its input reproduces the input exactly. A volume
smaller than a window is padded with the normalised minimum (0.001, air) and cropped back.

Windows that hold no body voxel can be skipped (``mask``); voxels covered only by skipped
windows are set to 0 (no prediction outside the body's neighbourhood).

Per member the result is ``mu`` and ``sigma_aleatoric = sqrt(sigma_tilde^2 + (0.055 mu)^2)``
(eq. 5, floor included, normalised units), converted to Gy per mAs with the member's
normalisation constants.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from ..errors import InputError, MissingStepError
from ..paths import resolve_path
from ..provenance import digest, file_digest, settings_attr
from .checkpoint import Member, check_compatible, load_checkpoint
from .normalise import NORMALISED_LOW, kerma_variable

__all__ = [
    "blending_weights",
    "load_ensemble",
    "member_checkpoints",
    "model_digest",
    "predict_case",
    "predict_members",
    "predict_model",
    "prediction_digest",
    "registry",
    "resolve_device",
    "show_progress",
    "sliding_window_predict",
    "window_starts",
]

GAUSSIAN_SIGMA_FRACTION = 0.125
"""Standard deviation of the Gaussian blending weights as a fraction of the window edge."""
MIN_WEIGHT = 1e-3
"""Smallest blending weight relative to the centre (keeps border voxels covered)."""
BODY_VARIABLE = "body_mask"
DENSITY_VARIABLE = "density_e"
#: Prediction attribute with the digest of the members and input it was made from
#: (:func:`prediction_digest`); a prediction whose digest differs is made again.
PREDICTION_SETTINGS_ATTR = "settings_sha1"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def show_progress(progress: bool | None) -> bool:
    """Progress bars: as asked, else ``CTDOSE_PROGRESS`` (0/1) if set, else only on a terminal."""
    if progress is not None:
        return bool(progress)
    env = os.environ.get("CTDOSE_PROGRESS")
    if env is not None:
        return env.strip().lower() not in ("", "0", "false", "no")
    return sys.stderr.isatty()


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start indices of windows along one axis, covering ``[0, size)``; last one flush with the end.

    Examples
    --------
    >>> window_starts(10, 4, 2)
    [0, 2, 4, 6]
    >>> window_starts(11, 4, 3)
    [0, 3, 6, 7]
    """
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, max(int(stride), 1)))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def blending_weights(window: int, mode: str = "gaussian") -> np.ndarray:
    """Blending weights of a cubic window, ``[window]*3``, maximum 1 at the centre.

    Parameters
    ----------
    window : int
        Window edge (voxels).
    mode : {"gaussian", "linear", "constant"}
        Gaussian (sigma = 0.125 window), linear tent, or uniform weights.
    """
    centre = (window - 1) / 2.0
    offset = np.arange(window) - centre
    if mode == "gaussian":
        w1 = np.exp(-0.5 * (offset / (GAUSSIAN_SIGMA_FRACTION * window)) ** 2)
    elif mode == "linear":
        w1 = 1.0 - np.abs(offset) / (centre + 1.0)
    elif mode == "constant":
        w1 = np.ones(window)
    else:
        raise InputError(f"blending mode {mode!r}: expected gaussian, linear or constant")
    w = w1[:, None, None] * w1[None, :, None] * w1[None, None, :]
    return np.maximum(w / w.max(), MIN_WEIGHT).astype(np.float32)


@torch.no_grad()  # not inference_mode: the caller may keep training this net
def sliding_window_predict(
    net: torch.nn.Module,
    inputs: np.ndarray | torch.Tensor,
    window: int,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: str | torch.device | None = "cpu",
    blend: str = "gaussian",
    mask: np.ndarray | None = None,
    pad_value: float = NORMALISED_LOW,
) -> np.ndarray:
    """Apply `net` to a whole volume window by window and blend the overlaps.

    Parameters
    ----------
    net : torch.nn.Module
        Maps ``[batch, C, w, w, w]`` to ``[batch, K, w, w, w]`` (put in eval mode here).
    inputs : array, shape (C, z, y, x)
        Normalised inputs.
    window : int
        Window edge in voxels (a multiple of the U-Net's ``size_multiple``).
    overlap : float
        Fraction of a window shared with its neighbour, ``0 <= overlap < 1``.
    batch_size : int
        Windows per forward pass.
    device : str or torch.device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    blend : str
        Weights, see :func:`blending_weights`.
    mask : array of bool, shape (z, y, x), optional
        Skip windows without any voxel of the mask (e.g. the body).
    pad_value : float
        Input value used where a window reaches beyond a volume smaller than the window.

    Returns
    -------
    numpy.ndarray of float32, shape (K, z, y, x)
    """
    if not 0 <= overlap < 1:
        raise InputError(f"sliding window overlap {overlap}: expected 0 <= overlap < 1")
    device = resolve_device(device)
    x = torch.as_tensor(np.asarray(inputs, np.float32) if not torch.is_tensor(inputs) else inputs)
    x = x.to(device=device, dtype=torch.float32)
    shape = tuple(x.shape[1:])
    pads = [max(window - n, 0) for n in shape]
    if any(pads):
        x = torch.nn.functional.pad(x, [0, pads[2], 0, pads[1], 0, pads[0]], value=pad_value)
    if mask is not None:
        mask_t = torch.as_tensor(np.array(mask, dtype=bool), device=device)
        if any(pads):
            mask_t = torch.nn.functional.pad(mask_t, [0, pads[2], 0, pads[1], 0, pads[0]], value=False)
    padded = tuple(x.shape[1:])
    stride = max(int(math.floor(window * (1 - overlap))), 1)
    corners = list(itertools.product(*(window_starts(n, window, stride) for n in padded)))
    if mask is not None:
        corners = [c for c in corners if bool(mask_t[tuple(slice(s, s + window) for s in c)].any())]
    weights = torch.as_tensor(blending_weights(window, blend), device=device)
    net = net.to(device).eval()
    channels_last = any(p.dim() == 5 for p in net.parameters())
    if channels_last:  # faster 3D convolutions (same numbers)
        net = net.to(memory_format=torch.channels_last_3d)
    acc = None
    wsum = torch.zeros(padded, device=device)
    for first in range(0, len(corners), batch_size):
        batch_corners = corners[first : first + batch_size]
        slices = [tuple(slice(s, s + window) for s in c) for c in batch_corners]
        batch = torch.stack([x[(slice(None), *sl)] for sl in slices])
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        out = net(batch).float()
        if acc is None:
            acc = torch.zeros((out.shape[1], *padded), device=device)
        for k, sl in enumerate(slices):
            acc[(slice(None), *sl)] += out[k] * weights
            wsum[sl] += weights
    if acc is None:  # nothing to predict (empty mask)
        n_out = getattr(net, "out_channels", x.shape[0])
        return np.zeros((n_out, *shape), np.float32)
    covered = wsum > 0
    acc = torch.where(covered, acc / torch.where(covered, wsum, torch.ones_like(wsum)), torch.zeros_like(acc))
    return acc[:, : shape[0], : shape[1], : shape[2]].cpu().numpy()


def predict_members(
    members: Sequence[Member],
    density_e: np.ndarray,
    kerma_gy_per_mas: np.ndarray,
    window: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: str | torch.device | None = "cpu",
    blend: str = "gaussian",
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-member dose and aleatoric uncertainty on a whole case, in Gy per mAs.

    Parameters
    ----------
    members : sequence of Member
        Loaded ensemble members (:func:`load_ensemble`).
    density_e : ndarray (z, y, x)
        Electron density (m^-3).
    kerma_gy_per_mas : ndarray (z, y, x)
        Air-kerma input map of the members' kerma mode (Gy per mAs).
    window : int, optional
        Window edge; default: the members' ``infer_window`` (profile ``train.infer_window``),
        else their training patch size.
    overlap, batch_size, device, blend, mask
        See :func:`sliding_window_predict`.

    Returns
    -------
    mu, sigma_aleatoric : ndarray of float32, shape (member, z, y, x)
        ``mu_i`` and ``sigma_i = sqrt(sigma_tilde_i^2 + (f mu_i)^2)`` (eq. 5), Gy per mAs.
    """
    mus, sigmas = [], []
    far_cache: dict[int, np.ndarray] = {}
    for member in members:
        meta = member.meta
        win = int(window or meta.get("infer_window") or meta.get("patch_size") or member.net.size_multiple)
        inputs = member.normaliser.inputs(density_e, kerma_gy_per_mas)
        out = sliding_window_predict(member.net, inputs, win, overlap, batch_size, device, blend, mask)
        mu_n, var_n = out[0].astype(np.float64), out[1].astype(np.float64)
        sigma_n = np.sqrt(var_n + (member.floor_fraction * mu_n) ** 2)
        mu = member.normaliser.dose_from_normalised(mu_n)
        sigma = member.normaliser.sigma_from_normalised(sigma_n)
        if mask is not None:  # no prediction far from the body: 0, as documented
            if win not in far_cache:
                far_cache[win] = ~_covered(np.asarray(mask, bool), win, overlap)
            mu[far_cache[win]], sigma[far_cache[win]] = 0.0, 0.0
        mus.append(mu.astype(np.float32))
        sigmas.append(sigma.astype(np.float32))
    return np.stack(mus), np.stack(sigmas)


def _covered(mask: np.ndarray, window: int, overlap: float) -> np.ndarray:
    """Voxels inside at least one window that holds a mask voxel."""
    shape = [max(n, window) for n in mask.shape]
    padded = np.zeros(shape, bool)
    padded[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    stride = max(int(math.floor(window * (1 - overlap))), 1)
    out = np.zeros(shape, bool)
    for c in itertools.product(*(window_starts(n, window, stride) for n in shape)):
        sl = tuple(slice(s, s + window) for s in c)
        if padded[sl].any():
            out[sl] = True
    return out[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


def models_dir(run_dir: str | Path) -> Path:
    """``<run_dir>/models`` (a relative run directory is taken from the project root)."""
    return resolve_path(run_dir) / "models"


def member_checkpoints(run_dir: str | Path, model_id: str) -> list[Path]:
    """The checkpoint files of a model's members, in member order.

    Those the registry (``models/registry.csv``) lists for the model: the members of its
    latest training, even where files of an earlier, larger ensemble are still there. Without
    a registry entry, every ``models/<model_id>/member<k>.pt``.

    Raises
    ------
    MissingStepError
        No member, or a registered checkpoint file that is not there (run notebook 03_training).
    """
    run_dir = resolve_path(run_dir)
    folder = models_dir(run_dir) / model_id
    step = "run notebook 03_training (ctdose run --only 03_training)"
    table = models_dir(run_dir) / "registry.csv"
    rows = registry(run_dir) if table.is_file() else pd.DataFrame(columns=["model_id", "member", "checkpoint"])
    rows = rows[rows["model_id"].astype(str) == model_id].sort_values("member")
    if len(rows):
        paths = [run_dir / str(c) for c in rows["checkpoint"]]
        for path in paths:
            if not path.is_file():
                raise MissingStepError(f"{table}: member checkpoint {path} of model {model_id!r} is missing; {step}")
        return paths
    paths = sorted(folder.glob("member*.pt"), key=lambda p: int("".join(ch for ch in p.stem if ch.isdigit()) or 0))
    if not paths:
        raise MissingStepError(f"model {model_id!r} has no trained members in {folder}; {step}")
    return paths


def model_digest(run_dir: str | Path, model_id: str) -> str:
    """Digest of a model's member checkpoint files (their bytes, in member order)."""
    return digest([file_digest(p) for p in member_checkpoints(run_dir, model_id)])


def prediction_digest(model_sha1: str, case_attrs: dict, kerma_mode: str) -> str:
    """Digest of what a prediction is made from: the model (:func:`model_digest`) and the digest
    recorded with the case's kerma input (:mod:`ctdose.provenance`; None where none is)."""
    return digest({"model": model_sha1, "kerma": case_attrs.get(settings_attr(kerma_variable(kerma_mode)))})


def load_ensemble(
    run_dir: str | Path,
    model_id: str,
    device: str | torch.device | None = "cpu",
    kerma_mode: str | None = None,
    spacing_mm: Sequence[float] | None = None,
) -> list[Member]:
    """Load every member of a model from ``<run_dir>/models/<model_id>/member<k>.pt``.

    Raises
    ------
    MissingStepError
        No trained member of `model_id` (run notebook 03_training).
    """
    paths = member_checkpoints(run_dir, model_id)
    device = resolve_device(device)
    if kerma_mode is None:
        kerma_mode = model_id.split("_mix")[0]
    return [load_checkpoint(p, kerma_mode=kerma_mode, spacing_mm=spacing_mm, device=device) for p in paths]


def predict_case(
    store,
    members: Sequence[Member],
    case_id: str,
    device: str | torch.device | None = "cpu",
    window: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    blend: str = "gaussian",
) -> xr.Dataset:
    """Predict one stored case with every member; returns the prediction Dataset.

    Dims ``(member, z, y, x)``, variables ``mu`` and ``sigma_aleatoric`` (Gy per mAs).
    A case whose spacing does not match the members' training grid is refused.
    """
    mode = members[0].kerma_mode
    attrs = store.case_attrs(case_id)
    spacing = attrs.get("spacing_mm")
    for member in members:
        check_compatible(member.meta, mode, spacing, member.meta.get("path", "checkpoint"))
    variables = [DENSITY_VARIABLE, kerma_variable(mode)]
    ds = store.read_case(case_id, variables=variables)
    body = store.read_case(case_id)
    mask = (body[BODY_VARIABLE].values > 0) if BODY_VARIABLE in body else (body["labels"].values > 0)
    mu, sigma = predict_members(
        members, ds[DENSITY_VARIABLE].values, ds[kerma_variable(mode)].values,
        window=window, overlap=overlap, batch_size=batch_size, device=device, blend=blend, mask=mask,
    )
    coords = {d: ds[d].values for d in ("z", "y", "x")}
    coords["member"] = np.arange(len(members))
    dims = ("member", "z", "y", "x")
    out = xr.Dataset(
        {
            "mu": (dims, mu, {"units": "Gy per mAs", "long_name": "member mean dose mu_i"}),
            "sigma_aleatoric": (dims, sigma, {"units": "Gy per mAs",
                                              "long_name": "member aleatoric sd sigma_i, eq. 5 floor applied"}),
        },
        coords=coords,
        attrs={
            "kerma_mode": mode,
            "percent_real": members[0].meta.get("percent_real"),
            "real_source": members[0].meta.get("real_source"),
            "member_seeds": [m.meta.get("seed") for m in members],
            "spacing_mm": attrs.get("spacing_mm"),
            "origin_mm": attrs.get("origin_mm"),
            "cohort": attrs.get("cohort"),
        },
    )
    return out


def predict_model(
    store,
    model_id: str,
    case_ids: Sequence[str],
    device: str | torch.device | None = "auto",
    progress: bool | None = None,
    window: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    blend: str = "gaussian",
) -> None:
    """Predict cases with every member of a model; writes ``predictions/<model_id>/<case_id>``.

    Parameters
    ----------
    store : CaseStore
    model_id : str
        ``f"{kerma_mode}_mix{percent_real:03d}"``.
    case_ids : sequence of str
        Cases to predict (e.g. the test set).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    progress : bool, optional
        Progress bar; default only on an interactive terminal.
    window, overlap, batch_size, blend
        See :func:`sliding_window_predict`.

    Raises
    ------
    MissingStepError
        The model has not been trained (notebook 03_training).
    """
    members = load_ensemble(store.run_dir, model_id, device=device)
    model_sha1 = model_digest(store.run_dir, model_id)
    for case_id in tqdm(list(case_ids), desc=f"predict {model_id}", disable=not show_progress(progress)):
        ds = predict_case(store, members, case_id, device, window, overlap, batch_size, blend)
        ds.attrs[PREDICTION_SETTINGS_ATTR] = prediction_digest(model_sha1, store.case_attrs(case_id),
                                                               members[0].kerma_mode)
        store.write_prediction(model_id, case_id, ds)


def registry(run_dir: str | Path) -> pd.DataFrame:
    """The model registry ``<run_dir>/models/registry.csv`` written by training."""
    path = models_dir(run_dir) / "registry.csv"
    if not path.is_file():
        raise MissingStepError(f"{path}: no trained models; run notebook 03_training (ctdose run --only 03_training)")
    return pd.read_csv(path)
