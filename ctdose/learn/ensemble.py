"""Deep ensembles over kerma modes and real/synthetic data mixes (paper 2.3.1-2.3.2).

:func:`train_all` trains, for every kerma input mode (profile ``inputs.kerma_modes``) and
every data mix (``train.mixes_percent_real``), ``train.members`` networks with different
seeds (the deep ensemble of eqs. 3-6). Member ``k`` uses the seed
``SeedSequence([cfg.seed, k])`` in every mix and mode, as the paper trains "each network
five times with five different seeds". The seed fixes the initial weights and the patch
draws; on CPU the same seed gives bit-identical weights at the same number of torch threads
(reductions in the convolution backward pass round differently with another thread count).

Written under ``<run_dir>/models/``::

    registry.csv                       one row per member (see REGISTRY_COLUMNS)
    <model_id>/member<k>.pt            best checkpoint (ctdose.learn.checkpoint)
    <model_id>/member<k>_curves.csv    epoch, train_loss, val_loss, val_organ_dev

with ``model_id = f"{kerma_mode}_mix{percent_real:03d}"``, and the splits table
``<run_dir>/tables/splits.csv``. Training is resumable: a member whose checkpoint exists
and was trained with the same settings, seed and cases, from the same MC doses and kerma
inputs (the digests those cases record, :mod:`ctdose.provenance`), is reused (a note is
printed). The registry lists the members of each model's latest training only.

On several GPUs Lightning trains data-parallel (``ddp``; ``ddp_notebook`` inside a
notebook kernel); rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .._atomic import atomic_write_csv
from ..errors import InputError
from ..paths import resolve_path
from ..provenance import digest, settings_attr
from .checkpoint import load_checkpoint, save_checkpoint
from .inference import resolve_device, show_progress
from .loss import MC_UNCERTAINTY_FRACTION
from .module import DoseModule
from .normalise import fit_normaliser, kerma_variable
from .patches import PatchDataModule
from .splits import cases_of, mix_name, write_splits
from .unet import UNet3d
from .validation import OrganDoseEvaluator, body_dose_moments, constant_dose_baseline, default_dose_groups

__all__ = [
    "ENSEMBLE_KEYS", "REGISTRY_COLUMNS", "collect_curves", "member_files", "member_seed", "member_state", "model_id",
    "profile_models", "read_curves", "summarise", "train_all", "train_member", "train_settings_sha1",
]

REGISTRY_COLUMNS = [
    "model_id", "kerma_mode", "percent_real", "real_source", "member", "seed", "checkpoint",
    "best_epoch", "val_organ_dev", "baseline_organ_dev", "n_train", "n_val",
]
_LIGHTNING_NOISE = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*GPU available but not used.*",
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
)


def model_id(kerma_mode: str, percent_real: int) -> str:
    """``("cylinder", 10) -> "cylinder_mix010"``."""
    return f"{kerma_mode}_{mix_name(percent_real)}"


def profile_models(cfg) -> list[tuple[str, str, int]]:
    """The models a profile trains and evaluates: ``(model_id, kerma_mode, percent_real)`` for
    each of ``inputs.kerma_modes`` and each of ``train.mixes_percent_real``, in that order."""
    return [(model_id(m, int(p)), m, int(p)) for m in cfg["inputs"]["kerma_modes"]
            for p in cfg["train"]["mixes_percent_real"]]


def member_seed(base_seed: int, member: int) -> int:
    """Seed of ensemble member `member` derived from the run seed (same in every mix)."""
    return int(np.random.SeedSequence([int(base_seed), int(member)]).generate_state(1)[0])


def _grid_spacing(store, case_ids: Iterable[str]) -> list[float]:
    spacings = {tuple(float(s) for s in store.case_attrs(c)["spacing_mm"]) for c in case_ids}
    if len(spacings) != 1:
        raise InputError(f"training cases have different voxel spacings {sorted(spacings)}; resample them to one grid")
    return list(spacings.pop())


@contextlib.contextmanager
def _quiet_lightning():
    """Silence Lightning's start-up banners and CPU-only hints; restore determinism settings."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for pattern in _LIGHTNING_NOISE:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)


