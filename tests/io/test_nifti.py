import nibabel as nib
import numpy as np
import pytest

from ctdose.errors import InputError
from ctdose.io.nifti import read_nifti, to_canonical


def test_orientations_give_one_canonical_volume():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 100, size=(4, 5, 6)).astype(np.int16)  # canonical [z, y, x]
    sp, org = (3.0, 2.0, 1.5), (10.0, -20.0, 30.0)
    # LPS-ordered NIfTI: i = x (towards left = -R), j = y (posterior = -A), k = z
    arr = np.transpose(vol, (2, 1, 0))
    aff = np.diag([-sp[2], -sp[1], sp[0], 1.0])
    aff[:3, 3] = (-org[2], -org[1], org[0])
    a = to_canonical(arr, aff)
    # the same data stored RAS: flip i and j, move the origin to the other end
    ras = arr[::-1, ::-1, :]
    aff_ras = np.diag([sp[2], sp[1], sp[0], 1.0])
    aff_ras[:3, 3] = (-org[2] - sp[2] * 5, -org[1] - sp[1] * 4, org[0])
    b = to_canonical(ras, aff_ras)
    # and stored with axes permuted (k, i, j)
    perm = np.transpose(arr, (2, 0, 1))
    aff_perm = aff[:, [2, 0, 1, 3]]  # perm[a, b, c] = arr[b, c, a]
    c = to_canonical(perm, aff_perm)
    for v in (a, b, c):
        np.testing.assert_array_equal(v.array, vol)
        assert v.spacing_mm == pytest.approx(sp) and v.origin_mm == pytest.approx(org)


def test_read_nifti_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_nifti(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="junk.nii.gz: not a readable"):
        read_nifti(tmp_path / "junk.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 1), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="flat.nii.gz: .*2D"):
        read_nifti(tmp_path / "flat.nii.gz")
    nan = np.zeros((3, 3, 3), np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="nan.nii.gz: contains 1 NaN"):
        read_nifti(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((0, 3, 3), np.float32), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="empty.nii.gz: empty"):
        read_nifti(tmp_path / "empty.nii.gz")
    frac = np.full((3, 3, 3), 0.5, np.float32)
    nib.save(nib.Nifti1Image(frac, np.eye(4)), tmp_path / "frac.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        read_nifti(tmp_path / "frac.nii.gz", integer=True)


def test_shared_example_geometry(shared_dir):
    ex = shared_dir / "data" / "real-ct" / "totalsegmentator_example"
    v = to_canonical(*read_nifti(ex / "example_ct_sm.nii.gz"))
    assert v.array.shape == (30, 101, 122) and v.spacing_mm == (3.0, 3.0, 3.0)
    # RAS file: first voxel at x_RAS = -177.956 -> the last canonical x column (LPS x = +177.956)
    assert v.origin_mm[2] + 3.0 * 121 == pytest.approx(177.956, abs=0.01)
    assert v.origin_mm[0] == pytest.approx(94.302, abs=0.01)
