"""Tests of ctdose.io.egsphant: DOSXYZnrc phantom format."""

import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.io.egsphant import egsphant_from_case, read_egsphant, write_egsphant


def _phantom(nmed=3, shape=(2, 3, 4), seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, nmed, size=shape).astype(np.uint8)
    rho = rng.uniform(0.001, 2.0, size=shape).astype(np.float32)
    return idx, rho


def test_round_trip(tmp_path):
    idx, rho = _phantom()
    p = write_egsphant(tmp_path / "a.egsphant", idx, rho, ["AIR521ICRU", "H2O521ICRU", "LUNG"], (5.0, 2.5, 2.0), (-3.0, 10.0, -7.0))
    ph = read_egsphant(p)
    assert ph.media == ["AIR521ICRU", "H2O521ICRU", "LUNG"]
    np.testing.assert_array_equal(ph.media_index, idx)
    np.testing.assert_allclose(ph.density_g_cm3, rho, rtol=1e-5)
    np.testing.assert_allclose(ph.spacing_mm, (5.0, 2.5, 2.0))
    np.testing.assert_allclose(ph.origin_mm, (-3.0, 10.0, -7.0), atol=1e-5)


def test_line_layout_follows_the_manual(tmp_path):
    # 2 slices (z), 3 rows (y), 4 columns (x)
    idx = np.zeros((2, 3, 4), np.uint8)
    idx[1, 2, 3] = 1  # voxel i=3 (x), j=2 (y), k=1 (z)
    rho = np.ones((2, 3, 4))
    rho[0, 1, 2] = 0.5
    p = write_egsphant(tmp_path / "b.egsphant", idx, rho, ["AIR", "WATER"], (10.0, 10.0, 10.0), (5.0, 5.0, 5.0), estepe=0.25)
    lines = p.read_text().split("\n")
    assert lines[0].split() == ["2"]                      # number of media
    assert lines[1:3] == ["AIR", "WATER"]                 # one name per line
    assert [float(v) for v in lines[3].split()] == [0.25, 0.25]  # ESTEPE line
    assert lines[4].split() == ["4", "3", "2"]            # nx ny nz
    np.testing.assert_allclose([float(v) for v in lines[5].split()], [0, 1, 2, 3, 4])  # x bounds, cm
    np.testing.assert_allclose([float(v) for v in lines[6].split()], [0, 1, 2, 3])
    np.testing.assert_allclose([float(v) for v in lines[7].split()], [0, 1, 2])
    # media: slice 0 rows, blank line, slice 1 rows (1-based characters, x fastest), blank line
    assert lines[8:12] == ["1111", "1111", "1111", ""]
    assert lines[12:16] == ["1111", "1111", "1112", ""]
    # densities per row, blank line after each slice
    assert [float(v) for v in lines[17].split()] == [1.0, 1.0, 0.5, 1.0]
    assert lines[19] == "" and lines[23] == ""


def test_more_than_nine_media_use_ascii_after_9(tmp_path):
    idx = np.arange(12, dtype=np.uint8).reshape(1, 1, 12)
    p = write_egsphant(tmp_path / "c.egsphant", idx, np.ones((1, 1, 12)), [f"M{i}" for i in range(12)], (1, 1, 1), (0, 0, 0))
    assert "123456789:;<" in p.read_text()
    np.testing.assert_array_equal(read_egsphant(p).media_index, idx)


def test_reads_wrapped_boundaries_and_free_format_densities(tmp_path):
    text = "1\nWATER\n1.0\n2 1 1\n0.0\n0.5 1.0\n0.0 1.0\n0.0\n1.0\n11\n\n1.0\n  0.9\n\n"
    f = tmp_path / "w.egsphant"
    f.write_text(text)
    ph = read_egsphant(f)
    np.testing.assert_allclose(ph.x_bounds_cm, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(ph.density_g_cm3.ravel(), [1.0, 0.9])


@pytest.mark.parametrize(
    "text, match",
    [
        ("x\n", "number of media"),
        ("1\nWATER\n1.0\n2 1 1\n0 1 2\n0 1\n0 1\n1\n\n1 1\n", "characters"),
        ("1\nWATER\n1.0\n2 1 1\n0 1 2\n0 1\n0 1\n13\n\n1 1\n", "medium number"),
        ("1\nWATER\n1.0\n2 1 1\n0 1 2\n0 1\n0 1\n11\n\n1\n", "densities"),
        ("1\nWATER\n1.0\n2 1 1\n0 2 1\n0 1\n0 1\n11\n\n1 1\n", "increasing"),
        ("2\nWATER\n", "ends before"),
    ],
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, text, match):
    f = tmp_path / "bad.egsphant"
    f.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        read_egsphant(f)
    assert "bad.egsphant" in str(err.value)


def test_write_rejects_bad_input(tmp_path):
    idx, rho = _phantom()
    with pytest.raises(InputError):
        write_egsphant(tmp_path / "x.egsphant", idx, -rho, ["A", "B", "C"], (1, 1, 1), (0, 0, 0))
    with pytest.raises(InputError):
        write_egsphant(tmp_path / "x.egsphant", idx, rho, ["A", "B"], (1, 1, 1), (0, 0, 0))
    with pytest.raises(InputError):
        write_egsphant(tmp_path / "x.egsphant", idx, rho, ["A B", "B", "C"], (1, 1, 1), (0, 0, 0))
    with pytest.raises(InputError, match="no such"):
        read_egsphant(tmp_path / "missing.egsphant")
    assert not (tmp_path / "x.egsphant").exists()


def test_egsphant_from_case(tmp_path):
    from ctdose.materials import get_medium
    from ctdose.store import make_case

    labels = np.array([[[0, 1], [2, 1]]], np.uint8)
    ds = make_case(labels, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), case_id="c1")
    p = egsphant_from_case(ds, tmp_path / "c1.egsphant", medium_of_label=["air", "water", "lung"])
    ph = read_egsphant(p)
    assert ph.media == ["air", "lung", "water"]
    names = np.array(ph.media)[ph.media_index]
    assert names.tolist() == [[["air", "water"], ["lung", "water"]]]
    assert ph.density_g_cm3[0, 1, 0] == pytest.approx(get_medium("lung").density_g_cm3)