def _trainer_kwargs(device: torch.device, epochs: int, progress: bool) -> dict:
    if device.type == "cuda":
        n_gpu = torch.cuda.device_count()
        from lightning.fabric.utilities.imports import _IS_INTERACTIVE

        strategy = ("ddp_notebook" if _IS_INTERACTIVE else "ddp") if n_gpu > 1 else "auto"
        hw = {"accelerator": "gpu", "devices": n_gpu, "strategy": strategy, "deterministic": "warn"}
    else:
        hw = {"accelerator": "cpu", "devices": 1, "deterministic": True}
    return dict(
        max_epochs=int(epochs), logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=progress, num_sanity_val_steps=0, reload_dataloaders_every_n_epochs=1,
        log_every_n_steps=1, **hw,
    )


#: Training settings that say how many models and members a run trains, not how one member is
#: trained: they are left out of a member's digest, so that adding a mix or members trains the
#: new ones only.
ENSEMBLE_KEYS = ("mixes_percent_real", "members")


def train_settings_sha1(cfg, store, kerma_mode: str, percent_real, train_ids, val_ids,
                        legacy: bool = False) -> str:
    """Digest of what a member is trained from: the training settings (but
    :data:`ENSEMBLE_KEYS`), seed, mode, mix and cases, and the digests recorded with those
    cases' MC dose and kerma input (:mod:`ctdose.provenance`), so that a dose or input computed
    again trains the member again.

    With ``legacy`` the digest an earlier ctdose recorded (every training setting): a member
    recorded with it was trained with the settings of now, and is reused.
    """
    variables = ("dose_mc", kerma_variable(kerma_mode))
    data = {cid: [store.case_attrs(cid).get(settings_attr(v)) for v in variables]
            for cid in (*train_ids, *val_ids)}
    train = cfg["train"] if legacy else {k: v for k, v in cfg["train"].items() if k not in ENSEMBLE_KEYS}
    return digest({"train": train, "seed": cfg["seed"], "kerma_mode": kerma_mode,
                   "percent_real": percent_real, "train_ids": list(train_ids), "val_ids": list(val_ids),
                   "data": data})


def member_files(run_dir: str | Path, model: str, member: int) -> tuple[Path, Path]:
    """A member's checkpoint and training-curve files (``models/<model>/member<k>.pt``,
    ``member<k>_curves.csv``)."""
    folder = resolve_path(run_dir) / "models" / model
    return folder / f"member{member}.pt", folder / f"member{member}_curves.csv"


def member_state(ckpt_path: Path, curves_path: Path, kerma_mode: str, settings_sha1: str,
                 legacy_sha1: str | None = None) -> tuple[str, dict]:
    """Whether a member is trained with the settings digest of now (or ``legacy_sha1``, the
    digest an earlier ctdose recorded for the same settings, :func:`train_settings_sha1`).

    Returns
    -------
    state : str
        ``"new"`` (no checkpoint and curves), ``"current"`` (its checkpoint records
        ``settings_sha1``: reused) or ``"other"`` (trained from other settings or data, or an
        unreadable checkpoint: trained again).
    meta : dict
        The checkpoint's metadata where it is ``"current"``, else empty.
    """
    if not (ckpt_path.is_file() and curves_path.is_file()):
        return "new", {}
    try:
        meta = load_checkpoint(ckpt_path, kerma_mode=kerma_mode).meta
    except InputError:
        meta = {}
    current = meta.get("settings_sha1") in {settings_sha1, legacy_sha1} - {None}
    return ("current", meta) if current else ("other", {})


def read_curves(run_dir: str | Path, model: str, member: int) -> pd.DataFrame:
    """Training curves of one member (``member<k>_curves.csv``)."""
    return pd.read_csv(member_files(run_dir, model, member)[1])


