import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.io.dicom import read_dicom_series, read_tube_current
from ctdose.io.nifti import read_nifti, to_canonical


def test_shared_series_matches_its_label_map(shared_dir):
    ex = shared_dir / "data" / "real-ct" / "totalsegmentator_example"
    hu, aff = read_dicom_series(ex / "example_ct_dicom")  # JPEG 2000 lossless
    assert hu.shape == (512, 512, 20)
    assert hu.min() == -1024 and hu.max() == 1839
    ct = to_canonical(hu, aff, "dicom")
    seg = to_canonical(*read_nifti(ex / "example_seg_dicom.nii.gz", integer=True), "seg")
    assert ct.same_grid(seg)
    assert ct.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    # liver (TotalSegmentator v2 id 5) voxels are soft tissue in the CT, lungs/air are not
    liver = seg.array == 5
    assert 20 < np.median(ct.array[liver]) < 120


def test_bad_folders(tmp_path):
    with pytest.raises(InputError, match="no such DICOM folder"):
        read_dicom_series(tmp_path / "nope")
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM image slices"):
        read_dicom_series(tmp_path)


def test_single_slice_is_refused(shared_dir, tmp_path):
    ex = shared_dir / "data" / "real-ct" / "totalsegmentator_example" / "example_ct_dicom"
    first = sorted(ex.iterdir())[0]
    (tmp_path / first.name).write_bytes(first.read_bytes())
    with pytest.raises(InputError, match="2D"):
        read_dicom_series(tmp_path)


def _series_copy(shared_dir, tmp_path):
    src = shared_dir / "data" / "real-ct" / "totalsegmentator_example" / "example_ct_dicom"
    dst = tmp_path / "series"
    dst.mkdir()
    for p in sorted(src.iterdir()):
        (dst / p.name).write_bytes(p.read_bytes())
    return sorted(dst.iterdir())


def _edit(path, **changes):
    import pydicom

    ds = pydicom.dcmread(str(path))
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(str(path))


def test_shared_series_tube_current_per_slice(shared_dir):
    import pydicom

    folder = shared_dir / "data" / "real-ct" / "totalsegmentator_example" / "example_ct_dicom"
    profile = read_tube_current(folder)
    heads = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(folder.iterdir())]
    by_z = sorted((float(h.ImagePositionPatient[2]), float(h.XRayTubeCurrent)) for h in heads)
    np.testing.assert_array_equal(profile.z_mm, [z for z, _ in by_z])
    np.testing.assert_array_equal(profile.current_ma, [ma for _, ma in by_z])
    assert profile.z_mm[0] == -804.5 and np.all(np.diff(profile.z_mm) == 2.0)
    assert 614.0 <= profile.current_ma.min() and profile.current_ma.max() <= 616.0
    assert profile.source == "DICOM XRayTubeCurrent of example_ct_dicom/"


def test_tube_current_follows_each_slice_and_prefers_microamperes(shared_dir, tmp_path):
    files = _series_copy(shared_dir, tmp_path)
    z = {}
    for i, p in enumerate(files):
        _edit(p, XRayTubeCurrent=100 + 10 * i)
        z[p] = -766.5 - 2.0 * i  # the files are named in slice order, top slice first
    _edit(files[3], XRayTubeCurrentInuA=123456.0)
    profile = read_tube_current(files[0].parent)
    expect = sorted((z[p], 123.456 if k == 3 else 100.0 + 10 * k) for k, p in enumerate(files))
    np.testing.assert_allclose(profile.z_mm, [a for a, _ in expect])
    np.testing.assert_allclose(profile.current_ma, [b for _, b in expect])
    assert "XRayTubeCurrentInuA" in profile.source


def test_tube_current_record_gaps_and_other_planes_are_refused(shared_dir, tmp_path):
    files = _series_copy(shared_dir, tmp_path)
    _edit(files[5], XRayTubeCurrent=None)
    with pytest.raises(InputError, match=rf"{files[5].name}: no tube current"):
        read_tube_current(files[0].parent)
    for p in files:
        if p != files[5]:
            _edit(p, XRayTubeCurrent=None)
    assert read_tube_current(files[0].parent) is None  # no record at all: no modulation
    _edit(files[2], XRayTubeCurrent=200, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    for p in files:
        _edit(p, XRayTubeCurrent=200)
    with pytest.raises(InputError, match=rf"{files[2].name}: not a transverse slice"):
        read_tube_current(files[0].parent)
    with pytest.raises(InputError, match="no such DICOM folder"):
        read_tube_current(tmp_path / "nope")
