"""Tests of ctdose.provenance: digests that change exactly when what they cover changes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.provenance import digest, file_digest


def test_digest_ignores_mapping_order_and_sees_every_value():
    base = {"kvp": 120.0, "mode": "axial", "positions": np.array([0.0, 40.0]), "n": 3}
    assert digest(base) == digest(dict(reversed(list(base.items()))))
    assert digest(base) == digest({**base, "positions": [0.0, 40.0]})  # an array is its elements
    for changed in ({"kvp": 120.00000000000001}, {"mode": "helical"}, {"positions": np.array([0.0, 40.5])},
                    {"n": 4}, {"extra": None}):
        assert digest({**base, **changed}) != digest(base), changed
    # nesting and sequence order matter
    assert digest({"a": [1, 2]}) != digest({"a": [2, 1]})


def test_digest_is_sha1_of_the_canonical_json():
    """An independent computation: sorted keys, no spaces, Python's float repr."""
    expected = hashlib.sha1(b'{"a":[1,0.1],"b":"x"}').hexdigest()
    assert digest({"b": "x", "a": (1, np.float64(0.1))}) == expected


def test_dataclass_caches_do_not_enter_the_digest():
    from ctdose.physics.spectrum import Spectrum

    a = Spectrum(np.array([30.0, 60.0]), np.array([1.0, 2.0]), "test")
    b = Spectrum(np.array([30.0, 60.0]), np.array([1.0, 2.0]), "test")
    b._cache["anything"] = np.arange(5)  # a filled cache is not a setting
    assert digest(a) == digest(b)
    assert digest(a) != digest(Spectrum(np.array([30.0, 60.0]), np.array([1.0, 2.5]), "test"))


def test_a_value_without_json_form_is_refused():
    with pytest.raises(InputError, match="digest value"):
        digest({"f": object()})


def test_file_digest_is_the_sha1_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 9000  # several read blocks
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha1(data).hexdigest()


def test_files_digest_covers_bytes_and_relative_paths_and_reads_only_changed_files(tmp_path):
    import os
    import shutil

    from ctdose.provenance import files_digest

    case = tmp_path / "patient_jane_doe"
    (case / "dicom").mkdir(parents=True)
    (case / "seg.nii.gz").write_bytes(b"labels v1")
    (case / "dicom" / "IM0001").write_bytes(b"slice one")
    files = [case / "seg.nii.gz", case / "dicom" / "IM0001"]
    value, record = files_digest(files, case)
    # an independent computation: the digest of {relative path: sha1 of the bytes}
    assert value == digest({"seg.nii.gz": hashlib.sha1(b"labels v1").hexdigest(),
                            "dicom/IM0001": hashlib.sha1(b"slice one").hexdigest()})
    assert files_digest(files[::-1], case)[0] == value  # order of the list does not matter
    assert "jane" not in repr(record) and "IM0001" not in repr(record) and "seg" not in repr(record)
    moved = tmp_path / "elsewhere"
    shutil.copytree(case, moved)
    assert files_digest([moved / "seg.nii.gz", moved / "dicom" / "IM0001"], moved)[0] == value
    # a file whose size and time are those of the record is not read: a planted bytes digest shows it
    planted = {k: [stamp, "0" * 40] for k, (stamp, _) in record.items()}
    assert files_digest(files, case, planted)[0] != value
    # new bytes of the same size: the time changes, the file is read again
    (case / "seg.nii.gz").write_bytes(b"labels v2")
    st = os.stat(case / "seg.nii.gz")
    os.utime(case / "seg.nii.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    # only the changed file is read: the unchanged one keeps its planted digest
    assert files_digest(files, case, planted)[0] == digest({"seg.nii.gz": hashlib.sha1(b"labels v2").hexdigest(),
                                                             "dicom/IM0001": "0" * 40})
    assert files_digest(files, case, record)[0] == files_digest(files, case)[0] != value
    # the same bytes written again (new time): read again, same digest
    (case / "seg.nii.gz").write_bytes(b"labels v1")
    os.utime(case / "seg.nii.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    assert files_digest(files, case, record)[0] == value
    # a renamed file changes the digest
    (case / "seg.nii.gz").rename(case / "seg2.nii.gz")
    assert files_digest([case / "seg2.nii.gz", case / "dicom" / "IM0001"], case)[0] != value
