"""Shape primitives in local millimetres: ellipsoids, lobulated lesions, smooth random fields."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two distance fields, blending over about ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def rotation(rng: np.random.Generator, max_deg: float = 180.0) -> np.ndarray:
    """Random rotation (3x3 acting on (z, y, x)) by at most ``max_deg`` about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to length 1 (left near zero if it is zero)."""
    return v / max(float(np.linalg.norm(v)), 1e-9)


@dataclass(frozen=True)
class Ellipsoid:
    """A rotated ellipsoid; ``sdf`` is the usual first-order distance approximation."""

    centre: np.ndarray  # (z, y, x) mm
    radii: np.ndarray  # semi-axes along the rotated axes
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        d = (z - self.centre[0], y - self.centre[1], x - self.centre[2])
        s0 = 1e-6
        s1 = 1e-6 / float(self.radii.min()) ** 2
        for i in range(3):
            u = self.rot[0, i] * d[0] + self.rot[1, i] * d[1] + self.rot[2, i] * d[2]
            u = u / self.radii[i]
            s0 = s0 + u * u
            s1 = s1 + (u / self.radii[i]) ** 2
        k0 = np.sqrt(s0)
        return k0 * (k0 - 1.0) / np.sqrt(s1)

    def bounds(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt(((self.rot * self.radii[None, :]) ** 2).sum(axis=1)) + margin
        return self.centre - half, self.centre + half


def cylinder(y: float, x: float, ry: float, rx: float) -> Ellipsoid:
    """An elliptic cylinder along z (an ellipsoid far longer than any grid)."""
    return Ellipsoid(np.array([0.0, y, x]), np.array([1e5, ry, rx]))


@dataclass(frozen=True)
class Waves:
    """A smooth random field: a sum of plane waves (cheap, isotropic, any wavelength band)."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm, (z, y, x)
    phase: np.ndarray
    amp: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator, n: int, wavelength: tuple[float, float], amplitude: float) -> "Waves":
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        k = dirs * (2 * math.pi / rng.uniform(*wavelength, size=(n, 1)))
        amp = rng.uniform(0.5, 1.0, n)
        amp *= amplitude / math.sqrt(0.5 * float((amp**2).sum()))  # rms = amplitude
        return Waves(k, rng.uniform(0, 2 * math.pi, n), amp)

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = 0.0
        for (kz, ky, kx), ph, a in zip(self.k, self.phase, self.amp):
            out = out + a * np.sin(kz * z + ky * y + kx * x + ph)
        return out


@dataclass(frozen=True)
class Lesion:
    """A lobulated lesion: a smooth union of blobs with radial ripples."""

    centre: np.ndarray
    radius: float
    blobs: tuple[Ellipsoid, ...]
    ripples: Waves

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        f = self.blobs[0].sdf(z, y, x)
        for blob in self.blobs[1:]:
            f = smin(f, blob.sdf(z, y, x), 0.3 * self.radius)
        return f + self.ripples(z, y, x)

    def bounds(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        return self.centre - 1.6 * self.radius - margin, self.centre + 1.6 * self.radius + margin
