import numpy as np
import pytest

from ctdose.anatomy.organs import label_id
from ctdose.anatomy.phantom import PhantomParams, build_phantom
from ctdose.anatomy.roi import crop_z, landmark_extent_z_mm, thorax_roi_z_mm
from ctdose.errors import InputError

MARKS = {"C1": (700.0, 720.0), "C7": (600.0, 620.0), "adrenal": (300.0, 340.0), "lung": (380.0, 640.0),
         "kidney": (250.0, 330.0)}


def test_landmark_rule():
    assert thorax_roi_z_mm(MARKS, 30.0, "c") == (270.0, 650.0)
    assert thorax_roi_z_mm(MARKS, 0.0, "c", superior="C1") == (300.0, 720.0)


def test_missing_landmark_names_the_case_and_fallback():
    no_c7 = {k: v for k, v in MARKS.items() if k not in ("C7", "C1")}
    with pytest.raises(InputError, match="case p7.*C7"):
        thorax_roi_z_mm(no_c7, 30.0, "p7")
    assert thorax_roi_z_mm(no_c7, 30.0, "p7", fallback=True) == (270.0, 670.0)  # lung apex
    with pytest.raises(InputError, match="case q.*adrenal"):
        thorax_roi_z_mm({"C7": (600.0, 620.0)}, 30.0, "q")
    with pytest.raises(InputError, match="upside down"):
        thorax_roi_z_mm({"C7": (100.0, 120.0), "adrenal": (300.0, 340.0)}, 30.0, "u")


def test_voxel_landmarks_and_crop():
    z = np.arange(10) * 5.0 + 100.0
    mask = np.zeros((10, 2, 2), bool)
    mask[3:6, 1, 1] = True
    assert landmark_extent_z_mm(mask, z) == (115.0, 125.0)
    assert landmark_extent_z_mm(np.zeros_like(mask), z) is None
    assert crop_z(z, (112.0, 126.0)) == slice(3, 6)
    with pytest.raises(InputError):
        crop_z(z, (0.0, 10.0))


def test_phantom_roi_contains_adrenals_and_c7_with_margin():
    ph = build_phantom(PhantomParams(sex="F", height_m=1.62))
    roi = thorax_roi_z_mm(ph.landmarks_z_mm(), 30.0, "f")
    lab, origin = ph.voxelise(3.0, roi)
    z = origin[0] + 3.0 * np.arange(lab.shape[0])
    adrenal = landmark_extent_z_mm(np.isin(lab, [label_id("adrenal_right"), label_id("adrenal_left")]), z)
    assert adrenal[0] - z[0] == pytest.approx(30.0, abs=3.0)
    assert z[-1] - ph.landmarks_z_mm()["C7"][1] == pytest.approx(30.0, abs=3.0)
    assert np.any(lab[-1] == label_id("spine_bone"))
