"""Monte Carlo dose (and network input maps) for every case of a store, through Dask.

For each case without ``dose_mc`` (or without one of the configured ``kerma_<mode>`` maps), or
whose stored one was computed with other settings than the profile's now, one Dask task
simulates the profile's CT protocol over the case ROI
(:func:`ctdose.physics.scanner.protocol_for_case`) and computes the kerma input maps
(:func:`ctdose.physics.kerma.kerma_map`). A case with an EGSnrc result in ``mc.egsnrc_dir``
(``<case_id>.3ddose``) takes its ``dose_mc`` from that file instead
(:mod:`ctdose.physics.egsnrc_results`). Results are written by the calling process as they
arrive, one case at a time, atomically (:meth:`ctdose.store.CaseStore.add_variables`): an
interrupted run keeps every finished case and a re-run resumes with the rest.

Each stored variable keeps the digest of what it was computed from in the case attribute
``<variable>_settings_sha1`` (:func:`case_digests`, :mod:`ctdose.provenance`): the scanner, the
case's protocol and tube current, the MC settings and seed or the EGSnrc file, the kerma map
settings. A re-run computes a variable again where that digest differs (another ``mc.n_photons``,
``scanner.*``, ``tube_current_modulation``, a new or changed ``.3ddose``), and names those cases;
the worker count, the scheduler and the device change no digest. Variables stored without a
digest (by an older ctdose) are kept and named.

Scheduling: ``cfg["mc"]["scheduler"]`` = ``null`` runs an embedded local Dask cluster (no
set-up) with ``cfg["mc"]["n_workers"]`` concurrent cases, each on one torch thread: worker
processes for the expected-track-length, track-length and collision estimators (their
compiled kernels hold Python's GIL, see :mod:`ctdose.physics.kernels`), threads for the
analogue estimator (eager; torch releases the GIL in its kernels); an address
(``"tcp://host:8786"``) sends the tasks to that cluster (the workers need ctdose installed;
inputs travel with the task, results come back to this process).

Stored variables: ``dose_mc`` and ``dose_mc_sigma`` (Gy per mAs of one rotation, float32; the
sigma is the batch-method standard error) and ``kerma_<mode>`` (air kerma, Gy per mAs); case
attributes ``mc_*`` record the engine (``mc_engine``: ctdose or the EGSnrc file), photons,
estimator, seed, device, the tube current
(``mc_tube_current``: constant, or the case's own modulation with
``scanner.tube_current_modulation: ct``, :mod:`ctdose.physics.tube_current`) and the mean
relative uncertainty in the body.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import number_from_text
from .._listing import first_names
from ..errors import ConfigError, InputError
from ..provenance import settings_attr

__all__ = ["VARIABLE_STATES", "case_digests", "cases_to_run", "check_mc_profile", "mc_variables", "run_cohort_mc",
           "simulate_case", "variable_states"]


def _mc_cfg(cfg: Mapping[str, Any]) -> dict:
    """The profile's ``mc`` section with defaults, checked (:func:`ctdose.physics.mc.check_run_settings`)."""
    from .mc import (DEFAULT_CUTOFF_KEV, DEFAULT_ESTIMATOR, WINDOW_ESTIMATORS, _ambient_medium, _as_int,
                     check_run_settings)

    mc = dict(cfg.get("mc", {}) or {})
    mc.setdefault("n_photons", 200000)
    mc.setdefault("n_batches", 10)
    mc.setdefault("scheduler", None)
    mc.setdefault("n_workers", 1)
    mc.setdefault("estimator", DEFAULT_ESTIMATOR)
    mc.setdefault("energy_cutoff_kev", DEFAULT_CUTOFF_KEV)
    mc.setdefault("ambient", "air")
    mc.setdefault("weight_window", False)
    mc.setdefault("egsnrc_dir", None)
    mc.setdefault("egsnrc_particles_per_mas", None)
    where = f"profile {cfg['name']!r}: mc." if cfg.get("name") else "mc."
    if not isinstance(mc["weight_window"], bool):
        raise ConfigError(f"{where}weight_window must be true or false, got {mc['weight_window']!r}")
    try:
        mc["n_photons"], mc["n_batches"], mc["estimator"], mc["energy_cutoff_kev"] = check_run_settings(
            number_from_text(mc["n_photons"]), number_from_text(mc["n_batches"]), mc["estimator"],
            number_from_text(mc["energy_cutoff_kev"]),
            where=where,
        )
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    if mc["weight_window"] and mc["estimator"] not in WINDOW_ESTIMATORS:
        raise ConfigError(f"{where}weight_window needs the estimator {' or '.join(WINDOW_ESTIMATORS)}, got "
                          f"{mc['estimator']!r}")
    n_workers = _as_int(number_from_text(mc["n_workers"]))
    if n_workers is None or n_workers < 1:
        raise ConfigError(f"{where}n_workers must be an integer >= 1, got {mc['n_workers']!r}")
    mc["n_workers"] = n_workers
    if "ctdi_photons" in mc:  # notebook 02's CTDI check
        ctdi_photons = _as_int(number_from_text(mc["ctdi_photons"]))
        if ctdi_photons is None or ctdi_photons < 1:
            raise ConfigError(f"{where}ctdi_photons must be a positive integer, got {mc['ctdi_photons']!r}")
        mc["ctdi_photons"] = ctdi_photons
    try:
        _ambient_medium(mc["ambient"])
    except InputError as exc:
        raise ConfigError(f"{where}ambient: {str(exc).removeprefix('simulate: ambient ')}") from None
    return mc


