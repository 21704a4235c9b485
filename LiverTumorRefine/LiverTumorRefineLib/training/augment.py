"""Patch augmentation for training, on batches of (N, C, P, P) tensors in HU (any device).

Geometric transforms move image, mask and truth together; intensity transforms touch only the
image channels and work in HU before the network's window, so they emulate other contrast
phases, scanners and noise levels rather than our phantom generator's particular values.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def _rotate_scale(batch: torch.Tensor, truth: torch.Tensor, n_image: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation (any angle), isotropic scale 0.85-1.15 and flip; image bilinear, masks nearest."""
    n, dev = batch.shape[0], batch.device
    angle = torch.rand(n, generator=generator, device=dev) * 2 * math.pi
    scale = 0.85 + 0.3 * torch.rand(n, generator=generator, device=dev)
    flip = torch.where(torch.rand(n, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros_like(cos)], -1),
                         torch.stack([sin * flip, cos, torch.zeros_like(cos)], -1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    image = F.grid_sample(batch[:, :n_image], grid, mode="bilinear", padding_mode="border", align_corners=False)
    masks = torch.cat([batch[:, n_image:], truth[:, None]], dim=1)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="border", align_corners=False)
    return torch.cat([image, masks[:, :-1]], dim=1), masks[:, -1]


def _gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample with its own sigma (pixels); separable 7-tap kernels."""
    n, c, p, _ = image.shape
    offsets = torch.arange(-3, 4, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (N, 7)
    weight = kernel.repeat_interleave(c, 0)  # one kernel per (sample, channel)
    x = image.reshape(1, n * c, p, p)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), weight[:, None, None, :], groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), weight[:, None, :, None], groups=n * c)
    return x.reshape(n, c, p, p)


def _intensity(image: torch.Tensor, generator: torch.Generator, hu_shift: float) -> torch.Tensor:
    """HU shift, contrast around the patch mean, blur and noise, each at a random strength."""
    n, dev = image.shape[0], image.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=generator, device=dev))[:, None, None, None]

    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    image = (image - mean) * uniform(0.7, 1.35) + mean + uniform(-hu_shift, hu_shift)
    blur = torch.rand(n, generator=generator, device=dev) < 0.3
    if bool(blur.any()):
        sigma = 0.4 + 0.8 * torch.rand(int(blur.sum()), generator=generator, device=dev)
        image[blur] = _gaussian_blur(image[blur], sigma)
    noise = torch.randn(image.shape, generator=generator, device=dev) * uniform(0.0, 25.0)
    return image + noise


def augment(batch: torch.Tensor, truth: torch.Tensor, n_image: int, generator: torch.Generator,
            hu_shift: float = 40.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented copies of ``batch`` (N, C, P, P; image channels first, in HU) and ``truth`` (N, P, P);
    ``hu_shift``: the largest random HU offset."""
    batch, truth = _rotate_scale(batch.float(), truth.float(), n_image, generator)
    image = _intensity(batch[:, :n_image], generator, hu_shift)
    return torch.cat([image, batch[:, n_image:]], dim=1), truth
