import numpy as np
import pytest
import torch

from ctdose.learn.normalise import fit_normaliser
from ctdose.learn.patches import CaseReader, PatchDataModule, PatchDataset, patch_box


@pytest.fixture(scope="module")
def normaliser(learning_store):
    return fit_normaliser(learning_store, learning_store.case_ids(), "cylinder")


def test_patch_centres_are_never_air(learning_store, normaliser):
    reader = CaseReader(learning_store, "cylinder", normaliser, cache_cases=2)
    data = PatchDataset(reader, learning_store.case_ids(), 400, 8, seed=5)
    bodies = {c: learning_store.read_case(c)["labels"].values > 0 for c in learning_store.case_ids()}
    for i in range(len(data)):
        case_id, centre = data.location(i)
        assert bodies[case_id][centre]
    inputs, target, mask = data[0]
    assert mask[0, 4, 4, 4] == 1  # centre voxel at offset size // 2


def test_patch_matches_the_volume_and_is_padded_at_borders(learning_store, normaliser):
    case_id = learning_store.case_ids()[0]
    ds = learning_store.read_case(case_id).load()
    reader = CaseReader(learning_store, "cylinder", normaliser)
    centre = (1, 10, 18)  # near the z=0 and x=max borders
    inputs, target, mask = reader.patch(case_id, centre, 8)
    lo, hi = patch_box(centre, 8)
    assert tuple(lo) == (-3, 6, 14) and tuple(hi) == (5, 14, 22)
    expect = normaliser.inputs(ds["density_e"].values, ds["kerma_cylinder"].values)
    assert np.allclose(inputs[:, 3:, :, :6], expect[:, 0:5, 6:14, 14:20])
    assert np.all(inputs[:, :3] == np.float32(0.001)) and np.all(inputs[:, :, :, 6:] == np.float32(0.001))
    assert np.all(mask[0, :3] == 0) and np.all(mask[0, :, :, 6:] == 0)
    assert np.allclose(target[0, 3:, :, :6], normaliser.dose_to_normalised(ds["dose_mc"].values[0:5, 6:14, 14:20]))
    lazy = CaseReader(learning_store, "cylinder", normaliser, lazy=True).patch(case_id, centre, 8)
    for a, b in zip((inputs, target, mask), lazy):
        assert np.allclose(a, b)


def test_same_seed_same_patches_and_cache_stays_small(learning_store, normaliser):
    ids = learning_store.case_ids()
    def batch(seed, epoch):
        reader = CaseReader(learning_store, "cylinder", normaliser, cache_cases=2)
        data = PatchDataset(reader, ids, 24, 8, seed=seed, epoch=epoch)
        out = torch.stack([data[i][0] for i in range(len(data))])
        assert len(reader._cache) <= 2 and reader.loads == len(ids)  # each case read once per epoch
        return out
    assert torch.equal(batch(1, 0), batch(1, 0))
    assert not torch.equal(batch(1, 0), batch(1, 1))
    assert not torch.equal(batch(1, 0), batch(2, 0))


def test_datamodule_batches(learning_store, normaliser):
    ids = learning_store.case_ids()
    dm = PatchDataModule(learning_store, "cylinder", normaliser, ids[:5], ids[5:], 8, 20, 8, seed=0, val_patches=8)
    batches = list(dm.train_dataloader())
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    x, y, m = batches[0]
    assert x.shape == (8, 2, 8, 8, 8) and y.shape == (8, 1, 8, 8, 8) and m.shape == y.shape
    assert len(list(dm.val_dataloader())) == 1