def check_mc_profile(cfg: Mapping[str, Any], device_available: bool = False) -> None:
    """Check a profile's Monte Carlo settings before any work (``ctdose run``, ``ctdose profile``).

    Parameters
    ----------
    cfg : Profile
        Uses ``mc.*`` (``n_photons``, ``n_batches``, ``estimator``, ``energy_cutoff_kev``,
        ``n_workers``, ``weight_window`` and the estimator it needs, ``ambient``, ``ctdi_photons``,
        ``egsnrc_dir`` and ``egsnrc_particles_per_mas``),
        the kerma inputs (``inputs.kerma_modes``; ``kerma_grid_mm``, ``kerma_ray_step_mm`` and
        ``kerma_density_set`` by :func:`ctdose.physics.kerma.kerma_settings`) and ``device``.
        The protocol keys are checked by :func:`ctdose.physics.scanner.check_protocol_profile`.
    device_available : bool
        Also require the device to be present on this machine (``cuda`` needs a GPU);
        otherwise only its name is checked.

    Raises
    ------
    ConfigError
        A setting out of range; the message names the profile, the key and the value, with
        the rule of :func:`ctdose.physics.mc.check_run_settings` or
        :func:`ctdose.physics.mc.resolve_device`.
    """
    from .egsnrc_results import egsnrc_settings
    from .mc import check_device_name, resolve_device

    _mc_cfg(cfg)
    egsnrc_settings(cfg)
    from .kerma import kerma_settings

    _kerma_modes(cfg)
    kerma_settings(cfg)
    device = cfg.get("device", "auto")
    where = f"profile {cfg['name']!r}: " if cfg.get("name") else ""
    try:
        check_device_name(device, where=where)
        if device_available:
            resolve_device(device)
    except InputError as exc:
        raise ConfigError(str(exc) if str(exc).startswith(where) else f"{where}{exc}") from None


def _kerma_modes(cfg: Mapping[str, Any]) -> list[str]:
    modes = (cfg.get("inputs", {}) or {}).get("kerma_modes", []) or []
    if isinstance(modes, str) or not isinstance(modes, Sequence):
        raise ConfigError(f"{_inputs_where(cfg)}kerma_modes must be a list of modes (cylinder, patient), "
                          f"got {modes!r}")
    for m in modes:
        if m not in ("cylinder", "patient"):
            raise ConfigError(f"{_inputs_where(cfg)}kerma_modes: unknown mode {m!r} (cylinder, patient)")
    return list(modes)


