"""Training patches drawn from the case store (paper 2.3.2).

"From each volume, random points in the non-air geometry were sampled and used as the
middle points of 32 x 32 x 32 voxel patches." A patch holds the two normalised inputs
(electron density, air-kerma map), the normalised MC dose and the body mask ``M(x)`` of
eq. 2. Centres are drawn uniformly among the body voxels (``body_mask``, or ``labels > 0``
when a case has no body mask), so a patch is never centred on air. Where a patch reaches
beyond the volume it is padded: inputs and target with the normalised minimum 0.001,
mask with 0 (padded voxels do not enter the loss).

Memory: cases are read from the Zarr store on demand and kept in a small LRU cache
(``cache_cases``). With ``lazy=True`` only each patch's region is read from the store
(plus the case's body mask, for sampling), for cases too large to hold a few of; the
default reads a case's four volumes once and cuts many patches from them, which is much
faster for the chunked, compressed store.

Order: like a TorchIO queue, each epoch visits the training cases in a seeded random
order, a window of ``cache_cases`` cases at a time; the patches of a window are shuffled
together. Every draw comes from ``numpy.random.default_rng`` seeded with
``(seed, epoch)``: the same seed gives the same patches.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from .normalise import DENSITY_VARIABLE, DOSE_VARIABLE, NORMALISED_LOW, Normaliser, kerma_variable

__all__ = ["CaseReader", "PatchDataModule", "PatchDataset", "example_patch", "patch_box"]

BODY_VARIABLE = "body_mask"
LABELS_VARIABLE = "labels"
_STREAM_TRAIN, _STREAM_VAL, _STREAM_CALIBRATION = 11, 12, 13


def patch_box(centre: Sequence[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last voxel index of a cubic patch of edge `size` around `centre`.

    The centre voxel is at offset ``size // 2`` inside the patch.
    """
    lo = np.asarray(centre, int) - size // 2
    return lo, lo + size


def _cut(array, lo: np.ndarray, hi: np.ndarray, fill: float) -> np.ndarray:
    """``array[lo:hi]`` (3D) with the parts outside the array filled with `fill`.

    `array` may be a NumPy array or a lazy xarray variable (then only the region is read).
    """
    shape = np.asarray(array.shape[-3:])
    src_lo, src_hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    region = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
    if hasattr(array, "isel"):
        part = array.isel(z=region[0], y=region[1], x=region[2]).values
    else:
        part = array[(..., *region)]
    size = tuple(hi - lo)
    if part.shape[-3:] == size:
        return np.array(part)
    out = np.full(part.shape[:-3] + size, fill, dtype=part.dtype)
    dst = tuple(slice(a - l, b - l) for a, b, l in zip(src_lo, src_hi, lo))
    out[(..., *dst)] = part
    return out


