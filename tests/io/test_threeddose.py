"""Tests of ctdose.io.threeddose: DOSXYZnrc dose format."""

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.io.threeddose import read_3ddose, write_3ddose


def test_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    dose = rng.uniform(0, 1e-15, size=(3, 4, 5))
    unc = rng.uniform(0, 0.1, size=dose.shape)
    p = write_3ddose(tmp_path / "a.3ddose", dose, unc, (2.0, 3.0, 4.0), (-10.0, 5.0, 0.0))
    d = read_3ddose(p)
    np.testing.assert_allclose(d.dose, dose, rtol=1e-7)
    np.testing.assert_allclose(d.rel_uncertainty, unc, rtol=1e-7)
    np.testing.assert_allclose(d.spacing_mm, (2.0, 3.0, 4.0))
    np.testing.assert_allclose(d.origin_mm, (-10.0, 5.0, 0.0), atol=1e-6)


def test_block_layout_follows_the_manual(tmp_path):
    dose = np.zeros((2, 1, 3))
    dose[1, 0, 2] = 7.0  # x index 2, z index 1 -> last value in file order (x fastest)
    dose[0, 0, 1] = 5.0
    p = write_3ddose(tmp_path / "b.3ddose", dose, None, (10.0, 10.0, 10.0), (5.0, 5.0, 5.0))
    lines = p.read_text().splitlines()
    assert len(lines) == 6
    assert lines[0].split() == ["3", "1", "2"]
    np.testing.assert_allclose([float(v) for v in lines[1].split()], [0, 1, 2, 3])
    np.testing.assert_allclose([float(v) for v in lines[2].split()], [0, 1])
    np.testing.assert_allclose([float(v) for v in lines[3].split()], [0, 1, 2])
    assert [float(v) for v in lines[4].split()] == [0, 5, 0, 0, 0, 7]
    assert [float(v) for v in lines[5].split()] == [0] * 6


def test_reads_wrapped_blocks_and_fortran_exponents(tmp_path):
    f = tmp_path / "w.3ddose"
    f.write_text("  2  1  1\n 0.0 0.5\n 1.0\n 0.0 1.0\n 0.0 1.0\n 0.1D-14\n 0.2E-14\n 0.01 0.02\n")
    d = read_3ddose(f)
    np.testing.assert_allclose(d.dose.ravel(), [1e-15, 2e-15])
    np.testing.assert_allclose(d.rel_uncertainty.ravel(), [0.01, 0.02])


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "no voxel numbers"),
        ("a b c\n", "numbers of voxels"),
        ("2 1 1\n0 1 2\n0 1\n0 1\n1 1\n0.1\n", "expected"),
        ("2 1 1\n0 1 2\n0 1\n0 1\n1 x\n0.1 0.1\n", "non-numeric"),
        ("2 1 1\n0 2 1\n0 1\n0 1\n1 1\n0.1 0.1\n", "increasing"),
    ],
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, text, match):
    f = tmp_path / "bad.3ddose"
    f.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        read_3ddose(f)
    assert "bad.3ddose" in str(err.value)


def test_missing_file_and_bad_arrays(tmp_path):
    with pytest.raises(InputError, match="no such"):
        read_3ddose(tmp_path / "none.3ddose")
    with pytest.raises(InputError):
        write_3ddose(tmp_path / "x.3ddose", np.full((1, 1, 1), np.nan), None, (1, 1, 1), (0, 0, 0))
    with pytest.raises(InputError):
        write_3ddose(tmp_path / "x.3ddose", np.ones((1, 1, 2)), np.ones((1, 1, 1)), (1, 1, 1), (0, 0, 0))


_GOOD = "3 2 2\n-0.25 0.25 0.75 1.25\n-0.25 0.25 0.75\n-0.25 0.25 0.75\n" + " ".join(["1e-3"] * 12) + "\n" + " ".join(
    ["0.05"] * 12) + "\n"


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("-0.25 0.25 0.75 1.25", "-0.25 nan 0.75 1.25", r"x boundaries contain NaN or infinite values"),
        ("-0.25 0.25 0.75\n1e-3", "-0.25 0.25 inf\n1e-3", r"z boundaries contain NaN or infinite values"),
        ("0.05 0.05\n", "0.05 -0.05\n", r"negative relative uncertainty -0\.05"),
    ],
)
def test_bad_boundaries_and_uncertainties_raise_naming_the_file(tmp_path, old, new, match):
    assert old in _GOOD
    f = tmp_path / "bad.3ddose"
    f.write_text(_GOOD.replace(old, new, 1))
    with pytest.raises(InputError, match=match) as err:
        read_3ddose(f)
    assert "bad.3ddose" in str(err.value)


@pytest.mark.parametrize(
    "spacing, origin",
    [
        ((float("nan"), 5.0, 5.0), (0.0, 0.0, 0.0)),
        ((5.0, 5.0, float("inf")), (0.0, 0.0, 0.0)),
        ((5.0, -5.0, 5.0), (0.0, 0.0, 0.0)),
        ((5.0, 5.0, 5.0), (0.0, 0.0, float("nan"))),
        ((5.0, 5.0, 5.0), (0.0, float("-inf"), 0.0)),
    ],
)
def test_write_refuses_a_bad_grid_and_keeps_the_old_file(tmp_path, spacing, origin):
    d = np.ones((2, 2, 3))
    p = write_3ddose(tmp_path / "x.3ddose", d, None, (5.0, 5.0, 5.0), (0.0, 0.0, 0.0))
    before = p.read_bytes()
    with pytest.raises(InputError, match=r"x\.3ddose: bad spacing_mm .* \(spacing: 3 finite numbers > 0"):
        write_3ddose(p, d, None, spacing, origin)
    assert p.read_bytes() == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.3ddose"]


@pytest.mark.parametrize("case", ["folder", "under_a_file", "write_protected"])
def test_write_failures_name_the_target_and_keep_the_old_file(tmp_path, case):
    from ctdose.errors import OutputError

    d = np.ones((2, 2, 3))
    old = write_3ddose(tmp_path / "x.3ddose", d, None, (5.0, 5.0, 5.0), (0.0, 0.0, 0.0))
    before = old.read_bytes()
    target, match = {
        "folder": (tmp_path, r": is a folder, not a file"),
        "under_a_file": (old / "y.3ddose", r"y\.3ddose: cannot write the file: .*x\.3ddose is a file, not a folder"),
        "write_protected": (old, r"x\.3ddose: the file is write-protected \(mode 0444\)"),
    }[case]
    old.chmod(0o444 if case == "write_protected" else 0o644)
    try:
        with pytest.raises(OutputError, match=match) as err:
            write_3ddose(target, 2 * d, None, (5.0, 5.0, 5.0), (0.0, 0.0, 0.0))
    finally:
        old.chmod(0o644)
    assert ".tmp" not in str(err.value)
    assert old.read_bytes() == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.3ddose"]


def test_write_creates_missing_folders(tmp_path):
    p = write_3ddose(tmp_path / "a" / "b" / "x.3ddose", np.ones((1, 1, 2)), None, (1, 1, 1), (0, 0, 0))
    assert read_3ddose(p).shape == (1, 1, 2)