def _inputs_where(cfg: Mapping[str, Any]) -> str:
    return f"profile {cfg['name']!r}: inputs." if cfg.get("name") else "inputs."


def case_seed(base_seed: int, case_id: str) -> int:
    """A per-case seed: the profile seed mixed with a stable hash of the case id."""
    return (int(base_seed) * 1000003 + zlib.crc32(case_id.encode("utf-8"))) % (2**63 - 1)


#: The ``mc`` settings that change a case's own Monte Carlo dose (with the seed, the scanner
#: and the case's protocol); the scheduler, the worker count and the device do not.
_MC_DOSE_KEYS = ("n_photons", "n_batches", "estimator", "energy_cutoff_kev", "ambient", "weight_window")


def case_digests(cfg: Mapping[str, Any], scanner, protocol, case_id: str, egsnrc_path=None,
                 anatomy: str | None = None, egsnrc_sha1: str | None = None) -> dict[str, str]:
    """Per variable a case's MC step computes (``dose_mc``, ``kerma_<mode>``), the digest of
    what it is computed from (:func:`ctdose.provenance.digest`).

    Both cover the case's anatomy (``anatomy``: the digest its labels were built with, case
    attribute ``labels_settings_sha1``, :mod:`ctdose.anatomy.resume`; None for a case written
    without one), the scanner (spectrum, bowtie,
    geometry) and the case's protocol (scan range, mode, tube current: a modulation followed is
    part of it), and the angular modulation's settings where the profile has one
    (:func:`ctdose.physics.scanner.angular_modulation_settings`; none adds nothing, so that the
    digests of earlier runs stay valid). ``dose_mc`` adds the MC settings
    that change the dose (:data:`_MC_DOSE_KEYS`) and the case's seed, or, for a case with an
    EGSnrc result, that file's bytes (their digest ``egsnrc_sha1`` where it is known) and its
    unit conversion; ``kerma_<mode>`` adds the mode and the kerma map settings
    (:func:`ctdose.physics.kerma.kerma_settings`).
    """
    from ..provenance import digest, file_digest
    from .egsnrc_results import EGSNRC_ENGINE, egsnrc_settings
    from .kerma import kerma_settings

    from .scanner import angular_modulation_settings

    mc = _mc_cfg(cfg)
    beam = {"anatomy": anatomy, "scanner": scanner, "protocol": protocol}
    angular = angular_modulation_settings(cfg)
    if angular is not None:
        beam["angular_modulation"] = angular
    if egsnrc_path is not None:
        dose = {"engine": EGSNRC_ENGINE, "file_sha1": egsnrc_sha1 or file_digest(egsnrc_path),
                "particles_per_mas": egsnrc_settings(cfg)[1]}
    else:
        dose = {"engine": "ctdose", "seed": case_seed(int(cfg.get("seed", 0)), case_id),
                **{k: mc[k] for k in _MC_DOSE_KEYS}}
    out = {"dose_mc": digest({**beam, **dose})}
    for mode in _kerma_modes(cfg):
        out[f"kerma_{mode}"] = digest({**beam, "mode": mode, **kerma_settings(cfg)})
    return out


def mc_variables(cfg: Mapping[str, Any]) -> list[str]:
    """The variables the MC step computes for every case: ``dose_mc`` and ``kerma_<mode>`` for
    each of the profile's ``inputs.kerma_modes``."""
    return ["dose_mc"] + [f"kerma_{m}" for m in _kerma_modes(cfg)]