class CaseReader:
    """Reads normalised patches of stored cases, with an LRU cache of a few cases.

    Parameters
    ----------
    store : CaseStore
    kerma_mode : str
        ``"cylinder"`` or ``"patient"``.
    normaliser : Normaliser
        Constants of the model's training set.
    cache_cases : int
        Cases held in memory at a time (profile ``train.cache_cases``).
    lazy : bool
        Read only patch regions from the store instead of whole cases.
    """

    def __init__(self, store, kerma_mode: str, normaliser: Normaliser, cache_cases: int = 4, lazy: bool = False):
        self.store = store
        self.kerma = kerma_variable(kerma_mode)
        self.normaliser = normaliser
        self.cache_cases = max(int(cache_cases), 1)
        self.lazy = bool(lazy)
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self.loads = 0  # number of case reads (for tests and benchmarks)

    def _load(self, case_id: str) -> dict:
        ds = self.store.read_case(case_id)
        needed = [DENSITY_VARIABLE, self.kerma, DOSE_VARIABLE]
        missing = [v for v in needed if v not in ds]
        if missing:  # let the store say which step makes it
            self.store.read_case(case_id, variables=needed)
        mask_name = BODY_VARIABLE if BODY_VARIABLE in ds else LABELS_VARIABLE
        body = np.asarray(ds[mask_name].values) > 0
        body_index = np.flatnonzero(body)
        if body_index.size == 0:
            raise InputError(f"case {case_id!r}: no body voxel to centre a patch on")
        entry = {"shape": body.shape, "body_index": body_index}
        if self.lazy:
            entry.update(ds=ds, mask_name=mask_name)
        else:
            entry["inputs"] = self.normaliser.inputs(ds[DENSITY_VARIABLE].values, ds[self.kerma].values)
            entry["target"] = self.normaliser.dose_to_normalised(ds[DOSE_VARIABLE].values)
            entry["mask"] = body.astype(np.float32)
        self.loads += 1
        return entry

    def entry(self, case_id: str) -> dict:
        """The cached record of a case (loads it, evicting the least recently used)."""
        if case_id in self._cache:
            self._cache.move_to_end(case_id)
            return self._cache[case_id]
        entry = self._load(case_id)
        self._cache[case_id] = entry
        while len(self._cache) > self.cache_cases:
            self._cache.popitem(last=False)
        return entry

    def centre(self, case_id: str, u: float) -> tuple[int, int, int]:
        """Body voxel number ``floor(u * n_body)`` of a case, as ``(k, j, i)``; ``0 <= u < 1``."""
        entry = self.entry(case_id)
        index = entry["body_index"][min(int(u * entry["body_index"].size), entry["body_index"].size - 1)]
        return tuple(int(v) for v in np.unravel_index(index, entry["shape"]))

    def patch(self, case_id: str, centre: Sequence[int], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised ``inputs [2,s,s,s]``, ``target [1,s,s,s]`` and ``mask [1,s,s,s]`` (float32)."""
        entry = self.entry(case_id)
        lo, hi = patch_box(centre, size)
        if not self.lazy:
            inputs = _cut(entry["inputs"], lo, hi, NORMALISED_LOW)
            target = _cut(entry["target"], lo, hi, NORMALISED_LOW)
            mask = _cut(entry["mask"], lo, hi, 0.0)
        else:
            ds = entry["ds"]
            nan = np.nan
            density = _cut(ds[DENSITY_VARIABLE], lo, hi, nan)
            kerma = _cut(ds[self.kerma], lo, hi, nan)
            inputs = np.nan_to_num(self.normaliser.inputs(density, kerma), nan=NORMALISED_LOW)
            target = np.nan_to_num(self.normaliser.dose_to_normalised(_cut(ds[DOSE_VARIABLE], lo, hi, nan)),
                                   nan=NORMALISED_LOW)
            mask = (_cut(ds[entry["mask_name"]], lo, hi, 0) > 0).astype(np.float32)
        return inputs.astype(np.float32), target[None].astype(np.float32), mask[None].astype(np.float32)


class PatchDataset(Dataset):
    """The patches of one epoch: a fixed plan of (case, centre) pairs, read on access.

    Parameters
    ----------
    reader : CaseReader
    case_ids : sequence of str
        Cases to draw from.
    n_patches : int
        Patches in the epoch (profile ``train.patches_per_epoch``).
    patch_size : int
        Patch edge in voxels (profile ``train.patch_size``).
    seed : int
        Seed of the draws.
    epoch : int
        Epoch number (a different plan per epoch).
    stream : int
        Independent random stream (train and validation patches differ).

    Items are ``(inputs [2,s,s,s], target [1,s,s,s], mask [1,s,s,s])`` float32 tensors.
    """

    def __init__(
        self,
        reader: CaseReader,
        case_ids: Sequence[str],
        n_patches: int,
        patch_size: int,
        seed: int,
        epoch: int = 0,
        stream: int = _STREAM_TRAIN,
    ):
        if not case_ids:
            raise InputError("patch dataset: no cases")
        self.reader, self.case_ids = reader, list(case_ids)
        self.patch_size = int(patch_size)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(epoch)]))
        n_cases = len(self.case_ids)
        counts = np.full(n_cases, int(n_patches) // n_cases)
        counts[rng.choice(n_cases, int(n_patches) % n_cases, replace=False)] += 1
        order = rng.permutation(n_cases)
        plan = []
        for first in range(0, n_cases, reader.cache_cases):
            window = np.concatenate([np.full(counts[c], c) for c in order[first : first + reader.cache_cases]])
            plan.append(window[rng.permutation(window.size)])
        self.plan_case = np.concatenate(plan).astype(int) if plan else np.zeros(0, int)
        self.plan_u = rng.random(self.plan_case.size)

    def __len__(self) -> int:
        return int(self.plan_case.size)

    def location(self, i: int) -> tuple[str, tuple[int, int, int]]:
        """Case id and centre voxel ``(k, j, i)`` of patch `i`."""
        case_id = self.case_ids[self.plan_case[i]]
        return case_id, self.reader.centre(case_id, float(self.plan_u[i]))

    def __getitem__(self, i: int):
        case_id, centre = self.location(i)
        inputs, target, mask = self.reader.patch(case_id, centre, self.patch_size)
        return torch.from_numpy(inputs), torch.from_numpy(target), torch.from_numpy(mask)


class PatchDataModule(L.LightningDataModule):
    """Training and validation patches of one model (one data mix and kerma mode).

    A new patch plan is drawn every epoch (the trainer reloads the training loader every
    epoch); validation patches are fixed for the whole training.

    Parameters
    ----------
    store : CaseStore
    kerma_mode : str
    normaliser : Normaliser
    train_ids, val_ids : sequence of str
    patch_size, patches_per_epoch, val_patches, batch_size : int
        Profile ``train.*`` values.
    seed : int
        Member seed.
    cache_cases : int
        LRU size (cases).
    lazy : bool
        Read patch regions only.
    calibration_patches : int
        Fixed training patches for re-estimating BatchNorm statistics at checkpoints
        (profile ``train.bn_calibration_patches``; 0 = none).
    """

    def __init__(
        self,
        store,
        kerma_mode: str,
        normaliser: Normaliser,
        train_ids: Sequence[str],
        val_ids: Sequence[str],
        patch_size: int,
        patches_per_epoch: int,
        batch_size: int,
        seed: int,
        val_patches: int | None = None,
        cache_cases: int = 4,
        lazy: bool = False,
        calibration_patches: int = 0,
    ):
        super().__init__()
        self.reader = CaseReader(store, kerma_mode, normaliser, cache_cases, lazy)
        self.train_ids, self.val_ids = list(train_ids), list(val_ids)
        self.patch_size, self.patches_per_epoch = int(patch_size), int(patches_per_epoch)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.val_patches = int(val_patches if val_patches is not None else batch_size)
        self.calibration_patches = int(calibration_patches)

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        data = PatchDataset(self.reader, self.train_ids, self.patches_per_epoch, self.patch_size,
                            self.seed, self._epoch(), _STREAM_TRAIN)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        if not self.val_ids:
            return []
        data = PatchDataset(self.reader, self.val_ids, self.val_patches, self.patch_size, self.seed, 0, _STREAM_VAL)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def calibration_batches(self):
        """Input batches of fixed training patches for re-estimating BatchNorm statistics."""
        if self.calibration_patches <= 0:
            return
        data = PatchDataset(self.reader, self.train_ids, self.calibration_patches, self.patch_size, self.seed, 0,
                            _STREAM_CALIBRATION)
        for inputs, _, _ in DataLoader(data, batch_size=self.batch_size, shuffle=False, num_workers=0):
            yield inputs


def example_patch(store, case_id: str, kerma_mode: str, patch_size: int, seed: int = 0):
    """One training patch of a case, normalised with that case's own range (for display).

    Returns
    -------
    (centre, inputs, target, mask)
        Centre voxel ``(k, j, i)`` and the arrays of :meth:`CaseReader.patch`.
    """
    from .normalise import fit_normaliser

    reader = CaseReader(store, kerma_mode, fit_normaliser(store, [case_id], kerma_mode), cache_cases=1)
    case, centre = PatchDataset(reader, [case_id], 1, patch_size, seed).location(0)
    return (centre, *reader.patch(case, centre, patch_size))

