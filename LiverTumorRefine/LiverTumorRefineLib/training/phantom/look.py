"""How a lesion looks: contrast, texture, margin, rim, capsule, halo and necrosis."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from LiverTumorRefineLib.training.phantom.anatomy import Phase
from LiverTumorRefineLib.training.phantom.fields import Field
from LiverTumorRefineLib.training.phantom.shapes import Ellipsoid, Lesion, Waves, rotation, unit


@dataclass(frozen=True)
class Look:
    """How a lesion shows against the liver (HU offsets) and at its margin. What lies inside the
    label's surface (enhancing rim, capsule, necrotic core) is tumour; the halo outside is not."""

    delta: float  # solid tumour minus liver
    texture: Waves  # smooth internal variation, HU
    mottle_hu: float  # coarse-noise mottling of heterogeneous lesions (0: none)
    mottle_mm: float
    soft_mm: float  # blur of the visible margin beyond the voxel size
    margin_mm: float  # infiltrative margin: the visible edge wanders this far about the label's (0: none)
    margin: Waves  # unit rms; displaces the visible edge, and makes the halo's width irregular
    rim_delta: float  # enhancing rim just inside the surface (0: none)
    rim_mm: float
    rim_irregular: float  # relative variation of the rim's thickness
    rim_shape: Waves  # unit rms
    rim_cover: float  # partial rim: present where rim_gaps exceeds this (-inf: complete)
    rim_gaps: Waves  # unit rms
    capsule_hu: float  # thin ring at the surface, HU relative to liver (0: none)
    capsule_mm: float
    halo_hu: float  # oedema / transition zone just outside the tumour, not labelled (0: none)
    halo_mm: float
    necrosis_hu: float | None  # fluid-like core (None: solid)
    core_depth: float  # mm from the surface where the main core begins
    core_outline: Waves  # mm, makes the core's outline irregular
    core_patches: tuple[Ellipsoid, ...]  # further necrotic patches
    core_soft: float
    wall_mm: float  # viable tissue the core always leaves under the surface


def draw_look(rng: np.random.Generator, phase: Phase, lesion: Lesion) -> Look:
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
        texture = Waves.draw(rng, 5, (3, 12), u(5, 12))
        mottle_hu, mottle_mm = u(8, 25), u(2.5, 6)
    else:
        texture = Waves.draw(rng, 4, (4, 15), u(2, 8))
        mottle_hu, mottle_mm = 0.0, 4.0
    margin_kind = rng.random()
    infiltrative = margin_kind < 0.2
    if infiltrative:  # ill-defined: a soft, irregular edge whose mid-point is the label's
        soft_mm, margin_mm = u(1, 3), u(1, max(1.5, min(4.0, 0.3 * radius)))
    else:
        soft_mm, margin_mm = (u(0.5, 2.5) if margin_kind < 0.45 else 0.0), 0.0
    margin = Waves.draw(rng, 6, (3, 12), 1.0)
    rim = kind == 2 or rng.random() < (0.25 if big else 0.1)
    thickness = rng.random()  # thin, medium or thick
    rim_mm = u(0.8, 2) if thickness < 0.35 else u(2, 4) if thickness < 0.75 else u(4, 7)
    rim_mm = min(rim_mm, max(0.8, 0.4 * radius))
    rim_irregular = u(0.2, 0.7) if rng.random() < 0.5 else 0.0
    rim_cover = u(-1.0, 0.5) if rng.random() < 0.3 else -math.inf
    rim_shape = Waves.draw(rng, 5, (max(5.0, 0.5 * radius), max(10.0, 2 * radius)), 1.0)
    rim_gaps = Waves.draw(rng, 4, (max(6.0, 0.6 * radius), max(12.0, 2 * radius)), 1.0)
    capsule = not infiltrative and rng.random() < 0.15
    capsule_hu = (u(10, 40) if rng.random() < 0.6 else -u(10, 30)) * contrast
    capsule_mm = u(1, 2)
    halo = rng.random() < 0.2
    halo_hu, halo_mm = -max(u(8, 25) * contrast, 5.0), u(2, 8)
    necrotic = rng.random() < (0.6 if big else 0.25 if radius > 8 else 0.0)
    core_depth = max(2.0, radius * u(0.15, 0.5))
    core_outline = Waves.draw(rng, 5, (0.5 * radius, 1.5 * radius), radius * u(0.05, 0.15))
    patches = []
    if rng.random() < 0.35:
        for _ in range(rng.integers(1, 4)):
            offset = unit(rng.normal(size=3)) * radius * u(0.2, 0.6)
            patches.append(Ellipsoid(lesion.centre + offset, radius * u(0.12, 0.3, 3), rotation(rng)))
    necrosis_hu = u(5, 30)
    if necrotic and not rim:  # the viable wall must show, or the outline is invisible around a visible core
        delta = math.copysign(max(abs(delta), 15.0), delta)
    core_soft = u(0.2, 1.0)
    wall_mm = max(1.5, rim_mm if rim else 0.0, capsule_mm if capsule else 0.0)
    return Look(delta, texture, mottle_hu, mottle_mm, soft_mm, margin_mm, margin,
                 u(15, 60) * contrast if rim else 0.0, rim_mm, rim_irregular, rim_shape, rim_cover, rim_gaps,
                 capsule_hu if capsule else 0.0, capsule_mm, halo_hu if halo else 0.0, halo_mm,
                 necrosis_hu if necrotic else None, core_depth, core_outline, tuple(patches), core_soft, wall_mm)


def lesion_fields(look: Look, lesion: Lesion) -> tuple[Field, Field, list[str], list[str]]:
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
