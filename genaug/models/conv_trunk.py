"""The convolutional trunk the VAE and the autoencoder share.

Encoder: stride-2 3x3 convolutions halve the feature map (rounding up) until
it is at most MAX_BOTTOM_SIZE on a side, widths doubling per stage up to
MAX_WIDTH_MULTIPLE x `channels`. Decoder: per stage, a 3x3 convolution to 4x
the channels at the low resolution, then a pixel shuffle and a crop back to
the encoder's size at that stage. The families own what sits around it (the
bottleneck, the output distribution), so their parameter names stay theirs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

# Downsample by 2 while the feature map is larger than this (8 -> 4, 28 -> 7, 32 -> 4, 64 -> 4).
MAX_BOTTOM_SIZE = 7
# Widths double per stage up to this multiple of `channels`, so the deepest
# stages of 64x64+ images do not dominate the CPU time of training and scoring.
MAX_WIDTH_MULTIPLE = 2


def feature_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Feature-map sizes, full resolution first; ceil(n / 2) per stage, always at least one stage."""
    sizes = [(h, w)]
    while len(sizes) == 1 or max(sizes[-1]) > MAX_BOTTOM_SIZE:
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


def stage_widths(image_channels: int, channels: int, stages: int) -> list[int]:
    """Channel widths from the image's to the bottom's, one per feature-map size."""
    return [image_channels] + [channels * min(2**i, MAX_WIDTH_MULTIPLE) for i in range(stages)]


def down_layers(widths: list[int]) -> list[nn.Module]:
    """The encoder's convolutions and activations, widths[0] channels in, widths[-1] out."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):  # k3 s2 p1 maps n to ceil(n / 2), odd or even
        layers += [nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1), nn.SiLU()]
    return layers


def up_convs(widths: list[int], out_channels: int) -> nn.ModuleList:
    """Stage i maps widths[i + 1] at size i + 1 to widths[i] (`out_channels` at full size) at size i."""
    return nn.ModuleList(
        nn.Conv2d(widths[i + 1], 4 * (widths[i] if i > 0 else out_channels), 3, padding=1)
        for i in reversed(range(len(widths) - 1))
    )


def upsample(feat: Tensor, up: nn.ModuleList, sizes: list[tuple[int, int]]) -> Tensor:
    """The bottom feature map [B, widths[-1], *sizes[-1]] decoded to full size by `up`."""
    for conv, (h, w) in zip(up, reversed(sizes[:-1])):
        feat = F.pixel_shuffle(conv(F.silu(feat)), 2)[:, :, :h, :w]
    return feat
