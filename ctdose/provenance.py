"""Content digests that tie a stored result to what it was computed from.

Every resumable step of the chain keeps what it finds already done. That is only right while
the settings and inputs are those the stored result was made with. So each step stores, next
to its result, a digest of those settings and inputs, and recomputes a result whose digest
differs from the current one:

- a case (its ``labels`` and everything derived from them): case attribute
  ``labels_settings_sha1``; a phantom's sampled parameters, an imported case's reader settings,
  and the voxel size and ROI settings (:mod:`ctdose.anatomy.resume`; the imported source files
  are not digested); a case built with other settings is built again, which drops its later
  variables;
- ``dose_mc`` of a case: ``dose_mc_settings_sha1``; the case's anatomy digest, the scanner, the
  case's protocol (its tube current included), the MC settings and seed, or the EGSnrc file's
  bytes and unit conversion (:func:`ctdose.physics.cohort_mc.case_digests`);
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
from typing import Any

from ._plain import to_plain

__all__ = ["digest", "file_digest", "settings_attr"]

#: Bytes read at a time when a file is digested.
_CHUNK_BYTES = 1 << 20


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
