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


def _write_series(folder, currents_ma, z_mm=None, tag="XRayTubeCurrent"):
    """A small uncompressed CT series written with pydicom (8 x 8 pixels, 2.5 mm slices), one
    file per slice, the files named in reverse slice order; ``None`` leaves a slice's tag out."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    z_mm = [-100.0 + 2.5 * k for k in range(len(currents_ma))] if z_mm is None else z_mm
    paths = []
    for k, (z, ma) in enumerate(zip(z_mm, currents_ma)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.ImagePositionPatient = [-10.0, -10.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [2.5, 2.5]
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.full((8, 8), 1024 + k, np.int16).tobytes()
        if ma is not None:
            setattr(ds, tag, ma)
        path = folder / f"slice_{len(z_mm) - k:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def _edit(path, **changes):
    import pydicom

    ds = pydicom.dcmread(str(path))
    for key, value in changes.items():
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


def test_written_series_reads_back_with_its_tube_current_by_slice_position(tmp_path):
    currents = [100 + 10 * k for k in range(12)]
    paths = _write_series(tmp_path / "s", currents)
    hu, aff = read_dicom_series(tmp_path / "s")
    assert hu.shape == (8, 8, 12) and hu[0, 0, 0] == 0.0 and hu[0, 0, 11] == 11.0
    _edit(paths[3], XRayTubeCurrentInuA=123456.0)  # the finer tag wins where a slice has it
    profile = read_tube_current(tmp_path / "s")
    np.testing.assert_array_equal(profile.z_mm, -100.0 + 2.5 * np.arange(12))
    np.testing.assert_allclose(profile.current_ma, [123.456 if k == 3 else 100.0 + 10 * k for k in range(12)])
    assert profile.source == "DICOM XRayTubeCurrent and XRayTubeCurrentInuA of s/"
    micro = _write_series(tmp_path / "u", [250000.0, 310500.0], tag="XRayTubeCurrentInuA")
    assert len(micro) == 2
    np.testing.assert_allclose(read_tube_current(tmp_path / "u").current_ma, [250.0, 310.5])


def test_tube_current_record_gaps_and_other_planes_are_refused(tmp_path):
    paths = _write_series(tmp_path / "gap", [200, 210, None, 220])
    with pytest.raises(InputError, match=rf"{paths[2].name}: no tube current"):
        read_tube_current(tmp_path / "gap")
    _write_series(tmp_path / "none", [None, None, None])
    assert read_tube_current(tmp_path / "none") is None  # no record at all: no modulation
    paths = _write_series(tmp_path / "sag", [200, 200, 200])
    _edit(paths[1], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    with pytest.raises(InputError, match=rf"{paths[1].name}: not a transverse slice"):
        read_tube_current(tmp_path / "sag")
    _write_series(tmp_path / "twice", [200, 210], z_mm=[5.0, 5.0])
    with pytest.raises(InputError, match=r"\(DICOM XRayTubeCurrent of twice/\): z_mm must be strictly"):
        read_tube_current(tmp_path / "twice")
    with pytest.raises(InputError, match="no such DICOM folder"):
        read_tube_current(tmp_path / "nope")