def _plan(cfg: Mapping[str, Any], store, scanner, case_ids: Sequence[str]) -> tuple[dict, dict, dict]:
    """What the MC step has to do for ``case_ids``.

    Returns ``todo`` (case id -> variables to compute: missing, or stored with a digest other
    than the current one), ``inputs`` (case id -> ``spacing``, ``origin``, ``roi``,
    ``tube_current``, ``egsnrc`` (the file, where ``dose_mc`` is read from one),
    ``egsnrc_record``, ``digests``) and ``notes`` (``"stale"``/``"unrecorded"`` -> variable ->
    case ids: stored with other settings, or stored before digests were recorded and kept).
    """
    from ..provenance import recorded_file_digest
    from .egsnrc_results import EGSNRC_FILE_ATTR, egsnrc_file, egsnrc_settings
    from .scanner import case_protocol
    from .tube_current import TubeCurrentProfile

    folder, _ = egsnrc_settings(cfg)
    wanted = mc_variables(cfg)
    todo, inputs, notes = {}, {}, {"stale": {}, "unrecorded": {}}
    for cid in case_ids:
        attrs = store.case_attrs(cid)
        shape = store.read_case(cid, variables=["labels"])["labels"].shape
        spacing = tuple(float(v) for v in attrs.get("spacing_mm", (1.0, 1.0, 1.0)))
        origin = tuple(float(v) for v in attrs.get("origin_mm", (0.0, 0.0, 0.0)))
        roi = _roi_of(attrs, shape, spacing, origin)
        tube_current = TubeCurrentProfile.from_attrs(attrs)
        egsnrc = egsnrc_file(folder, cid)
        protocol, _ = case_protocol(cfg, roi, tube_current)
        # an EGSnrc file unchanged in size and time since its dose was read is not read again
        egsnrc_sha1, egsnrc_record = (recorded_file_digest(egsnrc, attrs.get(EGSNRC_FILE_ATTR)) if egsnrc is not None
                                      else (None, None))
        digests = case_digests(cfg, scanner, protocol, cid, egsnrc, attrs.get(settings_attr("labels")), egsnrc_sha1)
        have = set(store.case_variables(cid))
        redo = []
        for v in wanted:
            stored = attrs.get(settings_attr(v))
            if v not in have:
                redo.append(v)
            elif stored is None:
                notes["unrecorded"].setdefault(v, []).append(cid)
            elif stored != digests[v]:
                redo.append(v)
                notes["stale"].setdefault(v, []).append(cid)
        if redo:
            todo[cid] = redo
        inputs[cid] = dict(spacing=spacing, origin=origin, roi=roi, tube_current=tube_current,
                           egsnrc=egsnrc if "dose_mc" in redo else None, egsnrc_record=egsnrc_record,
                           digests=digests)
    return todo, inputs, notes


def _refresh_egsnrc_records(store, case_ids: Sequence[str], todo: Mapping, inputs: Mapping) -> None:
    """Give a current dose read from an EGSnrc file the record of that file as it stands now.

    A file copied or touched with unchanged bytes (its dose digest, the bytes' SHA-1, still
    matches) was read once by :func:`_plan` to tell; the new record spares the next run that.
    Only the case's metadata is rewritten.
    """
    from .egsnrc_results import EGSNRC_FILE_ATTR

    for cid in case_ids:
        record = inputs[cid]["egsnrc_record"]
        if record is None or "dose_mc" in todo.get(cid, ()):
            continue
        attrs = store.case_attrs(cid)
        current = attrs.get(settings_attr("dose_mc")) == inputs[cid]["digests"]["dose_mc"]
        if current and attrs.get(EGSNRC_FILE_ATTR) != record:
            store.update_case_attrs(cid, {EGSNRC_FILE_ATTR: record})


def cases_to_run(cfg: Mapping[str, Any], store, scanner=None) -> dict[str, list[str]]:
    """Per case id, the variables to compute (``dose_mc`` and/or ``kerma_<mode>``): those
    missing, and those stored with other settings than the profile's now (their digest,
    :func:`case_digests`, differs from the one recorded with them).

    ``scanner`` (the profile's :class:`~ctdose.physics.scanner.CTScanner`) is built from the
    profile when not given.
    """
    from .scanner import scanner_from_profile

    scanner = scanner_from_profile(cfg) if scanner is None else scanner
    return _plan(cfg, store, scanner, store.run_case_ids())[0]


