import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.io.dicom import read_dicom_series
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
