"""BRNet: a boundary refinement network for patch-size inputs.

An encoder-decoder like a U-Net, except that each skip connection is replaced by a path of
residual feature-extraction blocks (the paper's design: with small inputs, the extra processing
on the skip paths recovers context the shallow encoder features lack). Input: image channel(s)
plus the coarse mask patch; output: one logit per pixel.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from LiverTumorRefineLib.config import NetConfig, PatchConfig


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class FeaturePath(nn.Sequential):
    """The block that replaces a skip connection: ``n`` residual blocks."""

    def __init__(self, channels: int, n_blocks: int) -> None:
        super().__init__(*[ResidualBlock(channels) for _ in range(n_blocks)])


class BRNet(nn.Module):
    """Encoder-decoder with feature-extraction paths instead of skip connections.

    With ``mask_prior`` the last input channel (the coarse mask patch) is also added to the
    output as a learnable-strength prior, so the network starts from "keep the coarse mask" and
    learns the correction: it converges much faster on small budgets and never has to rebuild
    the mask from scratch far from the boundary.
    """

    def __init__(self, in_channels: int, net: NetConfig = NetConfig(), mask_prior: bool = False,
                 out_channels: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.prior_scale = nn.Parameter(torch.tensor(2.0)) if mask_prior else None
        if len(net.path_blocks) != net.depth:
            raise ValueError("path_blocks needs one entry per depth level")
        widths = [net.base_channels * 2**i for i in range(net.depth + 1)]
        self.stem = nn.Sequential(_conv_bn_relu(in_channels, widths[0]), ResidualBlock(widths[0]))
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(widths[i], widths[i + 1]), ResidualBlock(widths[i + 1]))
            for i in range(net.depth)
        )
        self.paths = nn.ModuleList(FeaturePath(widths[i], net.path_blocks[i]) for i in range(net.depth))
        self.up = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(widths[i + 1] + widths[i], widths[i]), ResidualBlock(widths[i]))
            for i in range(net.depth)
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, P, P) -> (N, P, P) logits, or (N, K, P, P) with ``out_channels`` K > 1; P must be
        divisible by 2**depth."""
        features = [self.stem(x)]
        for block in self.down:
            features.append(block(features[-1]))
        y = features[-1]
        for level in reversed(range(len(self.paths))):
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            y = self.up[level](torch.cat([y, self.paths[level](features[level])], dim=1))
        if self.out_channels > 1:
            return self.head(y)
        logits = self.head(y)[:, 0]
        if self.prior_scale is not None:
            logits = logits + self.prior_scale * (2 * x[:, -1] - 1)
        return logits


def build_model(patch: PatchConfig, net: NetConfig = NetConfig()) -> BRNet:
    """A fresh BRNet for ``patch``'s channel layout (with or without the mask channel)."""
    if patch.patch_px % (2**net.depth):
        raise ValueError(f"patch_px {patch.patch_px} must be divisible by {2**net.depth}")
    model = BRNet(patch.in_channels, net, mask_prior=patch.use_mask and net.mask_prior)
    model.patch_config = patch  # type: ignore[attr-defined]  # travels with the module
    model.net_config = net  # type: ignore[attr-defined]
    return model
