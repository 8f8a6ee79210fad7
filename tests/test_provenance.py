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