#: :func:`variable_states`: a variable missing, stored with the digest of now, stored with
#: another digest (computed again), or stored without one (by an older ctdose; kept).
VARIABLE_STATES = ("new", "current", "other", "unrecorded")


def variable_states(cfg: Mapping[str, Any], store, case_ids: Sequence[str], scanner=None) -> pd.DataFrame:
    """How each variable the MC step computes stands for ``case_ids`` (cases in the store);
    nothing is computed or written.

    Returns
    -------
    pandas.DataFrame
        ``case_id, variable, state``, the state one of :data:`VARIABLE_STATES`; the step
        computes the ``new`` and ``other`` ones (:func:`cases_to_run`).
    """
    from .scanner import scanner_from_profile

    scanner = scanner_from_profile(cfg) if scanner is None else scanner
    wanted = mc_variables(cfg)
    todo, _, notes = _plan(cfg, store, scanner, case_ids)
    rows = []
    for cid in case_ids:
        for v in wanted:
            if cid in notes["stale"].get(v, ()):
                state = "other"
            elif v in todo.get(cid, ()):
                state = "new"
            else:
                state = "unrecorded" if cid in notes["unrecorded"].get(v, ()) else "current"
            rows.append((cid, v, state))
    return pd.DataFrame(rows, columns=["case_id", "variable", "state"])


def simulate_case(
    labels: np.ndarray,
    spacing_mm: Sequence[float],
    origin_mm: Sequence[float],
    roi_z_mm: Sequence[float],
    cfg: Mapping[str, Any],
    case_id: str,
    missing: Sequence[str],
    device: str = "cpu",
    scanner=None,
    tube_current=None,
    egsnrc_path=None,
) -> dict:
    """Compute the missing variables of one case (the Dask task; pure function of its inputs).

    ``scanner`` (a :class:`~ctdose.physics.scanner.CTScanner`) may be passed to avoid building
    the profile's spectrum again for every case. ``tube_current`` (a
    :class:`~ctdose.physics.tube_current.TubeCurrentProfile`, the case's CT record) is
    followed by the dose and the kerma maps when the profile sets
    ``scanner.tube_current_modulation: ct`` (:func:`ctdose.physics.scanner.case_protocol`).
    ``egsnrc_path`` (a ``.3ddose`` on the case's grid): ``dose_mc`` comes from that EGSnrc result
    instead of the compendium's Monte Carlo (:mod:`ctdose.physics.egsnrc_results`). With
    ``scanner.angular_modulation: model`` the current's variation over the gantry angle is
    modelled from the case's labels (:func:`ctdose.physics.scanner.case_angular_modulation`) and
    followed by the Monte Carlo dose and the kerma maps alike.

    Returns
    -------
    dict with ``arrays`` (name -> float32 [z, y, x]), ``attrs`` and ``wall_s``.
    """
    from .kerma import kerma_map, kerma_settings
    from .mc import simulate
    from .scanner import angular_modulation_settings, case_angular_modulation, case_protocol, scanner_from_profile
    from .sources import CTSource

    t0 = time.perf_counter()
    mc = _mc_cfg(cfg)
    if scanner is None:
        scanner = scanner_from_profile(cfg)
    protocol, tube_note = case_protocol(cfg, roi_z_mm, tube_current)
    arrays: dict[str, np.ndarray] = {}
    attrs: dict[str, Any] = {}
    geometry = angular = None
    if angular_modulation_settings(cfg) is not None:  # modelled from the case's own attenuation
        geometry = _case_geometry(case_id, labels, spacing_mm, origin_mm)
        angular = case_angular_modulation(cfg, geometry)
        tube_note += f"; angular modulation: {angular.source}"
    positions = protocol.source_positions(scanner) if angular is None else angular.apply(
        protocol.source_positions(scanner))
    if "dose_mc" in missing and egsnrc_path is not None:
        arrays["dose_mc"], arrays["dose_mc_sigma"], attrs = _egsnrc_dose(
            egsnrc_path, labels, spacing_mm, origin_mm, cfg, protocol, scanner
        )
        attrs["mc_tube_current"] = tube_note
    elif "dose_mc" in missing:
        if geometry is None:
            geometry = _case_geometry(case_id, labels, spacing_mm, origin_mm)
        seed = case_seed(int(cfg.get("seed", 0)), case_id)
        res = simulate(
            geometry,
            CTSource(scanner, protocol, angular_modulation=angular),
            int(float(mc["n_photons"])),
            n_batches=int(mc["n_batches"]),
            seed=seed,
            device=device,
            progress=False,
            energy_cutoff_kev=float(mc["energy_cutoff_kev"]),
            estimator=str(mc["estimator"]),
            ambient=mc["ambient"],
            weight_window=mc["weight_window"],
        )
        dose = res.dose_gy_per_mas
        body = _body_mask(np.asarray(labels))
        rel_body = float(np.mean(res.rel_sigma[body])) if body.any() else float("nan")
        arrays["dose_mc"] = dose.astype(np.float32)
        arrays["dose_mc_sigma"] = (dose * res.rel_sigma).astype(np.float32)
        attrs.update(
            mc_engine="ctdose Monte Carlo",
            mc_n_photons=res.n_photons,
            mc_n_batches=res.n_batches,
            mc_estimator=res.estimator,
            mc_weight_window=int(mc["weight_window"]),
            mc_ambient=str(mc["ambient"] or "vacuum"),
            mc_rotation=f"{protocol.rotation}, {int(protocol.projections_per_rotation)} positions per rotation",
            mc_tube_current=tube_note,
            mc_seed=seed,
            mc_device=res.device,
            mc_wall_s=round(res.wall_s, 3),
            mc_mean_rel_sigma_body=rel_body,
            mc_unit="Gy per mAs of one rotation (tube current x rotation time)",
        )
    for name in missing:
        if name.startswith("kerma_"):
            mode = name[len("kerma_"):]
            arrays[name] = np.asarray(
                kerma_map(
                    mode,
                    np.shape(labels),
                    spacing_mm,
                    origin_mm,
                    scanner,
                    protocol,
                    labels=np.asarray(labels),
                    device=device,
                    **kerma_settings(cfg),
                    positions=positions,
                    progress=False,
                ),
                dtype=np.float32,
            )
    return {"case_id": case_id, "arrays": arrays, "attrs": attrs, "wall_s": time.perf_counter() - t0}


