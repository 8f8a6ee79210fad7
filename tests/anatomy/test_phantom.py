import numpy as np
import pytest

from ctdose.anatomy.organs import body_mask, dose_groups, label_id
from ctdose.anatomy.phantom import PhantomParams, build_phantom, reference_organ_volumes_ml
from ctdose.errors import InputError

SPACING = 2.0
VOXEL_ML = SPACING**3 * 1e-3
# phantom calibration units belonging to each Table-4 dose group
GROUP_UNITS = {
    "lung": ["lung_right", "lung_left"], "heart": ["heart"], "blood": ["aorta_great_vessels"],
    "kidney": ["kidney_right", "kidney_left"], "liver": ["liver"], "pancreas": ["pancreas"], "brain": ["brain"],
    "spleen": ["spleen"], "red_marrow": ["red_marrow"], "stomach": ["stomach"], "gallbladder": ["gallbladder"],
    "adrenal": ["adrenal_right", "adrenal_left"], "colon": ["colon"], "oesophagus": ["oesophagus"],
}


@pytest.mark.parametrize("sex,height,rel", [("F", 1.55, 1.1), ("M", 2.05, 0.9)])
def test_voxelised_table4_organs_match_targets_at_2mm(sex, height, rel):
    vols = {k: v * rel for k, v in reference_organ_volumes_ml(sex).items()}
    ph = build_phantom(PhantomParams(sex=sex, height_m=height, fat_scale=1.05, organ_volumes_ml=vols))
    labels, _ = ph.voxelise(SPACING)
    counts = np.bincount(labels.ravel(), minlength=256) * VOXEL_ML
    targets = ph.target_volumes_ml()
    # sampled organs carry the requested volumes
    assert targets["liver"] == pytest.approx(vols["liver"])
    assert targets["heart"] == pytest.approx(vols["heart_wall"] + vols["heart_blood"])
    for group, ids in dose_groups().items():
        if group in ("muscle", "fat"):
            continue  # remainders of the trunk, no target
        voxel = counts[ids].sum()
        target = sum(targets[u] for u in GROUP_UNITS[group])
        assert voxel == pytest.approx(target, rel=0.03), group


def test_anatomy_is_where_it_belongs():
    ph = build_phantom(PhantomParams(sex="M", height_m=1.76))
    labels, origin = ph.voxelise(5.0)
    mm = lambda idx: np.asarray(origin) + idx * 5.0  # noqa: E731

    def centre(name):
        return mm(np.argwhere(labels == label_id(name))).mean(0)  # (z, y, x)

    assert centre("liver")[2] < 0 < centre("spleen")[2]  # liver on the patient's right (-x)
    assert centre("lung_right")[2] < 0 < centre("lung_left")[2]
    assert centre("spine_bone")[1] > centre("heart_wall")[1]  # spine posterior of the heart
    assert centre("sternum")[1] < centre("heart_wall")[1]
    assert centre("lung_right")[0] > centre("liver")[0] > centre("colon")[0]
    assert centre("brain")[0] > centre("trachea")[0]
    marks = ph.landmarks_z_mm()
    assert marks["C7"][1] > marks["adrenal"][0]


def test_height_fat_scale_and_offsets():
    short = build_phantom(PhantomParams(sex="F", height_m=1.5))
    tall = build_phantom(PhantomParams(sex="F", height_m=2.1))
    assert tall.landmarks_z_mm()["C7"][1] / short.landmarks_z_mm()["C7"][1] == pytest.approx(2.1 / 1.5)

    def width_mm(fat, **kw):
        ph = build_phantom(PhantomParams(sex="M", height_m=1.76, fat_scale=fat, **kw))
        lab, origin = ph.voxelise(1.0, z_range_mm=(300.0, 300.0), calibrate=False)
        row = lab[0, int(round(-origin[1])), :]  # y = 0 line through the trunk
        fat_px = np.count_nonzero(row == label_id("subcutaneous_fat"))
        return fat_px, origin, lab

    f1, _, _ = width_mm(1.0, arms="raised")
    f2, _, _ = width_mm(2.0, arms="raised")
    # two trunk fat layers (left, right) of 15 mm (male) per unit fat scale
    assert f2 - f1 == pytest.approx(2 * 15.0, abs=2.0)
    # with the arms along the body their fat layers (6 mm, four crossings) thicken too
    assert width_mm(2.0)[0] - width_mm(1.0)[0] == pytest.approx(2 * 15.0 + 4 * 6.0, abs=3.0)
    _, origin, lab = width_mm(1.0, offset_x_mm=40.0, offset_y_mm=20.0, table=True, arms="raised")
    idx = np.argwhere(body_mask(lab)[0])
    centre_yx = origin[1:] + idx.mean(0) * 1.0
    assert centre_yx == pytest.approx([20.0, 40.0], abs=3.0)
    table_y = origin[1] + np.argwhere(lab[0] == label_id("table"))[:, 0]
    assert table_y.min() >= origin[1] + idx[:, 0].max()  # table posterior of the body


def test_z_range_is_a_slab_of_the_full_volume():
    ph = build_phantom(PhantomParams(sex="M", height_m=1.8))
    full, o_full = ph.voxelise(6.0)
    part, o_part = ph.voxelise(6.0, z_range_mm=(400.0, 520.0))
    k0 = int(round((o_part[0] - o_full[0]) / 6.0))
    assert o_part[1:] == o_full[1:]
    np.testing.assert_array_equal(part, full[k0:k0 + part.shape[0]])
    assert o_part[0] >= 400.0 and o_part[0] + 6.0 * (part.shape[0] - 1) <= 520.0


def test_bad_parameters():
    with pytest.raises(InputError, match="sex"):
        build_phantom(PhantomParams(sex="X", height_m=1.7))
    with pytest.raises(InputError, match="height"):
        build_phantom(PhantomParams(sex="M", height_m=3.7))
    with pytest.raises(InputError, match="unknown organ"):
        build_phantom(PhantomParams(sex="M", height_m=1.7, organ_volumes_ml={"appendix": 5.0}))
    with pytest.raises(InputError, match="positive"):
        build_phantom(PhantomParams(sex="M", height_m=1.7, organ_volumes_ml={"liver": float("nan")}))
    with pytest.raises(InputError, match="spacing"):
        build_phantom(PhantomParams(sex="M", height_m=1.7)).voxelise(0.0)
