"""Synthetic abdominal CT phantoms with liver and tumour labels, for training and evaluation.

The network must learn liver-tumour boundaries, not this generator, so nearly everything is drawn
at random per case: voxel grid, body habitus, organ shapes and positions, contrast phase, lesion
count, size, shape and appearance, blur and noise.

How it works. Every structure is an implicit function ``F(z, y, x)`` of local millimetre
coordinates, negative inside and close to a signed distance near its surface. Big smooth organs are
evaluated on a coarse grid and upsampled trilinearly (cheap, and a smooth surface loses nothing);
small ones are evaluated in their bounding box. Partial volume comes from the voxel footprint of
``F``: a voxel whose centre has value ``F`` and across which ``F`` changes by ``w`` (sum over the
three axes of ``|dF|``) is ``0.5 - F / w`` inside, clipped to [0, 1]. That is exact for a plane
and widens by itself across thick slices, so a tumour cap filling half a 5 mm slice shows half its
contrast, as on a scanner. Labels are the voxel centres inside (``F < 0``).

Local frame: x towards the patient's left, y posterior, z superior (the LPS axes), origin at the
body centre at mid-liver height. The written image is that frame shifted by a random offset, with
identity direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

BACKGROUND, LIVER, TUMOUR = 0, 1, 2

Box = tuple[slice, slice, slice]
Coords = tuple[np.ndarray, np.ndarray, np.ndarray]  # broadcastable (z,1,1), (1,y,1), (1,1,x) in mm
Field = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

MAX_VOXELS = 9_000_000  # keeps generation near a second per case on one core


@dataclass
class Case:
    """A CT volume (float32 HU) and its label (uint8: 0 background, 1 liver, 2 tumour) on one grid."""

    name: str
    image: Volume
    label: Volume


# --------------------------------------------------------------------------------------------
# Grid, fields and partial volume


@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]
    spacing: np.ndarray  # (z, y, x) mm
    start: np.ndarray  # local mm of the centre of voxel (0, 0, 0)

    @property
    def full(self) -> Box:
        return tuple(slice(0, n) for n in self.shape)  # type: ignore[return-value]

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> Box | None:
        """Voxels whose centres lie in the local-mm box [lo, hi] (clipped), or None if empty."""
        i0 = np.maximum(np.ceil((np.asarray(lo) - self.start) / self.spacing), 0).astype(int)
        i1 = np.minimum(np.floor((np.asarray(hi) - self.start) / self.spacing) + 1, self.shape).astype(int)
        if np.any(i1 <= i0):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(i0, i1))  # type: ignore[return-value]

    def coords(self, box: Box, counts: Sequence[int] | None = None) -> Coords:
        """Local coordinates of the box's voxel centres, or of ``counts`` points per axis evenly
        spanning its first to last voxel centre (the coarse grid that ``_upsample`` expects)."""
        axes = []
        for ax, s in enumerate(box):
            first = self.start[ax] + s.start * self.spacing[ax]
            last = self.start[ax] + (s.stop - 1) * self.spacing[ax]
            n = s.stop - s.start if counts is None else counts[ax]
            shape = [1, 1, 1]
            shape[ax] = n
            axes.append(np.linspace(first, last, n, dtype=np.float32).reshape(shape))
        return axes[0], axes[1], axes[2]

    def index(self, point: np.ndarray) -> tuple[int, int, int] | None:
        """Nearest voxel of a local-mm point, or None outside the grid."""
        idx = np.rint((point - self.start) / self.spacing).astype(int)
        if np.any(idx < 0) or np.any(idx >= self.shape):
            return None
        return int(idx[0]), int(idx[1]), int(idx[2])


def _box_shape(box: Box) -> tuple[int, int, int]:
    return tuple(s.stop - s.start for s in box)  # type: ignore[return-value]


def _sub_box(outer: Box, inner: Box) -> Box:
    """``inner`` (grid indices, contained in ``outer``) relative to ``outer``'s origin."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for o, i in zip(outer, inner))  # type: ignore


def _intersect(a: Box, b: Box) -> Box | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.stop <= s.start for s in out) else out  # type: ignore[return-value]


def _upsample(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear upsampling of (C, z, y, x) or (z, y, x) samples whose corner points coincide with
    the corner voxels of ``shape`` (``_Grid.coords`` with counts)."""
    if coarse.shape[-3:] == tuple(shape):
        return np.ascontiguousarray(coarse, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))
    t = t[None] if t.ndim == 4 else t[None, None]
    out = F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=True)[0]
    return (out if coarse.ndim == 4 else out[0]).numpy()


def _field(grid: _Grid, box: Box, fn: Field, step_mm: float | None = None) -> np.ndarray:
    """Evaluate ``fn`` on the box's voxels; with ``step_mm``, on a grid about that coarse and
    upsample. ``fn`` may return (C, z, y, x) for several fields sharing the coarse grid."""
    shape = _box_shape(box)
    if step_mm is None:
        return np.ascontiguousarray(np.broadcast_to(fn(*grid.coords(box)), shape), dtype=np.float32)
    counts = [min(n, max(2, math.ceil((n - 1) * sp / step_mm) + 1)) for n, sp in zip(shape, grid.spacing)]
    coarse = fn(*grid.coords(box, counts))
    coarse = np.broadcast_to(coarse, coarse.shape[:-3] + tuple(counts))
    return _upsample(coarse, shape)


def _footprint(f: np.ndarray) -> np.ndarray:
    """How much ``f`` changes across each voxel: sum over axes of the mean |difference| to the
    two neighbours. Along the surface normal this is the voxel's projected width."""
    w = np.zeros_like(f)
    for ax in range(3):
        n = f.shape[ax]
        if n < 2:
            continue
        d = np.abs(np.diff(f, axis=ax))
        d *= 0.5
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, n - 1), slice(1, n)
        w[tuple(lo)] += d
        w[tuple(hi)] += d
    return w


def _occupancy(f: np.ndarray, soft_mm: float = 0.0, footprint: np.ndarray | None = None) -> np.ndarray:
    """Fraction of each voxel inside ``f < 0`` (``f`` roughly a distance in mm); ``soft_mm``
    widens the edge beyond the voxel size (blurred lesion margins)."""
    w = _footprint(f) if footprint is None else footprint.copy()
    w += 1e-3 + 2.0 * soft_mm
    out = np.divide(f, w)
    np.subtract(0.5, out, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two distance fields, blending over about ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _rotation(rng: np.random.Generator, max_deg: float = 180.0) -> np.ndarray:
    """Random rotation (3x3 acting on (z, y, x)) by at most ``max_deg`` about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


@dataclass(frozen=True)
class _Ellipsoid:
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


@dataclass(frozen=True)
class _Waves:
    """A smooth random field: a sum of plane waves (cheap, isotropic, any wavelength band)."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm, (z, y, x)
    phase: np.ndarray
    amp: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator, n: int, wavelength: tuple[float, float], amplitude: float) -> "_Waves":
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        k = dirs * (2 * math.pi / rng.uniform(*wavelength, size=(n, 1)))
        amp = rng.uniform(0.5, 1.0, n)
        amp *= amplitude / math.sqrt(0.5 * float((amp**2).sum()))  # rms = amplitude
        return _Waves(k, rng.uniform(0, 2 * math.pi, n), amp)

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = 0.0
        for (kz, ky, kx), ph, a in zip(self.k, self.phase, self.amp):
            out = out + a * np.sin(kz * z + ky * y + kx * x + ph)
        return out