def _case_geometry(case_id: str, labels, spacing_mm, origin_mm):
    """The voxel geometry of a case's labels (:func:`ctdose.physics.mc.geometry_from_case`)."""
    import xarray as xr

    from .mc import geometry_from_case

    ds = xr.Dataset({"labels": (("z", "y", "x"), np.asarray(labels))})
    ds.attrs.update(case_id=case_id, spacing_mm=list(spacing_mm), origin_mm=list(origin_mm))
    return geometry_from_case(ds)


def _egsnrc_dose(path, labels, spacing_mm, origin_mm, cfg, protocol, scanner) -> tuple:
    """``dose_mc``, ``dose_mc_sigma`` and the attributes of a case from its EGSnrc ``.3ddose``."""
    from .egsnrc_results import EGSNRC_ENGINE, case_dose_from_3ddose, egsnrc_settings, gy_per_mas_per_unit
    from .sources import CTSource

    _, particles = egsnrc_settings(cfg)
    source = CTSource(scanner, protocol)  # the scan's load as the compendium's own source counts it
    total_mas, mas_per_rotation = float(source.mas.sum()), source.mas_per_rotation
    scale = gy_per_mas_per_unit(particles, total_mas, mas_per_rotation)
    dose, sigma = case_dose_from_3ddose(path, np.shape(labels), spacing_mm, origin_mm, scale)
    body = _body_mask(np.asarray(labels))
    rel = np.divide(sigma, dose, out=np.zeros_like(dose), where=dose > 0)
    unit = (f"dose per particle x {particles:g} particles per mAs x {total_mas / mas_per_rotation:.4g} rotations"
            if particles is not None else "read as Gy per mAs of one rotation")
    attrs = dict(
        mc_engine=f"{EGSNRC_ENGINE} ({Path(path).name}; {unit})",
        mc_mean_rel_sigma_body=float(np.mean(rel[body])) if body.any() else float("nan"),
        mc_unit="Gy per mAs of one rotation (tube current x rotation time)",
    )
    return dose, sigma, attrs


