"""The paper's heteroscedastic 3D U-Net (section 2.3.1, Figure 1), in one file.

Encoder: ``depth`` blocks, each two 3x3x3 convolutions followed by BatchNorm and ReLU;
2x2x2 max pooling between blocks. Decoder: 2x2x2 transposed convolutions (stride 2) back
up, concatenation with the encoder block of the same resolution (skip connection), and
again two conv-BatchNorm-ReLU layers. A 1x1x1 convolution gives two output channels:

- channel 0: the dose ``mu(x)`` (normalised units, no activation);
- channel 1: ``sigma_tilde(x)^2``, made non-negative by a softplus. The eq. 5 floor
  ``(0.055 mu)^2`` is added in :mod:`ctdose.learn.loss`, not here.

Block ``l`` (0-based) has ``width * 2**l`` channels. The spatial size of an input must be
a multiple of ``2**(depth - 1)`` (16 for depth 4, hence 32^3 patches).

Examples
--------
>>> import torch
>>> net = UNet3d(width=4, depth=3)
>>> net(torch.zeros(1, 2, 8, 8, 8)).shape
torch.Size([1, 2, 8, 8, 8])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError

__all__ = ["ConvBlock", "UNet3d", "receptive_field_interval"]

KERNEL = 3
"""Edge of the convolution kernels (3x3x3)."""
POOL = 2
"""Edge and stride of max pooling and transposed convolution (2x2x2)."""
CONVS_PER_BLOCK = 2
"""Convolutions per block (two, each with BatchNorm and ReLU)."""


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by BatchNorm and ReLU (same spatial size)."""

    def __init__(self, in_channels: int, out_channels: int):
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(CONVS_PER_BLOCK):
            layers += [
                nn.Conv3d(channels, out_channels, KERNEL, padding=KERNEL // 2, bias=False),
                nn.BatchNorm3d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        super().__init__(*layers)


class UNet3d(nn.Module):
    """3D U-Net with a mean and a variance output channel.

    Parameters
    ----------
    in_channels : int
        Input channels (2: normalised electron density and air-kerma map).
    out_channels : int
        Output channels (2: ``mu`` and ``sigma_tilde^2``).
    width : int
        Channels of the first block (profile ``train.width``).
    depth : int
        Number of encoder blocks, i.e. resolution levels (profile ``train.depth``; paper: 4).
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 2, width: int = 8, depth: int = 4):
        super().__init__()
        if depth < 1 or width < 1:
            raise InputError(f"U-Net: depth ({depth}) and width ({width}) must be >= 1")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.width, self.depth = int(width), int(depth)
        chans = [width * 2**level for level in range(depth)]
        self.encoders = nn.ModuleList(
            ConvBlock(in_channels if level == 0 else chans[level - 1], chans[level]) for level in range(depth)
        )
        self.pool = nn.MaxPool3d(POOL)
        self.upsamples = nn.ModuleList(
            nn.ConvTranspose3d(chans[level + 1], chans[level], POOL, stride=POOL) for level in range(depth - 1)
        )
        self.decoders = nn.ModuleList(ConvBlock(2 * chans[level], chans[level]) for level in range(depth - 1))
        self.head = nn.Conv3d(chans[0], out_channels, 1)

    @property
    def size_multiple(self) -> int:
        """Input edges must be multiples of this (``2**(depth-1)``)."""
        return POOL ** (self.depth - 1)

    def hyper_parameters(self) -> dict:
        """Constructor arguments (stored in checkpoints)."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "width": self.width, "depth": self.depth}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, 2, z, y, x]`` inputs to ``[batch, 2, z, y, x]`` (mu, sigma_tilde^2)."""
        if any(n % self.size_multiple for n in x.shape[2:]):
            raise InputError(
                f"U-Net input of spatial size {tuple(x.shape[2:])}: each edge must be a multiple "
                f"of {self.size_multiple} for depth {self.depth}"
            )
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))
            skips.append(x)
        for level in reversed(range(self.depth - 1)):
            x = self.upsamples[level](x)
            x = self.decoders[level](torch.cat([skips[level], x], dim=1))
        out = self.head(x)
        mu, var = out[:, :1], F.softplus(out[:, 1:2])
        return torch.cat([mu, var, out[:, 2:]], dim=1)


def receptive_field_interval(index: int, depth: int, size: int) -> tuple[int, int]:
    """Input voxels (inclusive interval, along one axis) that can influence an output voxel.

    An analytic walk backwards through :class:`UNet3d`: a 3x3x3 convolution widens an
    interval ``[a, b]`` to ``[a-1, b+1]``; the output ``[a, b]`` of a 2x2x2 max pool reads
    ``[2a, 2b+1]``; a stride-2 transposed convolution output ``[a, b]`` reads
    ``[a//2, b//2]``; a skip connection takes the union of both paths. The result is
    clipped to the volume ``[0, size-1]`` (zero padding carries no signal).

    Parameters
    ----------
    index : int
        Output voxel index along the axis.
    depth : int
        U-Net depth.
    size : int
        Volume edge along the axis (voxels).

    Returns
    -------
    (int, int)
        First and last input index whose value can change the output at `index`.
    """

    def conv_block(lo: int, hi: int) -> tuple[int, int]:
        return lo - CONVS_PER_BLOCK * (KERNEL // 2), hi + CONVS_PER_BLOCK * (KERNEL // 2)

    def encoder_output(level: int, lo: int, hi: int) -> tuple[int, int]:
        """Input interval read by encoder block ``level`` outputs ``[lo, hi]``."""
        lo, hi = conv_block(lo, hi)
        if level == 0:
            return lo, hi
        return encoder_output(level - 1, POOL * lo, POOL * hi + POOL - 1)

    def decoder_output(level: int, lo: int, hi: int) -> tuple[int, int]:
        """Input interval read by the decoder output at ``level`` (bottom = encoder)."""
        if level == depth - 1:
            return encoder_output(level, lo, hi)
        lo, hi = conv_block(lo, hi)
        skip = encoder_output(level, lo, hi)
        deep = decoder_output(level + 1, lo // POOL, hi // POOL)
        return min(skip[0], deep[0]), max(skip[1], deep[1])

    lo, hi = decoder_output(0, index, index)
    return max(lo, 0), min(hi, size - 1)
