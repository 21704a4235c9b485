"""Random anatomy: contrast phase, body habitus, organ shapes and placement of one case."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from LiverTumorRefineLib.training.phantom.shapes import Ellipsoid, Waves, rotation


@dataclass(frozen=True)
class Phase:
    """HU of contrast-dependent tissues for one acquisition phase."""

    liver: float
    portal: float  # portal venous blood
    hepatic: float  # hepatic venous blood
    aorta: float
    kidney_cortex: float
    kidney_medulla: float
    spleen: float
    lesion_contrast: float  # scales every lesion's difference to liver: low in plain/late scans


def _draw_phase(rng: np.random.Generator) -> Phase:
    u = rng.uniform
    kind = rng.choice(4, p=[0.6, 0.15, 0.15, 0.1])
    if kind == 0:  # portal venous, the usual liver protocol
        cortex = u(150, 210)
        return Phase(u(95, 130), u(140, 210), u(130, 200), u(130, 200), cortex, cortex - u(0, 30), u(95, 130), u(0.7, 1.2))
    if kind == 1:  # late arterial: bright aorta and cortex, hepatic veins not yet filled
        return Phase(u(65, 90), u(100, 170), u(45, 75), u(220, 400), u(150, 260), u(60, 110), u(90, 140), u(0.5, 1.0))
    if kind == 2:  # delayed
        cortex = u(120, 170)
        return Phase(u(80, 105), u(95, 130), u(95, 130), u(95, 135), cortex, cortex + u(-10, 60), u(80, 105), u(0.4, 0.9))
    liver = u(63, 75)  # unenhanced: vessels darker than liver, lesions faint
    blood = u(35, 50)
    return Phase(liver, blood, blood, blood + u(-5, 5), u(28, 40), u(25, 35), liver - u(5, 15), u(0.4, 0.8))


@dataclass(frozen=True)
class Anatomy:
    """Body habitus and organ placement of one case (local mm, (z, y, x) vectors)."""

    cavity: np.ndarray  # abdominal cavity semi-axes: x, y anterior, y posterior
    muscle: np.ndarray  # wall muscle (lateral, anterior, posterior) mm
    back: tuple[float, float]  # extra paraspinal depth at the midline, and its half width
    fat: np.ndarray  # subcutaneous fat (lateral, anterior, posterior) mm
    power: float  # superellipse exponent of the outlines (2 = ellipse, larger = boxier)
    outline: Waves  # irregularity of the outlines, mm
    z_top: float  # liver dome and lowest tip (local z)
    z_bot: float
    spine_y: float
    vb_radii: np.ndarray  # vertebral body half width (x) and depth (y)
    phase: Phase
    hu: dict[str, float]
    organs: dict[str, list[Ellipsoid]]
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


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Habitus, organ placement, tissue HU and contrast phase of one random case."""
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
    return Anatomy(cavity, muscle, (u(40, 60), u(45, 65)), fat, u(2.0, 2.6), Waves.draw(rng, 6, (60, 250), u(1, 5)),
                    z_top, z_bot, spine_y, vb_radii, _draw_phase(rng), hu, organs, aorta, ivc, dome)


def _tilted(rng: np.random.Generator, centre: Sequence[float], radii: Sequence[float], max_deg: float) -> Ellipsoid:
    return Ellipsoid(np.asarray(centre, float), np.asarray(radii, float), rotation(rng, max_deg))


def _draw_organs(rng: np.random.Generator, cavity: np.ndarray, z_top: float, z_bot: float) -> dict[str, list[Ellipsoid]]:
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
        "heart": [Ellipsoid(np.array([z_top + u(45, 70), -0.25 * cav_ant, 0.15 * cav_a]), np.array([55.0, 45.0, 55.0]))],
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