@dataclass
class _Canvas:
    grid: _Grid
    image: np.ndarray
    label: np.ndarray

    def paint(self, box: Box, frac: np.ndarray, value: float | np.ndarray) -> None:
        """Mix ``value`` into the image by ``frac`` (partial volume)."""
        sub = self.image[box]
        sub += frac * (value - sub)

    def paint_tube(self, a: np.ndarray, b: np.ndarray, ra: float, rb: float, value: float,
                   clip: tuple[Box, np.ndarray] | None = None) -> None:
        """Paint a tapered tube from ``a`` to ``b``; ``clip`` (box, occupancy) limits it to an organ."""
        r = max(ra, rb) + 2 * float(self.grid.spacing.max())
        box = self.grid.box(np.minimum(a, b) - r, np.maximum(a, b) + r)
        if clip is not None and box is not None:
            box = _intersect(box, clip[0])
        if box is None:
            return
        frac = _tube_occupancy(self.grid, box, a, b, ra, rb)
        if clip is not None:
            frac *= clip[1][_sub_box(clip[0], box)]
        self.paint(box, frac, value)


def _tube_occupancy(grid: _Grid, box: Box, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Occupancy of a tapered capsule, with the footprint taken from the exact local normal."""
    z, y, x = grid.coords(box)
    d = (z - a[0], y - a[1], x - a[2])
    ab = b - a
    t = np.clip((d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
    q = [d[i] - t * ab[i] for i in range(3)]
    dist = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    s = grid.spacing
    width = (np.abs(q[0]) * s[0] + np.abs(q[1]) * s[1] + np.abs(q[2]) * s[2]) / np.maximum(dist, 1e-3)
    width = np.maximum(width, float(s.min()))
    return np.clip(0.5 - (dist - (ra + t * (rb - ra))) / width, 0.0, 1.0)


def _gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised Gaussian weights at offsets 0..r (the kernel is symmetric)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(radius + 1) / sigma) ** 2)
    return taps / (taps[0] + 2 * taps[1:].sum())


def _blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """(n, n) matrix applying the Gaussian along one axis, edges replicated."""
    taps = _gaussian_taps(sigma)
    offsets = np.arange(-(len(taps) - 1), len(taps))
    rows = np.repeat(np.arange(n), len(offsets))
    cols = np.clip(rows + np.tile(offsets, n), 0, n - 1)
    matrix = np.zeros((n, n), np.float32)
    np.add.at(matrix, (rows, cols), np.tile(taps[np.abs(offsets)], n).astype(np.float32))
    return torch.from_numpy(matrix)


def _blur(a: np.ndarray, sigma_vox: Sequence[float]) -> np.ndarray:
    """Separable Gaussian blur (edges replicated) as banded matrix products, which BLAS does
    several times faster than shifted adds. The result may share memory with ``a``."""
    t = torch.from_numpy(a)
    for ax, sigma in enumerate(sigma_vox):
        n = a.shape[ax]
        if sigma < 0.1 or n < 2:
            continue
        m = _blur_matrix(n, sigma)
        if ax == 0:
            t = (m @ t.reshape(n, -1)).reshape(a.shape)
        elif ax == 1:
            t = m @ t
        else:
            t = t @ m.T
    return t.numpy()


def _blur_gain(sigma_vox: Sequence[float]) -> float:
    """Factor by which ``_blur`` scales the standard deviation of white noise."""
    gain = 1.0
    for sigma in sigma_vox:
        if sigma >= 0.1:
            taps = _gaussian_taps(sigma)
            gain *= math.sqrt(taps[0] ** 2 + 2 * float((taps[1:] ** 2).sum()))
    return gain


# --------------------------------------------------------------------------------------------
# Random anatomy


@dataclass(frozen=True)
class _Phase:
    """HU of contrast-dependent tissues for one acquisition phase."""

    liver: float
    portal: float  # portal venous blood
    hepatic: float  # hepatic venous blood
    aorta: float
    kidney_cortex: float
    kidney_medulla: float
    spleen: float
    lesion_contrast: float  # scales every lesion's difference to liver: low in plain/late scans


def _draw_phase(rng: np.random.Generator) -> _Phase:
    u = rng.uniform
    kind = rng.choice(4, p=[0.6, 0.15, 0.15, 0.1])
    if kind == 0:  # portal venous, the usual liver protocol
        cortex = u(150, 210)
        return _Phase(u(95, 130), u(140, 210), u(130, 200), u(130, 200), cortex, cortex - u(0, 30), u(95, 130), u(0.7, 1.2))
    if kind == 1:  # late arterial: bright aorta and cortex, hepatic veins not yet filled
        return _Phase(u(65, 90), u(100, 170), u(45, 75), u(220, 400), u(150, 260), u(60, 110), u(90, 140), u(0.5, 1.0))
    if kind == 2:  # delayed
        cortex = u(120, 170)
        return _Phase(u(80, 105), u(95, 130), u(95, 130), u(95, 135), cortex, cortex + u(-10, 60), u(80, 105), u(0.4, 0.9))
    liver = u(63, 75)  # unenhanced: vessels darker than liver, lesions faint
    blood = u(35, 50)
    return _Phase(liver, blood, blood, blood + u(-5, 5), u(28, 40), u(25, 35), liver - u(5, 15), u(0.4, 0.8))


@dataclass(frozen=True)
class _Anatomy:
    """Body habitus and organ placement of one case (local mm, (z, y, x) vectors)."""

    cavity: np.ndarray  # abdominal cavity semi-axes: x, y anterior, y posterior
    muscle: np.ndarray  # wall muscle (lateral, anterior, posterior) mm
    back: tuple[float, float]  # extra paraspinal depth at the midline, and its half width
    fat: np.ndarray  # subcutaneous fat (lateral, anterior, posterior) mm
    power: float  # superellipse exponent of the outlines (2 = ellipse, larger = boxier)
    outline: _Waves  # irregularity of the outlines, mm
    z_top: float  # liver dome and lowest tip (local z)
    z_bot: float
    spine_y: float
    vb_radii: np.ndarray  # vertebral body half width (x) and depth (y)
    phase: _Phase
    hu: dict[str, float]
    organs: dict[str, list[_Ellipsoid]]
    aorta: tuple[float, float, float]  # x, y, radius
    ivc: tuple[float, float, float]
    dome: tuple[float, float, float, float]  # apex z, height, x offset and x radius of each dome

    def layer(self, depth: int, x: np.ndarray) -> tuple[float, float, np.ndarray]:
        """Semi-axes (x, y anterior, y posterior) of the cavity (0), muscle (1) or skin (2)
        outline; the back bulges at the midline over the spine and paraspinal muscles."""
        back = self.back[0] * np.exp(-((x / self.back[1]) ** 2))
        wall = self.muscle + (self.fat if depth == 2 else 0.0)
        if depth == 0:
            return float(self.cavity[0]), float(self.cavity[1]), np.full_like(x, self.cavity[2])
        return float(self.cavity[0] + wall[0]), float(self.cavity[1] + wall[1]), self.cavity[2] + wall[2] + back

    @property
    def extent(self) -> tuple[float, float, float]:
        """The body's half width, anterior and posterior depth."""
        a, ant, post = self.layer(2, np.zeros(1))
        return a, ant, float(post[0])

    def dome_z(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Height of the diaphragm: two domes, deepest in the posterior and lateral recesses."""
        apex, height, x_off, x_rad = self.dome
        y_rad = np.where(y > 0, self.cavity[2], 1.4 * self.cavity[1])
        return apex - height * (((np.abs(x) - x_off) / x_rad) ** 2 + (y / y_rad) ** 2)


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    u = rng.uniform
    cavity = np.array([u(100, 140), u(70, 105), u(45, 70)])
    muscle = np.array([u(7, 16), u(7, 14), u(8, 18)])
    fat = np.array([u(6, 40), u(6, 35), u(8, 35)])
    liver_len = u(120, 185)
    z_top, z_bot = 0.45 * liver_len, -0.55 * liver_len
    vb_radii = np.array([u(18, 25), u(14, 19)])
    spine_y = cavity[2] - u(0.2, 0.7) * vb_radii[1]
    hu = {
        "fat": u(-120, -85),
        "visceral_fat": u(-115, -75),
        "muscle": u(35, 60),
        "bone": u(400, 1000),
        "cancellous": u(150, 300),
        "lung": u(-880, -780),
    }
    dome = (z_top + u(3, 10), u(25, 45), 0.45 * cavity[0], 0.55 * cavity[0])
    aorta_r = u(9, 14)
    aorta = (u(5, 20), spine_y - vb_radii[1] - aorta_r - u(2, 6), aorta_r)
    ivc = (-u(15, 32), spine_y - vb_radii[1] - u(8, 20), u(9, 14))
    organs = _draw_organs(rng, cavity, z_top, z_bot)
    return _Anatomy(cavity, muscle, (u(40, 60), u(45, 65)), fat, u(2.0, 2.6), _Waves.draw(rng, 6, (60, 250), u(1, 5)),
                    z_top, z_bot, spine_y, vb_radii, _draw_phase(rng), hu, organs, aorta, ivc, dome)


def _tilted(rng: np.random.Generator, centre: Sequence[float], radii: Sequence[float], max_deg: float) -> _Ellipsoid:
    return _Ellipsoid(np.asarray(centre, float), np.asarray(radii, float), _rotation(rng, max_deg))


def _draw_organs(rng: np.random.Generator, cavity: np.ndarray, z_top: float, z_bot: float) -> dict[str, list[_Ellipsoid]]:
    """Liver lobes and the neighbours the liver must make room for (and be confused with)."""
    u = rng.uniform
    cav_a, cav_ant, cav_post = cavity
    length = z_top - z_bot
    b_mid = 0.5 * (cav_ant + cav_post)
    liver = [
        _tilted(rng, (z_bot + 0.5 * length, 0.5 * (cav_post - cav_ant) + u(-0.1, 0.1) * b_mid, -u(0.4, 0.5) * cav_a),
                (0.5 * length, u(0.8, 1.0) * b_mid, u(0.5, 0.65) * cav_a), 15),  # right lobe
        _tilted(rng, (z_bot + u(0.6, 0.75) * length, -u(0.4, 0.55) * cav_ant, u(0.0, 0.2) * cav_a),
                (u(0.2, 0.3) * length, u(0.25, 0.4) * cav_ant, u(0.35, 0.55) * cav_a), 20),  # left lobe
        _tilted(rng, (z_bot + 0.6 * length, 0.1 * cav_post, -0.15 * cav_a),
                (0.25 * length, 0.3 * b_mid, 0.2 * cav_a), 20),  # caudate / middle
    ]
    kidneys = []
    for side, dz in ((-1, u(15, 45)), (1, u(25, 60))):
        radii = (u(45, 60), u(18, 26), u(22, 30))
        centre = (z_bot + dz, cav_post - radii[1] - u(0, 8), side * u(0.45, 0.6) * cav_a)
        kidneys.append(_tilted(rng, centre, radii, 20))
    organs = {
        "liver": liver,
        "kidney": kidneys,
        "stomach": [_tilted(rng, (z_top - u(30, 60), -u(0.0, 0.3) * cav_ant, u(0.35, 0.55) * cav_a),
                            (u(35, 60), u(25, 45), u(30, 50)), 30)],
        "spleen": [_tilted(rng, (z_top - u(40, 70), u(0.3, 0.5) * cav_post, u(0.55, 0.75) * cav_a),
                           (u(40, 60), u(35, 55), u(15, 25)), 30)],
        "heart": [_Ellipsoid(np.array([z_top + u(45, 70), -0.25 * cav_ant, 0.15 * cav_a]), np.array([55.0, 45.0, 55.0]))],
        "gallbladder": [],
        "bowel": [],
    }
    if rng.random() < 0.8:  # the rest had a cholecystectomy
        organs["gallbladder"].append(_tilted(rng, (z_bot + u(20, 50), -u(0.2, 0.5) * cav_ant, -u(0.15, 0.4) * cav_a),
                                             (u(25, 45), u(12, 20), u(12, 20)), 30))
    for _ in range(rng.integers(8, 21)):  # loops of bowel below and around the liver's lower edge
        centre = (u(z_bot - 40, z_bot + 0.5 * length), u(-0.85 * cav_ant, 0.5 * cav_post), u(-0.8, 0.8) * cav_a)
        organs["bowel"].append(_tilted(rng, centre, rng.uniform(10, 25, 3), 180))
    return organs


# --------------------------------------------------------------------------------------------
# Voxel grid

def _draw_slice_mm(rng: np.random.Generator) -> float:
    """Slice spacing as clinical series have it: 5 mm 30%, 4-5 mm 10%, 2.5 or 3 mm 20%,
    1-2 mm 20%, anything in 1-5 mm 20%."""
    r = rng.random()
    if r < 0.3:
        return 5.0
    if r < 0.4:
        return float(rng.choice((4.0, rng.uniform(4.0, 5.0))))
    if r < 0.6:
        return float(rng.choice((2.5, 3.0)))
    if r < 0.8:
        return float(rng.choice((1.0, 1.25, 1.5, 2.0)))
    return rng.uniform(1.0, 5.0)


def _draw_grid(rng: np.random.Generator, an: _Anatomy, size_xy: int | None, n_slices: int | None,
               spacing: Sequence[float] | None) -> _Grid:
    """Spacing, size and placement. The field of view covers the abdomen when the voxel budget
    allows; otherwise (fine spacing) it is a crop centred towards the liver."""
    if spacing is None:
        s_xy = rng.uniform(0.6, 1.5)
        s_z = _draw_slice_mm(rng)
        spacing = (s_xy, s_xy, s_z)
    s_x, s_y, s_z = (float(s) for s in spacing)
    z_lo = an.z_bot - rng.uniform(0, 25)
    z_hi = an.z_top + rng.uniform(0, 25)
    nz = n_slices if n_slices is not None else max(8, round((z_hi - z_lo) / s_z) + 1)
    if size_xy is None:
        size_xy = int(np.clip(round(rng.uniform(300, 440) / s_x), 192, 320))
        if n_slices is None:  # over budget: crop in-plane first, then shorten the stack
            size_xy = min(size_xy, max(192, math.isqrt(MAX_VOXELS // nz)))
    if n_slices is None:
        nz = min(nz, MAX_VOXELS // (size_xy * size_xy))
    extent = (nz - 1) * s_z
    z0 = rng.uniform(min(z_lo, z_hi - extent), max(z_lo, z_hi - extent))  # short stacks keep part of the liver
    half_width, front, back = an.extent
    y0 = _fov_centre(rng, size_xy * s_y, -front, back, -0.1 * front) - (size_xy - 1) / 2 * s_y
    x0 = _fov_centre(rng, size_xy * s_x, -half_width, half_width, -0.4 * an.cavity[0]) - (size_xy - 1) / 2 * s_x
    return _Grid((int(nz), size_xy, size_xy), np.array([s_z, s_y, s_x]), np.array([z0, y0, x0]))


def _fov_centre(rng: np.random.Generator, fov: float, body_lo: float, body_hi: float, liver: float) -> float:
    """Centre of the field of view along one in-plane axis: the body's middle when it fits,
    else as close to the liver as possible without leaving the body."""
    if fov >= body_hi - body_lo + 20:
        return 0.5 * (body_lo + body_hi) + rng.uniform(-10, 10)
    return float(np.clip(liver + rng.uniform(-20, 20), body_lo - 10 + fov / 2, body_hi + 10 - fov / 2))


# --------------------------------------------------------------------------------------------
# Painting the anatomy, outside in

_COARSE_MM = 4.0  # sampling step of big smooth fields before upsampling


def _body_fields(an: _Anatomy) -> Field:
    """Skin, muscle and cavity surfaces as three offsets of one superellipse cylinder (mm)."""

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        wobble = an.outline(z, y, x)
        out = []
        for depth in (2, 1, 0):
            a, front, back = an.layer(depth, x)
            b = np.where(y < 0, front, back)
            rho = (np.abs(x / a) ** an.power + np.abs(y / b) ** an.power) ** (1.0 / an.power)
            out.append((rho - 1.0) * 0.5 * (a + b) + wobble)
        return np.stack(np.broadcast_arrays(*out))

    return fn


def _paint_body(canvas: _Canvas, rng: np.random.Generator, an: _Anatomy) -> np.ndarray:
    """Air, subcutaneous fat, wall muscle and visceral fat; returns the cavity occupancy."""
    body = _body_fields(an)

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        surfaces = body(z, y, x)
        texture = rng.standard_normal(surfaces.shape[1:]).astype(np.float32)  # mesenteric strands
        return np.concatenate([surfaces, texture[None]])

    skin, muscle, cavity, texture = _field(canvas.grid, canvas.grid.full, fn, _COARSE_MM)
    footprint = _footprint(skin)  # offsets of one shape: one footprint serves all three
    hu = an.hu
    image = canvas.image
    image[...] = -1000.0
    image += _occupancy(skin, footprint=footprint) * (hu["fat"] + 1000.0)
    image += _occupancy(muscle, footprint=footprint) * (hu["muscle"] - hu["fat"])
    inside = _occupancy(cavity, footprint=footprint)
    texture *= rng.uniform(5, 25)
    texture += hu["visceral_fat"] - hu["muscle"]
    image += inside * texture
    return inside


def _paint_organ(canvas: _Canvas, shape: _Ellipsoid, value: float | Callable[[Coords], np.ndarray],
                 clip: np.ndarray | Callable[[Box], np.ndarray] | None = None) -> None:
    """Paint an ellipsoid organ; ``value`` may depend on position; ``clip`` (a full-grid
    occupancy, or a function of the box giving one) keeps it where it may be."""
    box = canvas.grid.box(*shape.bounds(2 * float(canvas.grid.spacing.max())))
    if box is None:
        return
    frac = _occupancy(_field(canvas.grid, box, shape.sdf))
    if clip is not None:
        frac *= clip(box) if callable(clip) else clip[box]
    canvas.paint(box, frac, value if np.isscalar(value) else value(canvas.grid.coords(box)))


def _shrunk(shape: _Ellipsoid, by: float) -> _Ellipsoid:
    return _Ellipsoid(shape.centre, np.maximum(shape.radii - by, 1.0), shape.rot)


def _paint_thorax(canvas: _Canvas, rng: np.random.Generator, an: _Anatomy, cavity: np.ndarray) -> None:
    """Lung bases above the diaphragm (deep posterior recesses beside the liver) and the heart."""
    grid = canvas.grid
    apex, height = an.dome[0], an.dome[1]
    box = grid.box((apex - 2.5 * height - 10, -1e4, -1e4), (1e4, 1e4, 1e4))
    if box is None:
        return
    thickness = rng.uniform(3, 6)

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        dome = an.dome_z(y, x)
        return np.stack(np.broadcast_arrays(dome - z, np.abs(z - dome + thickness / 2) - thickness / 2))

    lung, diaphragm = _field(grid, box, fn, _COARSE_MM)
    canvas.paint(box, _occupancy(lung) * cavity[box], an.hu["lung"])
    canvas.paint(box, _occupancy(diaphragm) * cavity[box], an.hu["muscle"])
    _paint_organ(canvas, an.organs["heart"][0], 0.5 * (an.hu["muscle"] + an.phase.aorta), cavity)


def _cylinder(y: float, x: float, ry: float, rx: float) -> _Ellipsoid:
    """An elliptic cylinder along z (an ellipsoid far longer than any grid)."""
    return _Ellipsoid(np.array([0.0, y, x]), np.array([1e5, ry, rx]))


def _paint_spine(canvas: _Canvas, rng: np.random.Generator, an: _Anatomy) -> None:
    """Vertebral bodies with cortex and discs, canal and arch, paraspinal and psoas muscles."""
    u = rng.uniform
    hu, grid = an.hu, canvas.grid
    rx, ry = an.vb_radii
    canal_r = u(7, 10)
    canal_y = an.spine_y + ry + canal_r + u(1, 3)
    for side in (-1, 1):
        _paint_organ(canvas, _cylinder(canal_y + u(10, 20), side * u(25, 35), u(18, 28), u(18, 28)), hu["muscle"])
        top = np.array([grid.start[0] + grid.shape[0] * grid.spacing[0], an.spine_y - u(0, 5), side * (rx + u(8, 14))])
        bottom = top - np.array([grid.shape[0] * grid.spacing[0], 0, -side * 10])
        canvas.paint_tube(top, bottom, u(4, 8), u(12, 22), hu["muscle"] + u(-5, 5))  # psoas widens caudally
    pitch, disc, disc_hu, cortex = u(27, 36), u(5, 10), u(70, 110), u(1.5, 2.5)
    phase = u(0, pitch)

    def vertebra(c: Coords) -> np.ndarray:
        z, y, x = c
        f = _cylinder(an.spine_y, 0.0, ry, rx).sdf(z, y, x)
        value = hu["cancellous"] + (hu["bone"] - hu["cancellous"]) * (1.0 - _occupancy(f + cortex))
        disc_f = np.abs((z - phase) % pitch - pitch / 2) - disc / 2  # negative inside a disc
        disc_frac = np.clip(0.5 - disc_f / grid.spacing[0], 0.0, 1.0)
        return value + disc_frac * (disc_hu - value)

    _paint_organ(canvas, _cylinder(an.spine_y, 0.0, ry, rx), vertebra)
    _paint_organ(canvas, _cylinder(canal_y, 0.0, canal_r + u(4, 6), canal_r + u(4, 6)), hu["bone"])
    _paint_organ(canvas, _cylinder(canal_y + canal_r + u(12, 18), 0.0, u(12, 18), u(3, 5)), hu["bone"])
    _paint_organ(canvas, _cylinder(canal_y, 0.0, canal_r, canal_r), u(0, 20))


def _paint_ribs(canvas: _Canvas, rng: np.random.Generator, an: _Anatomy) -> None:
    """Rib arcs in the wall muscle, sloping down anteriorly, both sides."""
    grid = canvas.grid
    ax, ay_ant, ay_post = an.cavity + 0.5 * an.muscle
    slope = rng.uniform(0.3, 0.7)
    z_lo, z_hi = grid.start[0], grid.start[0] + grid.shape[0] * grid.spacing[0]
    z = an.z_top + rng.uniform(10, 30)
    while z > z_lo - 40:
        for side in (-1, 1):
            angles = np.linspace(rng.uniform(1.1, 1.4), -rng.uniform(0.2, 1.2), 7)  # posterior to anterior
            ys = np.where(np.sin(angles) > 0, ay_post, ay_ant) * np.sin(angles)
            pts = np.stack([z + slope * ys, ys, side * ax * np.cos(angles)], axis=1)
            if pts[:, 0].max() < z_lo or pts[:, 0].min() > z_hi:
                continue
            radius, value = rng.uniform(3, 4.5), rng.uniform(300, 800)
            for p, q in zip(pts[:-1], pts[1:]):
                canvas.paint_tube(p, q, radius, radius, value)
        z -= rng.uniform(22, 32)


def _paint_vessels_and_organs(canvas: _Canvas, rng: np.random.Generator, an: _Anatomy, cavity: np.ndarray) -> None:
    """Aorta, IVC, kidneys, spleen, stomach and gallbladder: the liver's neighbours."""
    u = rng.uniform
    grid, ph = canvas.grid, an.phase
    z_span = (grid.start[0] - 20, grid.start[0] + grid.shape[0] * grid.spacing[0] + 20)
    for (x, y, r), value in ((an.aorta, ph.aorta), (an.ivc, 0.5 * (ph.portal + ph.hepatic))):
        tilt = rng.normal(0, 6, 2)
        canvas.paint_tube(np.array([z_span[0], y - tilt[0], x - tilt[1]]), np.array([z_span[1], y + tilt[0], x + tilt[1]]),
                          r, r * u(0.9, 1.1), value)
    for kidney in an.organs["kidney"]:
        _paint_organ(canvas, kidney, ph.kidney_cortex, cavity)
        _paint_organ(canvas, _shrunk(kidney, u(4, 8)), ph.kidney_medulla, cavity)
        sinus = kidney.centre + np.array([0, -0.3 * kidney.radii[1], -np.sign(kidney.centre[2]) * 0.6 * kidney.radii[2]])
        _paint_organ(canvas, _Ellipsoid(sinus, kidney.radii * 0.45, kidney.rot), an.hu["visceral_fat"], cavity)
    for spleen in an.organs["spleen"]:
        _paint_organ(canvas, spleen, ph.spleen + u(-10, 10), cavity)
    for stomach in an.organs["stomach"]:
        _paint_hollow(canvas, rng, stomach, an, cavity, _STOMACH)
    for gallbladder in an.organs["gallbladder"]:
        _paint_organ(canvas, gallbladder, an.hu["muscle"] + u(0, 30), cavity)
        _paint_organ(canvas, _shrunk(gallbladder, u(1.5, 3)), u(0, 25), cavity)


_STOMACH = (0.5, 0.4, 0.1, 0.0)  # chances of gas over fluid, fluid only, oral contrast, faeces
_BOWEL = (0.4, 0.3, 0.1, 0.2)


def _blobs(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, size_mm: float) -> np.ndarray:
    """Random blobs about ``size_mm`` across, roughly unit variance: coarse noise upsampled."""
    counts = [min(n, max(2, math.ceil((n - 1) * s / size_mm) + 1)) for n, s in zip(shape, spacing)]
    return _upsample(rng.standard_normal(counts).astype(np.float32), shape)


def _paint_hollow(canvas: _Canvas, rng: np.random.Generator, shape: _Ellipsoid, an: _Anatomy,
                  clip: np.ndarray | Callable[[Box], np.ndarray], contents: Sequence[float]) -> None:
    """Stomach or bowel: an enhancing wall around gas over fluid, fluid, oral contrast or faeces."""
    u = rng.uniform
    _paint_organ(canvas, shape, an.hu["muscle"] + u(0, 40), clip)
    kind = rng.choice(4, p=contents)
    fluid = (u(0, 30), u(0, 30), u(150, 400), u(-250, -50))[kind]
    mottle = 80.0 if kind == 3 else 5.0  # faeces: gas bubbles in a soft matrix
    level = shape.centre[1] + shape.radii.max() * (u(-1.2, 0.2) if kind == 0 else -2.0)  # gas rises anteriorly
    gas = u(-1000, -900)

    def content(c: Coords) -> np.ndarray:
        z, y, x = c
        gas_frac = np.clip(0.5 - (y - level) / canvas.grid.spacing[1], 0.0, 1.0)
        texture = _blobs(rng, (z.shape[0], y.shape[1], x.shape[2]), canvas.grid.spacing, 4.0)
        return fluid + mottle * texture + gas_frac * (gas - fluid)

    _paint_organ(canvas, _shrunk(shape, u(2, 5)), content, clip)


# --------------------------------------------------------------------------------------------
# Liver, its vessels and its lesions


@dataclass
class _Liver:
    box: Box
    sdf: np.ndarray  # signed distance (mm) on the box's voxels
    occupancy: np.ndarray

    def depth(self, grid: _Grid, point: np.ndarray) -> float:
        """Signed distance at the voxel nearest ``point`` (+inf outside the box)."""
        idx = grid.index(point)
        if idx is None or any(not (s.start <= i < s.stop) for i, s in zip(idx, self.box)):
            return math.inf
        return float(self.sdf[tuple(i - s.start for i, s in zip(idx, self.box))])


def _liver_shape(rng: np.random.Generator, an: _Anatomy) -> tuple[Field, tuple[np.ndarray, np.ndarray]]:
    """The liver: smoothly united, warped lobes pressed against the wall and under the diaphragm,
    making room for its neighbours. Returns the field and its bounds."""
    u = rng.uniform
    lobes = an.organs["liver"]
    warp_mm = u(3, 10)
    warp = [_Waves.draw(rng, 4, (60, 160), warp_mm) for _ in range(3)]
    blend, wall_gap, dome_gap = u(10, 25), u(-0.5, 3), u(3, 6)
    lo = np.min([lobe.bounds(3 * warp_mm)[0] for lobe in lobes], axis=0)
    hi = np.max([lobe.bounds(3 * warp_mm)[1] for lobe in lobes], axis=0)
    body = _body_fields(an)
    rx, ry = an.vb_radii
    neighbours = [s for name in ("kidney", "stomach", "spleen", "heart", "gallbladder") for s in an.organs[name]]
    neighbours += [_cylinder(y, x, r, r) for x, y, r in (an.aorta, an.ivc)]
    neighbours.append(_cylinder(an.spine_y, 0.0, ry + 15, rx + 15))
    neighbours = [s for s in neighbours if np.all(s.bounds()[0] < hi) and np.all(s.bounds()[1] > lo)]
    gaps = u(-0.5, 4, len(neighbours))  # a fat plane, or organs touching with no visible border

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        wz, wy, wx = z + warp[0](z, y, x), y + warp[1](z, y, x), x + warp[2](z, y, x)
        f = lobes[0].sdf(wz, wy, wx)
        for lobe in lobes[1:]:
            f = _smin(f, lobe.sdf(wz, wy, wx), blend)
        f = np.maximum(f, body(z, y, x)[2] + wall_gap)
        f = np.maximum(f, z - an.dome_z(y, x) + dome_gap)
        for shape, gap in zip(neighbours, gaps):
            f = np.maximum(f, gap - shape.sdf(z, y, x))
        return f

    return fn, (lo, hi)


def _paint_liver(canvas: _Canvas, rng: np.random.Generator, an: _Anatomy) -> _Liver | None:
    shape, bounds = _liver_shape(rng, an)
    box = canvas.grid.box(*bounds)
    if box is None:
        return None
    texture_hu = rng.uniform(1, 6)
    perfusion = _Waves.draw(rng, 3, (40, 150), rng.uniform(0, 6))  # large-scale enhancement variation
    patchy = _Waves.draw(rng, 4, (15, 50), rng.uniform(1.5, 4.5))  # parenchymal heterogeneity, about +-5-10 HU

    def fn(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        f = shape(z, y, x)
        texture = texture_hu * rng.standard_normal(f.shape) + perfusion(z, y, x) + patchy(z, y, x)
        return np.stack(np.broadcast_arrays(f, texture))

    sdf, texture = _field(canvas.grid, box, fn, 3.0)
    occupancy = _occupancy(sdf)
    texture += an.phase.liver
    canvas.paint(box, occupancy, texture)
    canvas.label[box][sdf < 0] = LIVER
    return _Liver(box, sdf, occupancy)


def _paint_bowel(canvas: _Canvas, rng: np.random.Generator, an: _Anatomy, cavity: np.ndarray, liver: _Liver | None) -> None:
    """Bowel loops in the cavity, packed against the liver but never inside it or other organs."""
    solid = [s for name in ("kidney", "spleen", "stomach", "gallbladder") for s in an.organs[name]]

    def outside_liver(box: Box) -> np.ndarray:
        clip = cavity[box].copy()
        overlap = None if liver is None else _intersect(box, liver.box)
        if overlap is not None:
            clip[_sub_box(box, overlap)] *= 1.0 - liver.occupancy[_sub_box(liver.box, overlap)]
        return clip

    for loop in an.organs["bowel"]:
        inside_liver = liver is not None and liver.depth(canvas.grid, loop.centre) < 0.5 * loop.radii.max()
        if inside_liver or any(float(s.sdf(*loop.centre)) < 5.0 for s in solid):
            continue
        _paint_hollow(canvas, rng, loop, an, outside_liver, _BOWEL)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


Segment = tuple[np.ndarray, np.ndarray, float, float]


def _grow_tree(rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, radius: float,
               depth: Callable[[np.ndarray], float], budget: int) -> list[Segment]:
    """A branching vessel tree grown breadth-first from ``root``, stopping at the liver surface."""
    segments: list[Segment] = []
    queue = [(root, _unit(direction), radius, 0)]
    while queue and len(segments) < budget:
        p, d, r, generation = queue.pop(0)
        length = float(np.clip(r * rng.uniform(3, 6), 6, 30))
        for _try in range(4):  # wander, but steer away from the liver surface
            step = _unit(d + rng.normal(0, 0.3, 3))
            q = p + step * length
            if generation == 0 or depth(q) < -0.5 * r:
                break
        else:
            continue
        d = step
        r_end = r * rng.uniform(0.85, 0.97)
        segments.append((p, q, r, r_end))
        if r_end < 1.2:
            continue
        if rng.random() < 0.45:
            ortho = _unit(np.cross(d, rng.normal(size=3)))
            for sign, scale in ((1, rng.uniform(0.75, 0.9)), (-1, rng.uniform(0.55, 0.8))):
                angle = math.radians(rng.uniform(20, 50))
                queue.append((q, math.cos(angle) * d + sign * math.sin(angle) * ortho, r_end * scale, generation + 1))
        else:
            queue.append((q, d, r_end, generation + 1))
    return segments


def _near_inside(rng: np.random.Generator, target: np.ndarray, depth: Callable[[np.ndarray], float],
                 min_depth: float) -> np.ndarray | None:
    """A point near ``target`` at least ``min_depth`` mm inside the liver, if there is one."""
    return next((p for p in target + rng.normal(0, 20, (300, 3)) if depth(p) < -min_depth), None)


def _paint_liver_vessels(canvas: _Canvas, rng: np.random.Generator, an: _Anatomy, liver: _Liver) -> None:
    """Portal veins from the hilum and hepatic veins draining to the IVC, inside the liver."""
    u = rng.uniform
    grid = canvas.grid

    def depth(point: np.ndarray) -> float:
        return liver.depth(grid, point)

    clip = (liver.box, liver.occupancy)
    ivc_x, ivc_y, _ = an.ivc
    length = an.z_top - an.z_bot
    hilum_near = np.array([an.z_bot + u(0.3, 0.45) * length, ivc_y - u(15, 35), ivc_x + u(-10, 15)])
    ivc_inflow = np.array([an.z_top - u(15, 35), ivc_y, ivc_x])
    right, left, middle = (lobe.centre for lobe in an.organs["liver"])
    for near, outside, value, targets, radius, budget in (
        (hilum_near, np.array([-40.0, 5.0, 25.0]), an.phase.portal, (right, left), u(5, 7.5), 90),
        (ivc_inflow, None, an.phase.hepatic, (right, middle, left), u(4, 6.5), 60),
    ):
        root = _near_inside(rng, near, depth, 8.0)
        if root is None:
            continue
        # the trunk outside the liver: portal vein below the hilum, hepatic veins into the IVC
        start = root + outside if outside is not None else ivc_inflow
        canvas.paint_tube(start, root, radius, radius, value)
        for target in targets:
            for segment in _grow_tree(rng, root, target - root, radius * u(0.7, 0.9), depth, budget):
                canvas.paint_tube(*segment, value, clip=clip)


@dataclass(frozen=True)
class _Lesion:
    """A lobulated lesion: a smooth union of blobs with radial ripples."""

    centre: np.ndarray
    radius: float
    blobs: tuple[_Ellipsoid, ...]
    ripples: _Waves

    def sdf(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        f = self.blobs[0].sdf(z, y, x)
        for blob in self.blobs[1:]:
            f = _smin(f, blob.sdf(z, y, x), 0.3 * self.radius)
        return f + self.ripples(z, y, x)

    def bounds(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        return self.centre - 1.6 * self.radius - margin, self.centre + 1.6 * self.radius + margin


def _draw_lesion(rng: np.random.Generator, centre: np.ndarray, radius: float) -> _Lesion:
    u = rng.uniform
    blobs = [_Ellipsoid(centre, radius * u(0.75, 1.25, 3), _rotation(rng))]
    for _ in range(rng.integers(0, 4)):
        offset = _unit(rng.normal(size=3)) * radius * u(0.4, 0.8)
        blobs.append(_Ellipsoid(centre + offset, radius * u(0.3, 0.6, 3), _rotation(rng)))
    ripples = _Waves.draw(rng, 5, (max(4.0, 1.5 * radius), max(8.0, 4 * radius)), radius * u(0.02, 0.1))
    return _Lesion(centre, radius, tuple(blobs), ripples)


def _place_lesions(rng: np.random.Generator, grid: _Grid, liver: _Liver, n: int) -> list[_Lesion]:
    """Centres inside the liver: mostly deep, a quarter straddling the surface (clipped there)."""
    lesions: list[_Lesion] = []
    liver_size = float((-liver.sdf).max())  # deepest point: half the liver's thickness
    for _ in range(n):
        if rng.random() < 0.3:  # large (often heterogeneous) tumours: 24-60 mm across
            radius = rng.uniform(12, 30)
        else:  # 5-60 mm across, log-uniform: small lesions stay common
            radius = 0.5 * math.exp(rng.uniform(math.log(5), math.log(60)))
        radius = min(radius, 0.6 * liver_size)
        at_edge = rng.random() < 0.25
        for _attempt in range(6):
            centre = _find_centre(rng, grid, liver, radius, at_edge, lesions)
            if centre is not None:
                lesions.append(_draw_lesion(rng, centre, radius))
                break
            radius = max(2.5, 0.75 * radius)
    return lesions


def _find_centre(rng: np.random.Generator, grid: _Grid, liver: _Liver, radius: float, at_edge: bool,
                 others: list[_Lesion]) -> np.ndarray | None:
    """A random liver voxel at the wanted depth, inside the stack, clear of other lesions."""
    lo = np.array([s.start for s in liver.box])
    hi = np.array([s.stop for s in liver.box])
    z_margin = min(radius, 0.5 * (grid.shape[0] - 1) * grid.spacing[0])
    z_lo, z_hi = grid.start[0] + z_margin, grid.start[0] + (grid.shape[0] - 1) * grid.spacing[0] - z_margin
    for idx in rng.integers(lo, hi, size=(400, 3)):
        f = liver.sdf[tuple(idx - lo)]
        if not (-0.5 * radius < f < 0 if at_edge else f < -0.7 * radius):
            continue
        centre = grid.start + idx * grid.spacing
        if not z_lo <= centre[0] <= z_hi:
            continue
        if all(np.linalg.norm(centre - o.centre) > 1.1 * (radius + o.radius) + 2 for o in others):
            return centre
    return None


@dataclass(frozen=True)
class _Look:
    """How a lesion shows against the liver (HU offsets) and at its margin. What lies inside the
    label's surface (enhancing rim, capsule, necrotic core) is tumour; the halo outside is not."""

    delta: float  # solid tumour minus liver
    texture: _Waves  # smooth internal variation, HU
    mottle_hu: float  # coarse-noise mottling of heterogeneous lesions (0: none)
    mottle_mm: float
    soft_mm: float  # blur of the visible margin beyond the voxel size
    margin_mm: float  # infiltrative margin: the visible edge wanders this far about the label's (0: none)
    margin: _Waves  # unit rms; displaces the visible edge, and makes the halo's width irregular
    rim_delta: float  # enhancing rim just inside the surface (0: none)
    rim_mm: float
    rim_irregular: float  # relative variation of the rim's thickness
    rim_shape: _Waves  # unit rms
    rim_cover: float  # partial rim: present where rim_gaps exceeds this (-inf: complete)
    rim_gaps: _Waves  # unit rms
    capsule_hu: float  # thin ring at the surface, HU relative to liver (0: none)
    capsule_mm: float
    halo_hu: float  # oedema / transition zone just outside the tumour, not labelled (0: none)
    halo_mm: float
    necrosis_hu: float | None  # fluid-like core (None: solid)
    core_depth: float  # mm from the surface where the main core begins
    core_outline: _Waves  # mm, makes the core's outline irregular
    core_patches: tuple[_Ellipsoid, ...]  # further necrotic patches
    core_soft: float
    wall_mm: float  # viable tissue the core always leaves under the surface


def _draw_look(rng: np.random.Generator, phase: _Phase, lesion: _Lesion) -> _Look:
    """Appearance probabilities (per lesion; "big" is radius > 12 mm): heterogeneous mottled
    interior 60% big / 20% otherwise; necrotic core 60% big / 25% for 8-12 mm, with extra
    patches in a third of those; enhancing rim 20% rim-enhancing kind + 25% big / 10% others;
    infiltrative margin 20%, soft margin 25%, else sharp; capsule 15% (not infiltrative);
    hypodense halo 20%."""
    u = rng.uniform
    radius = lesion.radius
    big = radius > 12
    contrast = phase.lesion_contrast
    kind = rng.choice(3, p=[0.65, 0.15, 0.2])  # hypodense, hyperdense, rim-enhancing
    delta = (u(10, 50) if kind == 1 else -u(15, 80)) * contrast
    delta = math.copysign(max(abs(delta), 8.0), delta)  # faint, but not invisible under the noise
    heterogeneous = rng.random() < (0.6 if big else 0.2)
    if heterogeneous:
        texture = _Waves.draw(rng, 5, (3, 12), u(5, 12))
        mottle_hu, mottle_mm = u(8, 25), u(2.5, 6)
    else:
        texture = _Waves.draw(rng, 4, (4, 15), u(2, 8))
        mottle_hu, mottle_mm = 0.0, 4.0
    margin_kind = rng.random()
    infiltrative = margin_kind < 0.2
    if infiltrative:  # ill-defined: a soft, irregular edge whose mid-point is the label's
        soft_mm, margin_mm = u(1, 3), u(1, max(1.5, min(4.0, 0.3 * radius)))
    else:
        soft_mm, margin_mm = (u(0.5, 2.5) if margin_kind < 0.45 else 0.0), 0.0
    margin = _Waves.draw(rng, 6, (3, 12), 1.0)
    rim = kind == 2 or rng.random() < (0.25 if big else 0.1)
    thickness = rng.random()  # thin, medium or thick
    rim_mm = u(0.8, 2) if thickness < 0.35 else u(2, 4) if thickness < 0.75 else u(4, 7)
    rim_mm = min(rim_mm, max(0.8, 0.4 * radius))
    rim_irregular = u(0.2, 0.7) if rng.random() < 0.5 else 0.0
    rim_cover = u(-1.0, 0.5) if rng.random() < 0.3 else -math.inf
    rim_shape = _Waves.draw(rng, 5, (max(5.0, 0.5 * radius), max(10.0, 2 * radius)), 1.0)
    rim_gaps = _Waves.draw(rng, 4, (max(6.0, 0.6 * radius), max(12.0, 2 * radius)), 1.0)
    capsule = not infiltrative and rng.random() < 0.15
    capsule_hu = (u(10, 40) if rng.random() < 0.6 else -u(10, 30)) * contrast
    capsule_mm = u(1, 2)
    halo = rng.random() < 0.2
    halo_hu, halo_mm = -max(u(8, 25) * contrast, 5.0), u(2, 8)
    necrotic = rng.random() < (0.6 if big else 0.25 if radius > 8 else 0.0)
    core_depth = max(2.0, radius * u(0.15, 0.5))
    core_outline = _Waves.draw(rng, 5, (0.5 * radius, 1.5 * radius), radius * u(0.05, 0.15))
    patches = []
    if rng.random() < 0.35:
        for _ in range(rng.integers(1, 4)):
            offset = _unit(rng.normal(size=3)) * radius * u(0.2, 0.6)
            patches.append(_Ellipsoid(lesion.centre + offset, radius * u(0.12, 0.3, 3), _rotation(rng)))
    necrosis_hu = u(5, 30)
    if necrotic and not rim:  # the viable wall must show, or the outline is invisible around a visible core
        delta = math.copysign(max(abs(delta), 15.0), delta)
    core_soft = u(0.2, 1.0)
    wall_mm = max(1.5, rim_mm if rim else 0.0, capsule_mm if capsule else 0.0)
    return _Look(delta, texture, mottle_hu, mottle_mm, soft_mm, margin_mm, margin,
                 u(15, 60) * contrast if rim else 0.0, rim_mm, rim_irregular, rim_shape, rim_cover, rim_gaps,
                 capsule_hu if capsule else 0.0, capsule_mm, halo_hu if halo else 0.0, halo_mm,
                 necrosis_hu if necrotic else None, core_depth, core_outline, tuple(patches), core_soft, wall_mm)


def _lesion_fields(look: _Look, lesion: _Lesion) -> tuple[Field, Field, list[str], list[str]]:
    """Smooth shape fields (sampled coarsely) and fine detail fields of one lesion, with names."""
    shape_names = ["f"]
    if look.rim_delta:
        shape_names += ["rim", "cover"] if look.rim_cover > -math.inf else ["rim"]
    if look.necrosis_hu is not None:
        shape_names.append("core")
    detail_names = ["texture"]
    if look.margin_mm or look.halo_hu:
        detail_names.append("margin")

    def shape(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        f = lesion.sdf(z, y, x)
        out = [f]
        if look.rim_delta:
            out.append(look.rim_mm * np.maximum(1.0 + look.rim_irregular * look.rim_shape(z, y, x), 0.3))
            if look.rim_cover > -math.inf:
                out.append(look.rim_gaps(z, y, x))
        if look.necrosis_hu is not None:
            core = f + look.core_depth + look.core_outline(z, y, x)
            for patch in look.core_patches:
                core = np.minimum(core, patch.sdf(z, y, x))
            out.append(np.maximum(core, f + look.wall_mm))
        return np.stack(np.broadcast_arrays(*out))

    def detail(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = [look.texture(z, y, x)]
        if "margin" in detail_names:
            out.append(look.margin(z, y, x))
        return np.stack(np.broadcast_arrays(*out))

    return shape, detail, shape_names, detail_names


_LESION_REACH_MM = 11.0  # >= 1.3 halo_mm and 2 soft_mm + margin_mm


def _paint_lesions(canvas: _Canvas, rng: np.random.Generator, an: _Anatomy, liver: _Liver, n: int) -> None:
    grid = canvas.grid
    for lesion in _place_lesions(rng, grid, liver, n):
        look = _draw_look(rng, an.phase, lesion)
        # the widest halo or soft margin, for every look: the box (hence the sampled shape and
        # the label) does not depend on the appearance
        box = grid.box(*lesion.bounds(_LESION_REACH_MM + 2 * float(grid.spacing.max())))
        box = None if box is None else _intersect(box, liver.box)
        if box is None:
            continue
        shape_fn, detail_fn, shape_names, detail_names = _lesion_fields(look, lesion)
        # big lesions are smooth on the voxel scale: sample their shape coarser and upsample
        step = max(0.8, lesion.radius / 10)
        fields = dict(zip(shape_names, _field(grid, box, shape_fn, step)))
        fields.update(zip(detail_names, _field(grid, box, detail_fn, min(step, 1.5))))
        f = fields["f"]
        in_liver = _sub_box(liver.box, box)
        liver_occ = liver.occupancy[in_liver]
        footprint = _footprint(f)
        if look.halo_hu:  # darker parenchyma fading out over halo_mm, painted over by the tumour
            h = np.clip(1.0 - (f + 0.3 * look.halo_mm * fields["margin"]) / look.halo_mm, 0.0, 1.0)
            h = h * h * (3.0 - 2.0 * h)
            h *= liver_occ
            h *= canvas.label[box] != TUMOUR
            canvas.image[box] += look.halo_hu * h
        visible = f + look.margin_mm * fields["margin"] if look.margin_mm else f
        frac = np.minimum(_occupancy(visible, look.soft_mm, None if look.margin_mm else footprint), liver_occ)
        value = an.phase.liver + look.delta + fields["texture"]
        if look.mottle_hu:
            value += look.mottle_hu * _blobs(rng, f.shape, grid.spacing, look.mottle_mm)
        if look.rim_delta:
            rim = 1.0 - _occupancy(f + fields["rim"], footprint=footprint)
            if "cover" in fields:
                rim *= np.clip(0.5 + 1.5 * (fields["cover"] - look.rim_cover), 0.0, 1.0)
            value += look.rim_delta * rim
        if look.capsule_hu:
            ring = 1.0 - _occupancy(f + look.capsule_mm, footprint=footprint)
            value += (an.phase.liver + look.capsule_hu - value) * ring
        if look.necrosis_hu is not None:
            core = _occupancy(fields["core"], look.core_soft)
            value += (look.necrosis_hu + 0.3 * fields["texture"] - value) * core
        canvas.paint(box, frac, value)
        canvas.label[box][(f < 0) & (liver.sdf[in_liver] < 0)] = TUMOUR


# --------------------------------------------------------------------------------------------
# Scanner and public API


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


def _add_shading(image: np.ndarray, rng: np.random.Generator, grid: _Grid) -> None:
    """Low-frequency shading (beam hardening, scatter): a smooth in-plane field of a few HU that
    drifts slowly along z, and in 30% of scans faint dark or bright streaks that come and go
    along z."""
    u = rng.uniform
    z, y, x = grid.coords(grid.full)
    z, y, x = z.ravel(), y[0], x[0]  # (nz,), (ny, 1), (1, nx)
    field = _Waves.draw(rng, 3, (80, 300), u(1, 6))(0.0, y, x).astype(np.float32)
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


def _add_scanner(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Low-frequency shading, then the reconstruction kernel, which blurs edges (sharp kernels:
    crisp edges and fine grain), noise with a mid-frequency power spectrum shaped by the same
    kernel; a calibration offset; integer HU clipped at -1024 like most scanners' output."""
    s = canvas.grid.spacing
    psf_mm = rng.uniform(0.4, 1.0)
    sigma_vox = (rng.uniform(0.0, 0.3), psf_mm / s[1], psf_mm / s[2])
    sigma_hu = math.exp(rng.uniform(math.log(10), math.log(40)))  # low-dose scans are rarer
    _add_shading(canvas.image, rng, canvas.grid)
    image = _blur(canvas.image, sigma_vox)
    image += _ct_noise(rng, canvas.image.shape, s, psf_mm, sigma_hu)
    image += rng.uniform(-3, 3)
    canvas.image = np.clip(np.rint(image, out=image), -1024, None, out=image)


def make_phantom(seed: int, size_xy: int | None = None, n_slices: int | None = None,
                 spacing: Sequence[float] | None = None, n_tumours: int | None = None) -> Case:
    """A random abdominal CT phantom named ``phantom_<seed>``, the same for the same arguments.

    ``spacing`` is (x, y, z) mm like ``Geometry.spacing``; left out, in-plane spacing is drawn
    from 0.6-1.5 mm and slice spacing from 1-5 mm. ``size_xy`` (in-plane voxels) and
    ``n_slices`` default to a field of view over the abdomen and a stack over the liver, within
    a budget of ``MAX_VOXELS``. ``n_tumours`` (default 1-6) lesions are requested; a very small
    liver section may hold fewer.
    """
    rng = np.random.default_rng(seed)
    an = _draw_anatomy(rng)
    grid = _draw_grid(rng, an, size_xy, n_slices, spacing)
    canvas = _Canvas(grid, np.empty(grid.shape, np.float32), np.zeros(grid.shape, np.uint8))
    cavity = _paint_body(canvas, rng, an)
    _paint_thorax(canvas, rng, an, cavity)
    _paint_spine(canvas, rng, an)
    _paint_ribs(canvas, rng, an)
    _paint_vessels_and_organs(canvas, rng, an, cavity)
    liver = _paint_liver(canvas, rng, an)
    _paint_bowel(canvas, rng, an, cavity, liver)
    if liver is not None:
        _paint_liver_vessels(canvas, rng, an, liver)
        _paint_lesions(canvas, rng, an, liver, int(rng.integers(1, 7)) if n_tumours is None else n_tumours)
    _add_scanner(canvas, rng)
    shift = np.array([rng.uniform(-700, 100), rng.uniform(-40, 40), rng.uniform(-30, 30)])  # table position
    origin = grid.start + shift
    geometry = Geometry(spacing=tuple(float(v) for v in grid.spacing[::-1]),
                        origin=tuple(float(v) for v in origin[::-1]))
    return Case(f"phantom_{seed}", Volume(canvas.image, geometry), Volume(canvas.label, geometry))


def write_case(case: Case, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<name>_ct.nii.gz`` (int16 HU) and ``<name>_label.nii.gz`` (uint8) with their
    geometry, replacing earlier files of that name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{case.name}_ct.nii.gz", out / f"{case.name}_label.nii.gz"
    hu = np.clip(np.rint(case.image.array), -32768, 32767).astype(np.int16)
    io.write_volume(Volume(hu, case.image.geometry), paths[0], force=True)
    io.write_volume(Volume(case.label.array.astype(np.uint8), case.label.geometry), paths[1], force=True)
    return paths


def write_phantoms(out_dir: str | Path, n_cases: int, seed: int) -> list[Path]:
    """Generate and write ``n_cases`` phantoms (case i uses seed ``seed + i``); returns the CT paths."""
    return [write_case(make_phantom(seed + i), out_dir)[0] for i in range(n_cases)]
