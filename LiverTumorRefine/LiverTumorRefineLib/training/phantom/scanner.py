"""The scanner: shading, reconstruction-kernel blur, CT noise, calibration offset, integer HU."""
from __future__ import annotations

import math

import numpy as np
import torch

from LiverTumorRefineLib.training.phantom.blur import blur
from LiverTumorRefineLib.training.phantom.canvas import Canvas
from LiverTumorRefineLib.training.phantom.grid import Grid
from LiverTumorRefineLib.training.phantom.shapes import Waves


def _ct_noise(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, psf_mm: float,
              sigma_hu: float) -> np.ndarray:
    """Noise of standard deviation ``sigma_hu`` with a CT-like in-plane noise power spectrum:
    filtered back-projection gives a ramp times the kernel's roll-off, so power peaks at mid
    frequencies (a band-pass, difference-of-Gaussians-like shape) rather than being flat. Here
    that band is blended with the smoother white-through-the-kernel part; slices are independent."""
    u = rng.uniform
    peak = u(0.12, 0.35)  # cycles/mm of the band-pass part's maximum
    mix = u(0.4, 0.9)
    ny, nx = shape[1], shape[2]

    def power(fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
        f2 = fy**2 + fx**2
        band2 = (f2 / peak**2) * np.exp(1.0 - f2 / peak**2)
        return np.exp(-4 * (math.pi * psf_mm) ** 2 * f2) * ((1 - mix) + mix * band2)

    fy = np.fft.fftfreq(ny, spacing[1])[:, None]
    variance = float(power(fy, np.fft.fftfreq(nx, spacing[2])[None, :]).mean())
    gain = np.sqrt(power(fy, np.fft.rfftfreq(nx, spacing[2])[None, :]) / variance) * sigma_hu
    white = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    spectrum = torch.fft.rfft2(white, norm="ortho")
    spectrum *= torch.from_numpy(gain.astype(np.float32))
    return torch.fft.irfft2(spectrum, s=(ny, nx), norm="ortho").numpy()


def _add_shading(image: np.ndarray, rng: np.random.Generator, grid: Grid) -> None:
    """Low-frequency shading (beam hardening, scatter): a smooth in-plane field of a few HU that
    drifts slowly along z, and in 30% of scans faint dark or bright streaks that come and go
    along z."""
    u = rng.uniform
    z, y, x = grid.coords(grid.full)
    z, y, x = z.ravel(), y[0], x[0]  # (nz,), (ny, 1), (1, nx)
    field = Waves.draw(rng, 3, (80, 300), u(1, 6))(0.0, y, x).astype(np.float32)
    drift = 1.0 + u(0, 0.4) * np.sin(2 * math.pi * z / u(100, 300) + u(0, 2 * math.pi))
    streaks = np.zeros_like(field)
    weight = np.zeros_like(z)
    if rng.random() < 0.3:
        for _ in range(rng.integers(1, 4)):
            angle, py, px = u(0, math.pi), u(-60, 60), u(-80, 80)
            dist = np.abs((x - px) * math.sin(angle) - (y - py) * math.cos(angle))
            streaks += (u(3, 12) if rng.random() < 0.3 else -u(3, 12)) * np.exp(-((dist / u(1, 4)) ** 2))
        weight = np.clip(1.0 + 0.8 * np.sin(2 * math.pi * z / u(20, 80) + u(0, 2 * math.pi)), 0.0, None)
    for k in range(image.shape[0]):
        image[k] += field * float(drift[k]) + streaks * float(weight[k])


def add_scanner(canvas: Canvas, rng: np.random.Generator) -> None:
    """Low-frequency shading, then the reconstruction kernel, which blurs edges (sharp kernels:
    crisp edges and fine grain), noise with a mid-frequency power spectrum shaped by the same
    kernel; a calibration offset; integer HU clipped at -1024 like most scanners' output."""
    s = canvas.grid.spacing
    psf_mm = rng.uniform(0.4, 1.0)
    sigma_vox = (rng.uniform(0.0, 0.3), psf_mm / s[1], psf_mm / s[2])
    sigma_hu = math.exp(rng.uniform(math.log(10), math.log(40)))  # low-dose scans are rarer
    _add_shading(canvas.image, rng, canvas.grid)
    image = blur(canvas.image, sigma_vox)
    image += _ct_noise(rng, canvas.image.shape, s, psf_mm, sigma_hu)
    image += rng.uniform(-3, 3)
    canvas.image = np.clip(np.rint(image, out=image), -1024, None, out=image)
