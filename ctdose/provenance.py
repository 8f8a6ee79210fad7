"""Content digests that tie a stored result to what it was computed from.

Every resumable step of the chain keeps what it finds already done. That is only right while
the settings and inputs are those the stored result was made with. So each step stores, next
to its result, a digest of those settings and inputs, and recomputes a result whose digest
differs from the current one:

- a case (its ``labels`` and everything derived from them): case attribute
  ``labels_settings_sha1``; a phantom's sampled parameters, an imported case's reader settings,
  and the voxel size and ROI settings, and an imported case's source files (their bytes,
  :func:`files_digest`; :mod:`ctdose.anatomy.resume`); a case built from other settings or
  files is built again, which drops its later variables;
- ``dose_mc`` of a case: ``dose_mc_settings_sha1``; the case's anatomy digest, the scanner, the
  case's protocol (its tube current included), the MC settings and seed, or the EGSnrc file's
  bytes (not read again while its size and time are those recorded with the dose,
  :func:`recorded_file_digest`) and unit conversion (:func:`ctdose.physics.cohort_mc.case_digests`);
- ``kerma_<mode>`` of a case: ``kerma_<mode>_settings_sha1``; the anatomy digest, the scanner,
  the protocol and the kerma map settings;
- an ensemble member: its checkpoint's ``settings_sha1``; the training settings, seed and
  cases, and the digests of those cases' targets and inputs;
- a prediction: its attribute ``settings_sha1``; the bytes of the members' checkpoint files and
  the digest of the case's kerma input.

A digest covers settings and data, not the code's version.

Examples
--------
>>> digest({"kvp": 120.0, "mode": "axial"}) == digest({"mode": "axial", "kvp": 120.0})
True
>>> digest({"kvp": 120.0}) == digest({"kvp": 120.0000001})
False
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._plain import to_plain

__all__ = ["digest", "file_digest", "files_digest", "recorded_file_digest", "settings_attr"]

#: Bytes read at a time when a file is digested.
_CHUNK_BYTES = 1 << 20

#: Hex digits kept of the digests that name a file and its size and time in a files record.
_RECORD_KEY_DIGITS = 16


def _fields(value: Any) -> Any:
    """Dataclass instances as dicts of their compared, public fields (recursively); caches
    (fields with ``compare=False`` or a leading underscore) left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _fields(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.compare and not f.name.startswith("_")}
    if isinstance(value, dict):
        return {k: _fields(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_fields(v) for v in value]
    return value


def settings_attr(variable: str) -> str:
    """The attribute that holds the digest of what ``variable`` was computed from
    (``dose_mc_settings_sha1``, ``kerma_cylinder_settings_sha1``, ...)."""
    return f"{variable}_settings_sha1"


def digest(value: Any) -> str:
    """SHA-1 (hex) of a value's canonical JSON form.

    Parameters
    ----------
    value : Any
        Nested mappings, sequences, numbers, strings, numpy arrays and scalars, paths, and
        dataclass instances (their compared public fields). Mapping order does not matter;
        floats enter exactly (Python's shortest round-trip form), arrays element by element.

    Raises
    ------
    ctdose.errors.InputError
        A value with no JSON form.
    """
    text = json.dumps(to_plain(_fields(value), "digest"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-1 (hex) of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def files_digest(
    paths: Sequence[str | os.PathLike], root: str | os.PathLike, known: Mapping[str, Sequence[str]] | None = None
) -> tuple[str, dict[str, list[str]]]:
    """Digest of a set of files: their bytes and their paths relative to ``root``.

    Reading every file of a large CT again on each run is avoided as ``git`` and DVC avoid it:
    a record of the files, kept with the result, lists for each file a key of its size and
    modification time and its bytes' digest, and a file whose size and time are those of the
    record is not read again. A file rewritten with the same bytes gets a new time, is read
    again, and gives the same digest; the run then keeps the result and stores the new record
    (as ``git`` refreshes its index), so the file is read once. (As with ``git``, a file
    rewritten with the same size within the file system's time resolution of being recorded
    would be missed; on file systems with whole-second times, ``touch`` such a file.)

    Parameters
    ----------
    paths : sequence of path
        The files (below ``root``), in any order.
    root : path
        The folder their relative paths are taken from (moving the folder changes nothing).
    known : mapping, optional
        The record returned with an earlier digest of these files.

    Returns
    -------
    digest : str
        SHA-1 over the files' relative paths and bytes (not their times).
    record : dict
        Per file, keyed by a digest of its relative path, ``[size and time key, bytes digest]``.
        Digests only: no file name or time can be read from it (a folder of patient data may
        name files after the patient).
    """
    known = known or {}
    record, contents = {}, {}
    for path in paths:
        rel = Path(path).relative_to(root).as_posix()
        key = digest(rel)[:_RECORD_KEY_DIGITS]
        contents[rel], record[key] = recorded_file_digest(path, known.get(key))
    return digest(contents), record


def recorded_file_digest(path: str | os.PathLike, known: Sequence[str] | None = None) -> tuple[str, list[str]]:
    """:func:`file_digest` of one file, not read again where ``known`` (its record from an
    earlier call) has the file's size and time.

    Returns
    -------
    sha1 : str
        The digest of the file's bytes.
    record : list of str
        ``[size and time key, sha1]``, the key a digest (no time can be read from it).
    """
    st = os.stat(path)
    stamp = digest([st.st_size, st.st_mtime_ns])[:_RECORD_KEY_DIGITS]
    sha1 = known[1] if known is not None and len(known) == 2 and known[0] == stamp else file_digest(path)
    return sha1, [stamp, sha1]