_GOOD = (
    "2\nWATER\nBONE\n1 1\n3 2 2\n-0.25 0.25 0.75 1.25\n-0.25 0.25 0.75\n-0.25 0.25 0.75\n"
    "111\n111\n\n222\n222\n\n1 1 1\n1 1 1\n\n1.2 1.2 1.2\n1.2 1.2 1.2\n\n"
)


def test_good_reference_file_reads(tmp_path):
    f = tmp_path / "good.egsphant"
    f.write_text(_GOOD)
    ph = read_egsphant(f)
    assert ph.shape == (2, 2, 3) and ph.spacing_mm == pytest.approx((5.0, 5.0, 5.0))


@pytest.mark.parametrize(
    "old, new, match",
    [
        # uneven x boundaries: the engine needs one spacing per axis (was read with the mean, 11.67 mm)
        ("-0.25 0.25 0.75 1.25", "-0.25 0.25 2.75 3.25",
         r"non-uniform x voxel boundaries \(voxel widths 0\.5 to 2\.5 cm\) are not supported"),
        ("-0.25 0.25 0.75 1.25", "-0.25 nan 0.75 1.25", r"x boundaries contain NaN or infinite values"),
        ("-0.25 0.25 0.75\n111", "-0.25 0.25 inf\n111", r"z boundaries contain NaN or infinite values"),
        ("1.2 1.2 1.2\n1.2 1.2 1.2\n\n", "1.2 1.2 1.2\n1.2 nan 1.2\n\n", r"density nan at voxel \(i=1, j=1, k=1\)"),
        ("1.2 1.2 1.2\n1.2 1.2 1.2\n\n", "1.2 -1.2 1.2\n1.2 1.2 1.2\n\n",
         r"negative density -1\.2 g/cm3 at voxel \(i=1, j=0, k=1\)"),
        # nmed 3 with only 2 names: the ESTEPE line was taken for a third name
        ("2\nWATER", "3\nWATER", r"expected 3 medium names, but line 4 is '1 1', not a medium name"),
        ("1 1\n3 2 2", "1 x\n3 2 2", r"bad ESTEPE line '1 x' \(line 4"),
        ("1 1\n3 2 2", "1 1\n3 two 2", r"bad voxel-number line '3 two 2' \(line 5; expected nx ny nz\)"),
        # voxel numbers one too high: the first media row was read as a boundary
        ("1 1\n3 2 2", "1 1\n4 2 2", r"x boundaries are not increasing \(do the voxel numbers 4 2 2 match"),
        ("111\n111\n\n222\n222", "1112\n1112\n\n2221\n2221", r"media row \(j=0, k=0\) has 4 characters, expected 3"),
        # one ESTEPE value for two media; a fourth number on the voxel-number line
        ("1 1\n3 2 2", "1\n3 2 2", r"bad ESTEPE line '1' \(line 4; expected 2 numbers\)"),
        ("1 1\n3 2 2", "1 1\n3 2 2 7", r"bad voxel-number line '3 2 2 7' \(line 5; expected nx ny nz\)"),
        ("-0.25 0.25 0.75\n111", "-0.25 0.25 O.75\n111", r"non-numeric voxel boundary in line 8: '-0.25 0.25 O.75'"),
    ],
)
def test_bad_content_raises_input_error_naming_the_file(tmp_path, old, new, match):
    assert old in _GOOD
    f = tmp_path / "bad.egsphant"
    f.write_text(_GOOD.replace(old, new, 1))
    with pytest.raises(InputError, match=match) as err:
        read_egsphant(f)
    assert "bad.egsphant" in str(err.value)


