import pytest
import torch

from ctdose.errors import InputError
from ctdose.learn.checkpoint import load_checkpoint, save_checkpoint
from ctdose.learn.normalise import MinMax, Normaliser
from ctdose.learn.unet import UNet3d

NORM = Normaliser(MinMax(1e26, 4e29), MinMax(0.0, 3e-4), MinMax(0.0, 2e-4))


def _saved(tmp_path, **kw):
    torch.manual_seed(0)
    net = UNet3d(width=2, depth=2)
    meta = dict(kerma_mode="cylinder", percent_real=10, spacing_mm=[6.0, 6.0, 6.0], member=1, seed=42,
                profile="smoke", real_source="surrogate", patch_size=8)
    meta.update(kw)
    return net, save_checkpoint(tmp_path / "member1.pt", net, NORM, **meta)


def test_round_trip_keeps_weights_constants_and_metadata(tmp_path):
    net, path = _saved(tmp_path)
    member = load_checkpoint(path, kerma_mode="cylinder", spacing_mm=(6.0, 6.0, 6.0))
    x = torch.randn(1, 2, 8, 8, 8)
    net.eval()
    assert torch.equal(net(x), member.net(x))
    assert member.normaliser == NORM
    assert member.meta["percent_real"] == 10 and member.meta["real_source"] == "surrogate"
    assert member.meta["seed"] == 42 and member.meta["profile"] == "smoke"
    assert member.meta["net"] == {"in_channels": 2, "out_channels": 2, "width": 2, "depth": 2}
    # a plain dict of tensors and Python values: loads with weights_only=True
    assert isinstance(torch.load(path, weights_only=True)["state_dict"], dict)


def test_other_kerma_mode_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(InputError, match="'cylinder' kerma input.*'patient'"):
        load_checkpoint(path, kerma_mode="patient")


def test_incompatible_grid_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    load_checkpoint(path, spacing_mm=(6.03, 6.0, 5.98))  # within 1 %
    with pytest.raises(InputError, match=r"\(6.0, 6.0, 6.0\) mm grid, refused for a \(2.5, 2.5, 2.5\) mm grid"):
        load_checkpoint(path, spacing_mm=(2.5, 2.5, 2.5))


class NotAllowed:
    pass


def test_pickled_objects_and_foreign_files_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"obj": NotAllowed()}, evil)
    with pytest.raises(InputError, match="not a loadable ctdose checkpoint"):
        load_checkpoint(evil)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(InputError, match="not a ctdose checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