def _print_notes(notes: Mapping[str, Mapping[str, list[str]]]) -> None:
    """Say which stored results are computed again (other settings) or kept unchecked."""
    for variable, ids in notes["stale"].items():
        print(f"MC: {variable} of {_count_cases(ids)} was computed with other settings (scanner, protocol, MC or "
              f"kerma settings, EGSnrc file); computing it again")
    for variable, ids in notes["unrecorded"].items():
        print(f"MC: {variable} of {_count_cases(ids)} was stored without a record of its settings; kept as it is "
              f"(use a new run directory to compute it with the profile's settings)")


def _count_cases(ids: Sequence[str]) -> str:
    """``"2 cases (a, b)"``, ``"5 cases (a, b, c, ...)"``."""
    return f"{len(ids)} case{'s' if len(ids) != 1 else ''} ({first_names(ids)})"


def _body_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels of the patient (``in_body`` of ``ctdose/data/organs.csv``; labels > 0 without it)."""
    from .._data import read_table

    table = read_table("organs.csv")
    if "in_body" not in table:
        return labels > 0
    ids = table.loc[table["in_body"].astype(int) == 1, "id"].astype(int).to_numpy()
    return np.isin(labels, ids)


def _roi_of(attrs: Mapping[str, Any], shape, spacing, origin) -> tuple[float, float]:
    roi = attrs.get("roi_z_mm")
    if roi is not None and len(roi) == 2:
        return float(roi[0]), float(roi[1])
    z0, dz = float(origin[0]), float(spacing[0])
    return z0 - dz / 2, z0 + (shape[0] - 0.5) * dz


def _client(mc: dict, n_workers: int, device: str):
    import logging

    import dask
    from distributed import Client, LocalCluster

    from .kernels import compile_enabled
    from .transport import FUSED_ESTIMATORS

    if mc.get("scheduler"):
        return Client(str(mc["scheduler"])), None
    # compiled kernels hold the GIL: concurrent cases need processes (each compiles once)
    processes = n_workers > 1 and device == "cpu" and mc["estimator"] in FUSED_ESTIMATORS and compile_enabled()
    # Dask starts worker processes with MALLOC_TRIM_THRESHOLD_=65536: glibc then hands freed
    # memory back to the system at once, and every photon step of large tensors page-faults
    # it in again (the transport ran 2-3 times slower); None leaves glibc's own setting
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(
            n_workers=n_workers if processes else 1,
            threads_per_worker=1 if processes else n_workers,
            processes=processes,
            dashboard_address=":0",  # a free port; no clash with another cluster
            silence_logs=logging.ERROR,
        )
    return Client(cluster), cluster


def run_cohort_mc(cfg: Mapping[str, Any], store, progress: bool = True, case_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Simulate every case of the run (:meth:`ctdose.store.CaseStore.run_case_ids`) that lacks
    ``dose_mc`` or a configured kerma map, or whose stored one was made with other settings.

    Parameters
    ----------
    cfg : Profile
        Uses ``seed``, ``device`` (auto | cpu | cuda), ``mc.*``, ``scanner.*`` and
        ``inputs.kerma_modes``.
    store : ctdose.store.CaseStore
    progress : bool
        Show a progress bar (only when stderr is a terminal).
    case_ids : sequence of str, optional
        These cases of the store instead.

    Returns
    -------
    DataFrame
        One row per case simulated in this call: case_id, variables written, wall_s,
        mean relative uncertainty in the body.
    """
    import torch

    from .mc import resolve_device

    mc = _mc_cfg(cfg)
    all_ids = store.run_case_ids(say="MC") if case_ids is None else store.case_ids()
    if case_ids is not None:
        unknown = sorted(set(case_ids) - set(all_ids))
        if unknown:
            raise InputError(f"run_cohort_mc: unknown case ids {unknown}")
    ids = all_ids if case_ids is None else [c for c in all_ids if c in set(case_ids)]
    from .scanner import scanner_from_profile

    scanner = scanner_from_profile(cfg)
    todo, inputs, notes = _plan(cfg, store, scanner, ids)
    _print_notes(notes)
    _refresh_egsnrc_records(store, ids, todo, inputs)
    n_total = len(ids)
    done = n_total - len(todo)
    if not todo:
        print(f"MC: all {n_total} cases already have dose_mc and the kerma inputs; nothing to do")
        return pd.DataFrame(columns=["case_id", "variables", "wall_s", "mean_rel_sigma_body"])
    if done:
        print(f"MC: resuming: {done} of {n_total} cases already done, {len(todo)} to simulate")
    else:
        print(f"MC: {len(todo)} cases to simulate")
    device = str(resolve_device(cfg.get("device", "auto")))
    n_workers = int(mc["n_workers"])
    if device.startswith("cuda"):
        n_workers = 1
    old_threads = torch.get_num_threads()
    local = not mc.get("scheduler")
    if local:
        # one torch thread per concurrent case: independent cases scale better than intra-op
        # threads on few cores (and do not oversubscribe a shared machine)
        torch.set_num_threads(1)
    n_egsnrc = sum(inputs[cid]["egsnrc"] is not None for cid in todo)
    from .egsnrc_results import EGSNRC_FILE_ATTR, egsnrc_settings

    if n_egsnrc:
        print(f"MC: {n_egsnrc} of {len(todo)} cases take their dose from EGSnrc .3ddose files in "
              f"{egsnrc_settings(cfg)[0]}")
    client, cluster = _client(mc, n_workers, device)
    rows = []
    bar = None
    try:
        from distributed import as_completed

        futures = []
        for cid, missing in todo.items():
            labels = np.asarray(store.read_case(cid, variables=["labels"])["labels"].values)
            case = inputs[cid]
            futures.append(
                client.submit(
                    simulate_case, labels, case["spacing"], case["origin"], case["roi"], dict(cfg), cid, missing,
                    device, scanner, case["tube_current"], case["egsnrc"], key=f"mc-{cid}", pure=False,
                )
            )
        if progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            bar = tqdm(total=len(futures), desc="MC cases", unit="case")
        for fut in as_completed(futures):
            out = fut.result()
            cid = out["case_id"]
            digests = {settings_attr(v): inputs[cid]["digests"][v] for v in out["arrays"] if v in inputs[cid]["digests"]}
            if inputs[cid]["egsnrc"] is not None:  # the dose read from this file
                digests[EGSNRC_FILE_ATTR] = inputs[cid]["egsnrc_record"]
            # a dose computed again replaces every attribute of the one before (engine, photons, ...)
            stale = [k for k in store.case_attrs(cid) if k.startswith("mc_")] if "dose_mc" in out["arrays"] else []
            store.add_variables(cid, out["arrays"], attrs={**out["attrs"], **digests}, drop_attrs=stale)
            rows.append(
                dict(
                    case_id=out["case_id"],
                    variables=",".join(sorted(out["arrays"])),
                    wall_s=round(out["wall_s"], 2),
                    mean_rel_sigma_body=out["attrs"].get("mc_mean_rel_sigma_body", np.nan),
                )
            )
            if bar is not None:
                bar.update(1)
            else:
                print(f"MC: {out['case_id']} done in {out['wall_s']:.1f} s ({len(rows)}/{len(futures)})")
    finally:
        if bar is not None:
            bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
        if local:
            torch.set_num_threads(old_threads)
    return pd.DataFrame(rows).sort_values("case_id").reset_index(drop=True)