def train_member(
    cfg,
    store,
    kerma_mode: str,
    percent_real: int,
    member: int,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    groups: Mapping[str, Iterable[int]],
    real_source: str,
    progress: bool = False,
    normaliser=None,
    range_cache: dict | None = None,
) -> dict:
    """Train one ensemble member and write its best checkpoint and curves.

    Returns the member's registry row (without ``baseline_organ_dev``).
    """
    tcfg = cfg["train"]
    mid = model_id(kerma_mode, percent_real)
    ckpt_path, curves_path = member_files(store.run_dir, mid, member)
    seed = member_seed(cfg["seed"], member)
    settings = train_settings_sha1(cfg, store, kerma_mode, percent_real, train_ids, val_ids)
    legacy = train_settings_sha1(cfg, store, kerma_mode, percent_real, train_ids, val_ids, legacy=True)
    row = {"model_id": mid, "kerma_mode": kerma_mode, "percent_real": percent_real, "real_source": real_source,
           "member": member, "seed": seed, "checkpoint": str(ckpt_path.relative_to(store.run_dir)),
           "n_train": len(train_ids), "n_val": len(val_ids)}

    state, old = member_state(ckpt_path, curves_path, kerma_mode, settings, legacy)
    if state == "current":
        print(f"note: {mid} member {member} already trained ({ckpt_path}); reusing it")
        return {**row, "best_epoch": old["best_epoch"], "val_organ_dev": old["val_organ_dev"]}
    if state == "other":
        print(f"note: {ckpt_path} was trained with other settings; training it again")

    spacing = _grid_spacing(store, list(train_ids) + list(val_ids))
    if normaliser is None:
        normaliser = fit_normaliser(store, train_ids, kerma_mode, range_cache)
    floor = float(tcfg.get("floor_fraction", MC_UNCERTAINTY_FRACTION))
    device = resolve_device(cfg.get("device", "auto"))
    window = int(tcfg.get("infer_window") or tcfg["patch_size"])
    evaluator = None
    if val_ids:
        evaluator = OrganDoseEvaluator(store, val_ids, kerma_mode, normaliser, groups, window,
                                       float(tcfg.get("infer_overlap", 0.5)), int(tcfg.get("infer_batch_size", 4)),
                                       floor, max_cases=tcfg.get("val_organ_cases"))

    def write_results(module: DoseModule) -> None:
        net = UNet3d(2, 2, module.net.width, module.net.depth)
        net.load_state_dict(module.best_state)
        best = module.best_metric if math.isfinite(module.best_metric) else float("nan")
        save_checkpoint(
            ckpt_path, net, normaliser, kerma_mode=kerma_mode, percent_real=percent_real, spacing_mm=spacing,
            real_source=real_source, member=member, seed=seed, profile=cfg.get("name"),
            patch_size=int(tcfg["patch_size"]), infer_window=window, floor_fraction=floor,
            best_epoch=module.best_epoch,
            val_organ_dev=best, n_train=len(train_ids), n_val=len(val_ids), settings_sha1=settings,
            train_cases=list(train_ids), val_cases=list(val_ids),
        )
        atomic_write_csv(pd.DataFrame(module.curves, columns=["epoch", "train_loss", "val_loss", "val_organ_dev"]),
                    curves_path)

    initial_dose = None
    if tcfg.get("start_at_mean_dose", False):
        mean_gy, var_gy2 = body_dose_moments(store, train_ids)
        initial_dose = (float(normaliser.dose.forward(mean_gy)), float(var_gy2 / normaliser.dose.scale**2))
    with _quiet_lightning():
        L.seed_everything(seed, workers=True, verbose=False)
        module = DoseModule(int(tcfg["width"]), int(tcfg["depth"]), float(tcfg["learning_rate"]),
                            int(tcfg["checkpoint_every"]), floor, evaluator, on_fit_end=write_results,
                            lr_schedule=str(tcfg.get("lr_schedule", "constant")), initial_dose=initial_dose)
        data = PatchDataModule(
            store, kerma_mode, normaliser, train_ids, val_ids, int(tcfg["patch_size"]),
            int(tcfg["patches_per_epoch"]), int(tcfg["batch_size"]), seed,
            val_patches=int(tcfg.get("val_patches", tcfg["batch_size"])),
            cache_cases=int(tcfg.get("cache_cases", 4)), lazy=bool(tcfg.get("lazy_patches", False)),
            calibration_patches=int(tcfg.get("bn_calibration_patches", 0)),
        )
        trainer = L.Trainer(**_trainer_kwargs(device, int(tcfg["epochs"]), progress),
                            limit_val_batches=1.0 if val_ids else 0)
        trainer.fit(module, datamodule=data)
    meta = load_checkpoint(ckpt_path, kerma_mode=kerma_mode).meta
    return {**row, "best_epoch": meta["best_epoch"], "val_organ_dev": meta["val_organ_dev"]}