def test_a_file_that_ends_within_the_voxel_boundaries_says_so(tmp_path):
    """The reader's own 'ends before' error was swallowed as a non-numeric boundary."""
    f = tmp_path / "short.egsphant"
    f.write_text("".join(_GOOD.splitlines(keepends=True)[:6]))
    with pytest.raises(InputError, match=r"short\.egsphant.*ends before the voxel boundaries"):
        read_egsphant(f)


def test_fortran_d_exponents_read_as_in_3ddose_files(tmp_path):
    f = tmp_path / "d.egsphant"
    f.write_text(_GOOD.replace("1.2 1.2 1.2\n1.2 1.2 1.2\n\n", "1.2D0 1.2 1.2\n1.2 1.2 0.12d1\n\n", 1)
                 .replace("1 1\n3 2 2", "1.0D0 1\n3 2 2", 1))
    ph = read_egsphant(f)
    np.testing.assert_array_equal(ph.density_g_cm3[1], np.full((2, 3), 1.2, np.float32))
    np.testing.assert_array_equal(ph.estepe, [1.0, 1.0])


def test_huge_voxel_numbers_without_data_raise_before_allocating(tmp_path):
    n = 100_000
    bounds = " ".join(str(v) for v in range(n + 1)) + "\n"
    f = tmp_path / "huge.egsphant"
    f.write_text(f"1\nW\n1\n{n} {n} {n}\n" + bounds * 3)
    with pytest.raises(InputError, match=r"huge\.egsphant.*expected 10000000000 media rows"):
        read_egsphant(f)


def test_boundaries_rounded_in_the_file_still_read_as_uniform(tmp_path):
    # 1/3 mm voxels written with 4 decimals in cm: each boundary off by up to 5e-5 cm
    b = " ".join(f"{v:.4f}" for v in np.arange(4) / 30.0)
    f = tmp_path / "round.egsphant"
    f.write_text(_GOOD.replace("-0.25 0.25 0.75 1.25", b))
    assert read_egsphant(f).spacing_mm[2] == pytest.approx(1.0 / 3.0, rel=1e-3)


@pytest.mark.parametrize(
    "spacing, origin",
    [
        ((float("nan"), 5.0, 5.0), (0.0, 0.0, 0.0)),
        ((5.0, 5.0, float("inf")), (0.0, 0.0, 0.0)),
        ((5.0, 0.0, 5.0), (0.0, 0.0, 0.0)),
        (("a", 5.0, 5.0), (0.0, 0.0, 0.0)),
        ((5.0, 5.0, 5.0), (0.0, 0.0, float("nan"))),
        ((5.0, 5.0, 5.0), (0.0, 0.0)),
    ],
)
def test_write_refuses_a_bad_grid_and_keeps_the_old_file(tmp_path, spacing, origin):
    idx, rho = _phantom()
    p = write_egsphant(tmp_path / "x.egsphant", idx, rho, ["A", "B", "C"], (1, 1, 1), (0, 0, 0))
    before = p.read_bytes()
    with pytest.raises(InputError, match=r"x\.egsphant: bad spacing_mm .* \(spacing: 3 finite numbers > 0"):
        write_egsphant(p, idx, rho, ["A", "B", "C"], spacing, origin)
    assert p.read_bytes() == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.egsphant"]


def test_write_refuses_non_ascii_names_and_keeps_the_old_file(tmp_path):
    idx, rho = _phantom()
    p = write_egsphant(tmp_path / "x.egsphant", idx, rho, ["A", "B", "C"], (1, 1, 1), (0, 0, 0))
    before = p.read_bytes()
    with pytest.raises(InputError, match=r"x\.egsphant: medium names must be ASCII, got \['WASSER_Ü'\]"):
        write_egsphant(p, idx, rho, ["A", "WASSER_Ü", "C"], (1, 1, 1), (0, 0, 0))
    assert p.read_bytes() == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.egsphant"]


def test_write_into_a_write_protected_file_is_refused_by_name(tmp_path):
    from ctdose.errors import OutputError

    idx, rho = _phantom()
    p = write_egsphant(tmp_path / "x.egsphant", idx, rho, ["A", "B", "C"], (1, 1, 1), (0, 0, 0))
    before = p.read_bytes()
    p.chmod(0o444)
    try:
        with pytest.raises(OutputError, match=r"x\.egsphant: the file is write-protected \(mode 0444\)"):
            write_egsphant(p, idx, 2 * rho, ["A", "B", "C"], (1, 1, 1), (0, 0, 0))
    finally:
        p.chmod(0o644)
    assert p.read_bytes() == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.egsphant"]
