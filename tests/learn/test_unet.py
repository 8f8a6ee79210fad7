import pytest
import torch

from ctdose.errors import InputError
from ctdose.learn.unet import UNet3d, receptive_field_interval


@pytest.mark.parametrize("depth,size", [(1, 6), (2, 8), (4, 16)])
def test_output_has_two_channels_on_the_input_grid(depth, size):
    net = UNet3d(width=2, depth=depth)
    out = net(torch.randn(3, 2, size, size, size))
    assert out.shape == (3, 2, size, size, size)
    assert torch.all(out[:, 1] >= 0)  # sigma_tilde^2 is non-negative


def test_block_widths_double_with_depth():
    net = UNet3d(width=3, depth=4)
    assert [blk[0].out_channels for blk in net.encoders] == [3, 6, 12, 24]


def test_input_size_must_fit_the_pooling():
    with pytest.raises(InputError, match="multiple of 8"):
        UNet3d(width=2, depth=4)(torch.zeros(1, 2, 12, 16, 16))


def test_receptive_field_by_hand_for_two_levels():
    # level 0: conv conv -> i+-2; pool; level 1 conv conv at coarse j+-2; transposed conv
    # and decoder conv conv. For output i=8: decoder convs -> [6, 10]; skip: [4, 12];
    # deep path: coarse [3, 5] -> convs [1, 7] -> fine [2, 15] -> convs [0, 17]
    assert receptive_field_interval(8, 2, 32) == (0, 17)
    assert receptive_field_interval(8, 1, 32) == (6, 10)  # one block: two 3x3x3 convolutions
    assert receptive_field_interval(0, 2, 32) == (0, 9)  # clipped at the volume border


def _gradient_support(net, size, centre, trials):
    support = torch.zeros(size, size, size, dtype=torch.bool)
    for _ in range(trials):  # union over inputs: max pooling routes gradient to one voxel per window
        x = torch.randn(1, 2, size, size, size, requires_grad=True)
        net(x)[0, 0, centre, centre, centre].backward()
        support |= (x.grad[0].abs() > 0).any(dim=0)
    return support


def _check_box(support, lo, hi):
    inside = torch.zeros_like(support)
    inside[lo : hi + 1, lo : hi + 1, lo : hi + 1] = True
    assert not (support & ~inside).any(), "gradient outside the analytic receptive field"
    idx = support.nonzero()
    for axis in range(3):  # and it reaches every face of the analytic box
        assert idx[:, axis].min().item() == lo and idx[:, axis].max().item() == hi


@pytest.mark.parametrize("depth,size", [(1, 12), (2, 24)])
def test_gradient_is_nonzero_exactly_within_the_receptive_field(depth, size):
    torch.manual_seed(0)
    net = UNet3d(width=4, depth=depth).eval()
    centre = size // 2 - 1
    lo, hi = receptive_field_interval(centre, depth, size)
    assert 0 < lo and hi < size - 1  # the box is not clipped: the test can fail
    _check_box(_gradient_support(net, size, centre, trials=3), lo, hi)


@pytest.mark.parametrize("depth,size", [(3, 48), (4, 96)])
def test_wiring_of_deep_nets_matches_the_receptive_field(depth, size):
    # without ReLU dead zones and with average pooling every path carries gradient,
    # so the support of a deep net is exactly the analytic box (cheap at width 1)
    torch.manual_seed(0)
    net = UNet3d(width=1, depth=depth).eval()
    for block in [*net.encoders, *net.decoders]:
        for k, layer in enumerate(block):
            if isinstance(layer, torch.nn.ReLU):
                block[k] = torch.nn.Identity()
    net.pool = torch.nn.AvgPool3d(2)
    centre = size // 2 - 1
    lo, hi = receptive_field_interval(centre, depth, size)
    assert 0 < lo and hi < size - 1
    _check_box(_gradient_support(net, size, centre, trials=1), lo, hi)