def train_all(
    cfg,
    store,
    progress: bool | None = None,
    groups: Mapping[str, Iterable[int]] | None = None,
    kerma_modes: Sequence[str] | None = None,
    mixes: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Train every kerma mode x data mix x member of the profile; resumable.

    Parameters
    ----------
    cfg : Profile
        Uses ``seed``, ``device``, ``cohort.n_test``, ``inputs.kerma_modes`` and ``train.*``.
    store : CaseStore
        Cases with ``density_e``, ``kerma_<mode>``, ``dose_mc``, ``labels`` (and ``body_mask``).
    progress : bool, optional
        Progress bars; default only on an interactive terminal.
    groups : mapping, optional
        Organ dose groups ``{name: [label ids]}``; default ``ctdose.anatomy.organs.dose_groups()``.
    kerma_modes, mixes : sequence, optional
        Subsets of the profile's modes and mixes.

    Returns
    -------
    pandas.DataFrame
        The registry (also written to ``<run_dir>/models/registry.csv``).
    """
    show = show_progress(progress)
    groups = default_dose_groups() if groups is None else groups
    splits = write_splits(store, cfg)
    source = str(splits["real_source"].iloc[0])
    modes = list(kerma_modes or cfg["inputs"]["kerma_modes"])
    percents = list(mixes if mixes is not None else cfg["train"]["mixes_percent_real"])
    members = int(cfg["train"]["members"])
    registry_path = store.run_dir / "models" / "registry.csv"
    jobs = [(m, p, k) for m in modes for p in percents for k in range(members)]
    rows, baselines, range_cache = [], {}, {}
    for mode, percent, member in tqdm(jobs, desc="ensembles", disable=not show):
        train_ids, val_ids = cases_of(splits, percent, "train"), cases_of(splits, percent, "val")
        if percent not in baselines:
            baselines[percent] = constant_dose_baseline(store, train_ids, val_ids, groups)[1] if val_ids else math.nan
        row = train_member(cfg, store, mode, percent, member, train_ids, val_ids, groups, source,
                           progress=show, range_cache=range_cache)
        rows.append({**row, "baseline_organ_dev": baselines[percent]})
        _write_registry(registry_path, rows)
    return pd.DataFrame(rows, columns=REGISTRY_COLUMNS)


def _write_registry(path: Path, rows: list[dict]) -> None:
    """Merge `rows` into the registry file: the rows of a model replace all its earlier rows
    (a model trained again with fewer members keeps no member of the earlier ensemble); other
    models' rows stay."""
    new = pd.DataFrame(rows, columns=REGISTRY_COLUMNS)
    if path.is_file():
        old = pd.read_csv(path)
        old = old[~old["model_id"].isin(set(new["model_id"]))]
        new = pd.concat([old, new], ignore_index=True) if len(old) else new
    atomic_write_csv(new.sort_values(["model_id", "member"]).reset_index(drop=True), path)


def collect_curves(run_dir: str | Path, registry: pd.DataFrame | None = None) -> pd.DataFrame:
    """All members' training curves in one long table (``model_id``, ``member`` added)."""
    run_dir = resolve_path(run_dir)
    if registry is None:
        registry = pd.read_csv(run_dir / "models" / "registry.csv")
    frames = []
    for row in registry.itertuples():
        curves = read_curves(run_dir, row.model_id, int(row.member))
        frames.append(curves.assign(model_id=row.model_id, member=int(row.member)))
    return pd.concat(frames, ignore_index=True)


def summarise(registry: pd.DataFrame) -> pd.DataFrame:
    """Per model: members, mean and worst validation organ-dose deviation, and the baseline's."""
    grouped = registry.groupby("model_id", sort=True)
    return pd.DataFrame({
        "kerma_mode": grouped["kerma_mode"].first(),
        "percent_real": grouped["percent_real"].first(),
        "members": grouped["member"].count(),
        "val_organ_dev_mean": grouped["val_organ_dev"].mean(),
        "val_organ_dev_worst": grouped["val_organ_dev"].max(),
        "baseline_organ_dev": grouped["baseline_organ_dev"].first(),
        "n_train": grouped["n_train"].first(),
        "n_val": grouped["n_val"].first(),
    })
