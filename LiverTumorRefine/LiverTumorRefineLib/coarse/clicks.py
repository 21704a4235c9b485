"""Lesions from clicks: one lesion's mask from its positive and negative clicks, and corrections.

The ray grower (``seeded``) stops at the strongest edge, which inside a necrotic tumour is the
core. The click network (``clicknet``) learns instead what a lesion looks like around a click.

The hybrid (``hybrid_lesion``, what ``click_lesion`` and the "auto" seed method use) starts from the
ray grower's lesion, adds the network's near the first click, and applies each corrective click near
itself with the network's view.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from LiverTumorRefineLib.coarse.clicknet import (ClickConfig, ClickSegmenter, LesionMask, Voxel, click_grids, in_box,
                                                 keep_clicked, union_box)
from LiverTumorRefineLib.coarse.lesion_cache import LESIONS
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.progress import Progress, report
from LiverTumorRefineLib.refine.result_cache import ResultCache, digest
from LiverTumorRefineLib.refine.boxes import crop_margin, grown_box, lesion_box
from LiverTumorRefineLib.refine.refiner import Refiner


# ------------------------------------------------------------------------------ lesions and corrections
@dataclass(frozen=True)
class LesionClicks:
    """One lesion's clicks (voxel indices z, y, x): the first positive click places its crop."""

    positive: tuple[Voxel, ...]
    negative: tuple[Voxel, ...] = ()

    def with_click(self, voxel: Sequence[float], positive: bool) -> "LesionClicks":
        """These clicks and one more (a corrective click)."""
        point = tuple(float(v) for v in voxel)
        if positive:
            return LesionClicks(self.positive + (point,), self.negative)  # type: ignore[arg-type]
        return LesionClicks(self.positive, self.negative + (point,))  # type: ignore[arg-type]


def nearest_click_cell(box: Sequence[slice], spacing_zyx: Sequence[float], own: Sequence[Voxel],
                       others: Sequence[Voxel]) -> np.ndarray:
    """Voxels of ``box`` no farther (mm) from the nearest of ``own`` clicks than from any of
    ``others``. A lesion's own are all its positive clicks and its others the other lesions' first
    clicks: it never takes a voxel nearer another lesion's first click, so neighbouring lesions
    cannot merge, and a correction still reaches the part of a large lesion that lies nearer a
    small neighbour's first click than its own. (Other lesions' corrections are left out, so one
    lesion's click does not change the others' results.)"""
    axes = np.ix_(*((np.arange(b.start, b.stop) * s).astype(np.float32) for b, s in zip(box, spacing_zyx)))

    def squared(point: Voxel) -> np.ndarray:
        return sum((a - float(p) * s) ** 2 for a, p, s in zip(axes, point, spacing_zyx))  # type: ignore[return-value]

    mine = squared(own[0])
    for point in own[1:]:
        mine = np.minimum(mine, squared(point))
    cell = np.ones(tuple(b.stop - b.start for b in box), dtype=bool)
    for other in others:
        cell &= mine <= squared(other)
    return cell


def segment_lesion(segmenter: ClickSegmenter, image: np.ndarray, spacing_zyx: Sequence[float], lesion: LesionClicks,
                   other_lesions: Sequence[LesionClicks] = (), progress: Progress | None = None) -> LesionMask:
    """One lesion's coarse mask from its clicks, kept off the cells of ``other_lesions``' first clicks."""
    result = segmenter.segment(image, spacing_zyx, lesion.positive, lesion.negative, progress)
    if other_lesions:
        others = [o.positive[0] for o in other_lesions]
        result.mask &= nearest_click_cell(result.box, spacing_zyx, lesion.positive, others)
        local = [v for v in (in_box(p, result.box) for p in lesion.positive) if v is not None]
        result.mask = keep_clicked(result.mask, local, [])
    return result


def negative_reach_mm(cfg: ClickConfig) -> float:
    """How far (mm) from a lesion's click crops a negative click can change its result: beyond it
    the click's maps on the crops are exactly 0 (the ramp ends at ``ramp_mm``; the Gaussian
    underflows to 0 in float32 beyond about 14.4 sigma), and leak removal looks inside the crops only."""
    return max(float(cfg.ramp_mm), 15.0 * float(cfg.sigma_mm))


def near_negatives(lesion: LesionClicks, shape: Sequence[int], spacing_zyx: Sequence[float],
                   cfg: ClickConfig, method: str = "model") -> LesionClicks:
    """``lesion`` without the negative clicks that cannot change it by ``method``: those farther
    than ``negative_reach_mm`` from every point of its click crops, and, for a hybrid lesion of one
    positive click, those outside its crops' box (the grower and the model's one-click view do not
    see negative clicks, and only one in the box is applied). So a negative click recomputes only
    the lesions near it."""
    grids = click_grids(lesion.positive, shape, spacing_zyx, cfg)
    if method == "hybrid" and len(lesion.positive) == 1:
        box = union_box([g.box(shape) for g in grids])
        return LesionClicks(lesion.positive, tuple(n for n in lesion.negative if in_box(n, box) is not None))
    reach = negative_reach_mm(cfg)
    spacing = np.asarray(spacing_zyx, dtype=float)
    corners = [(np.array([g.z0, g.y[0], g.x[0]]), np.array([g.z1 - 1, g.y[-1], g.x[-1]])) for g in grids]

    def near(point: Voxel) -> bool:
        p = np.asarray(point, dtype=float)
        return any(float(np.linalg.norm(np.maximum(np.maximum(lo - p, p - hi), 0.0) * spacing)) <= reach
                   for lo, hi in corners)

    return LesionClicks(lesion.positive, tuple(n for n in lesion.negative if near(n)))


@dataclass
class ClickedLesions:
    """What a job's clicks made: per lesion its clicks, its coarse mask (on its box) and, for a
    corrected hybrid lesion, the click model's mask from all its clicks (on the same box; else None)."""

    lesions: list[LesionClicks]
    parts: list[LesionMask]
    models: list[np.ndarray | None]
    method: str

    def labels(self, shape: Sequence[int]) -> np.ndarray:
        """Label map (int16): 0 nothing, ``i + 1`` lesion ``i``; a voxel goes to the first lesion that claims it."""
        out = np.zeros(tuple(shape), dtype=np.int16)
        for i, part in enumerate(self.parts):
            view = out[part.box]
            view[part.mask & (view == 0)] = i + 1
        return out

    def guard(self, refined: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
        """A refinement of the whole coarse mask (bool, the CT's shape) with, around each hybrid
        lesion, the guards ``click_lesion`` puts on its refined outline (``guard_refined``): so a
        job refining all the lesions at once gives each what a click gives it. Unchanged for the click
        model alone, which has no such guards."""
        if self.method != "hybrid":
            return refined
        out = np.zeros(refined.shape, dtype=bool)
        margin = [int(np.ceil(REFINE_REACH_MM / s)) + 1 for s in spacing_zyx]
        for i, (lesion, part, model) in enumerate(zip(self.lesions, self.parts, self.models)):
            if not part.mask.any():
                continue
            box = grown_box(part.box, margin, refined.shape)
            others = self.lesions[:i] + self.lesions[i + 1:]
            out[box] |= guard_refined(LesionMask(box, refined[box]), part, model, lesion, others, spacing_zyx).mask
        return out


def lesion_results(segmenter: ClickSegmenter, image: np.ndarray, spacing_zyx: Sequence[float],
                   lesions: Sequence[LesionClicks], progress: Progress | None = None,
                   method: str = "model") -> ClickedLesions:
    """The lesions' coarse masks by ``method`` ("model" or "hybrid"), each kept off the others'
    cells. A lesion whose inputs are unchanged since an earlier job on the same CT comes from
    ``lesion_cache.LESIONS`` (negative clicks too far away to change it, ``near_negatives``, are
    not among its inputs)."""
    parts, models = [], []
    for i, lesion in enumerate(lesions):
        report(progress, i / len(lesions), f"Click model: lesion {i + 1} of {len(lesions)}")
        others = [o for j, o in enumerate(lesions) if j != i]
        lesion = near_negatives(lesion, image.shape, spacing_zyx, segmenter.cfg, method)
        key = LESIONS.key(image.shape, spacing_zyx, method, segmenter, lesion, [o.positive[0] for o in others])
        found = LESIONS.get(key)
        if found is None:
            found = (hybrid_lesion(segmenter, image, spacing_zyx, lesion, others) if method == "hybrid"
                     else (segment_lesion(segmenter, image, spacing_zyx, lesion, others), None))
            LESIONS.put(key, found)
        parts.append(found[0])
        models.append(found[1])
    report(progress, 1.0, "Click model")
    return ClickedLesions(list(lesions), parts, models, method)


def lesion_labels(segmenter: ClickSegmenter, image: np.ndarray, spacing_zyx: Sequence[float],
                  lesions: Sequence[LesionClicks], progress: Progress | None = None, method: str = "model") -> np.ndarray:
    """Label map (int16) of the lesions' coarse masks (``lesion_results``, ``ClickedLesions.labels``)."""
    return lesion_results(segmenter, image, spacing_zyx, lesions, progress, method).labels(image.shape)


def group_lesions(positive: Sequence[Sequence[Voxel]], negative: Sequence[Voxel] = ()) -> list[LesionClicks]:
    """Lesions from click lists (voxels): each item of ``positive`` is one lesion's list of its
    positive points (the first places its crop; ``sources.from_seeds`` makes these lists from what
    the user gave); every negative click goes to every lesion (it only matters near one:
    ``near_negatives`` drops it from the lesions it cannot change)."""
    lesions = []
    for points in positive:
        if not len(points):
            raise RefineError("A lesion was given with no positive click: give at least one point inside it.")
        lesions.append(LesionClicks(tuple(tuple(float(v) for v in p) for p in points),  # type: ignore[misc]
                                    tuple(tuple(float(v) for v in p) for p in negative)))  # type: ignore[misc]
    return lesions


def lesions_from_clicks(image: np.ndarray, spacing_zyx: Sequence[float], positive: Sequence[Sequence[Voxel]],
                        negative: Sequence[Voxel] = (), segmenter: ClickSegmenter | None = None,
                        progress: Progress | None = None, method: str = "model") -> ClickedLesions:
    """The lesions clicks make (voxels z, y, x; see ``group_lesions``) with the click model
    (default: the shipped one) alone or in the hybrid (``method``): their coarse mask is
    ``.labels(image.shape) > 0``, and ``.guard`` applies the hybrid's guards to its refinement."""
    segmenter = segmenter if segmenter is not None else shipped_segmenter()
    return lesion_results(segmenter, image, spacing_zyx, group_lesions(positive, negative), progress, method)


# What makes a seeded coarse mask. "rays": the ray grower (``seeded``) alone; "model": this click
# model alone; "hybrid": the ray grower's lesion from each first click, corrected near each further
# positive or negative click with the model (``hybrid_lesion``); "auto": the hybrid, which scored
# best in bench/clicks.py (README).
SEED_METHODS = ("auto", "hybrid", "rays", "model")


def seed_method(method: str, negative: Sequence[Any]) -> str:
    """"hybrid", "rays" or "model" for ``method`` (see ``SEED_METHODS``) and these negative clicks."""
    if method not in SEED_METHODS:
        raise RefineError(f"Unknown seed method {method!r}: choose one of {', '.join(SEED_METHODS)}.")
    if method == "auto":
        return "hybrid"
    if method == "rays" and len(negative):
        raise RefineError("The ray grower cannot use negative clicks: use the hybrid or the click model (seed method "
                          "\"auto\", \"hybrid\" or \"model\") or leave the negative clicks out.",
                          cli="The ray grower (--seed-method rays) cannot use --negative-seeds: use --seed-method "
                              "auto, hybrid or model, or leave out --negative-seeds.")
    return method


_SHIPPED: dict[str, Any] = {}


def shipped_segmenter() -> ClickSegmenter:
    """The shipped click model, loaded once per process (later clicks then cost no loading)."""
    if "segmenter" not in _SHIPPED:
        _SHIPPED["segmenter"] = ClickSegmenter()
    return _SHIPPED["segmenter"]


def shipped_refiner() -> Refiner:
    """The shipped boundary refiner on the CPU, loaded once per process and keeping its refined
    boxes (``Refiner.keep_boxes``), as the Slicer module's kept worker does: later clicks cost no
    loading, and a correction that leaves a lesion's coarse mask as it was is not refined again."""
    if "refiner" not in _SHIPPED:
        _SHIPPED["refiner"] = Refiner(device="cpu")
        _SHIPPED["refiner"].keep_boxes()
    return _SHIPPED["refiner"]


def refine_lesion(refiner: Any, image: np.ndarray, spacing_zyx: Sequence[float], lesion: LesionMask) -> LesionMask:
    """``lesion`` after the boundary refiner (a ``refiner.Refiner``), run on its crop only (grown
    by the refiner's own margin) as the seeded sources refine it (``Refiner.refine_seeded``, with the
    refiner's own intensity gate setting); an empty lesion stays empty."""
    if not lesion.mask.any():
        return lesion
    margin = crop_margin(spacing_zyx, refiner.cfg)
    box = grown_box(lesion.box, margin, image.shape)
    coarse = np.zeros(tuple(b.stop - b.start for b in box), dtype=bool)
    coarse[tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(lesion.box, box))] = lesion.mask
    refined = refiner.refine_seeded(image[box], coarse, spacing_zyx)
    return LesionMask(box, refined.mask)  # type: ignore[arg-type]


def click_lesion(segmenter: ClickSegmenter, refiner: Any, image: np.ndarray, spacing_zyx: Sequence[float],
                 lesion: LesionClicks, other_lesions: Sequence[LesionClicks] = (), method: str = "hybrid"
                 ) -> tuple[LesionMask, LesionMask]:
    """A lesion's coarse and refined masks from all its clicks so far, on its crop only: what a
    click, or a corrective click added with ``LesionClicks.with_click``, re-runs. ``method``:
    "hybrid" (``hybrid_lesion``, the default) or "model" (the click model alone)."""
    if method == "model":
        coarse = segment_lesion(segmenter, image, spacing_zyx, lesion, other_lesions)
        return coarse, refine_lesion(refiner, image, spacing_zyx, coarse)
    if method != "hybrid":
        raise RefineError(f"Unknown click method {method!r}: choose hybrid or model.")
    return hybrid_click_lesion(segmenter, refiner, image, spacing_zyx, lesion, other_lesions)


# ------------------------------------------------------------------- hybrid: ray grower, model corrections
# The ray grower's lesion is the better first click on real CT (bench/clicks.py) and the model is
# the one that reads corrections, so the hybrid starts from the grower and lets each corrective
# click change only its own surroundings, as the model sees them with every click so far.
CORRECTION_RADIUS_MM = 15.0  # a correction changes nothing farther than this from its click
# ... or than this times the radius of the lesion (as a sphere of its volume) when it is clicked: a
# large lesion's missed part is large too. 0: the fixed radius only. This and GROWTH_FLOOR were
# chosen together on tuning phantoms 95000-95029 (README, clicks section).
CORRECTION_SCALE = 1.0
GROWTH_LIMIT = 4.0  # corrections never make a lesion more than this times its first-click volume
# ... nor the first-click volume plus a ball of the correction's reach, whichever is larger (a first
# click that found only a sliver would otherwise cap every correction at a few voxels). False: the
# limit alone.
GROWTH_FLOOR = True
REFINE_REACH_MM = 5.0  # the refiner may move the outline at most this far out of the coarse mask
# A positive correction adds only voxels whose intensity is nearer the lesion's where it was clicked
# than the liver's around it: the model alone happily bridges a few millimetres of liver to a
# neighbour that no click covers.
INTENSITY_GUARD = True
GUARD_SMOOTH_MM = 1.0
LIVER_SHELL_MM = (3.0, 10.0)  # the liver's intensity is taken this far outside the lesion
# On the first click the grower's lesion gives way to the model's when it is more than this many times
# larger (a ray grower that left the lesion); 0: always the grower's. Off: on tuning phantoms
# 95000-95029 (71 lesions) no switch (2, 3, 5, 10, or 3 with the rule below) beat it in mean refined
# Dice over clicks 1-4; the model's one-click lesion is sometimes a sliver of a large lesion the
# grower had right (README, clicks section). 3 had been chosen on 95000-95005 only.
FIRST_CLICK_SWITCH = 0.0
# ... and only when the model's lesion is at least a sphere of this diameter (mm): a model lesion
# smaller than the smallest lesion one clicks is the model failing, not the grower leaving. 0: any.
FIRST_CLICK_MIN_MM = 0.0
GUARD_NEAR_MM = 5.0  # the correction's lesion intensity is the model's lesion this near its click
# Within this many mm of a positive corrective click the model's lesion is added without the intensity
# guard: the user's click is the evidence there. A missed margin often reads nearer the liver than the
# lesion's core, and then the guard refused the clicked voxel itself, so the click added nothing.
# 0: off (the guard everywhere).
CLICK_TRUST_MM = 5.0
# What the first click takes from the click model besides the grower's lesion (with the model's
# one-click view, so later clicks do not change it): "none"; "guarded", the click applied as a
# positive correction is; "union", the model's whole one-click lesion. "guarded" was chosen on
# tuning phantoms 95030-95059 by a rule fixed beforehand that puts click 1 first, with a veto on the
# real validation cases (README, clicks section); "union" leaked on twice as many lesions.
FIRST_CLICK_MODEL = "guarded"
FIRST_CLICK_MODELS = ("none", "guarded", "union")
# How far that addition reaches: ``correction_reach`` of the grower's lesion ("grown"), or of the
# larger of it and the model's one-click lesion ("model"; it passed its rule on tuning phantoms
# 95060-95089, +0.009 at click 1, but merged a LiTS 117 lesion with a neighbour: not shipped).
FIRST_CLICK_REACH = "grown"
FIRST_CLICK_REACHES = ("grown", "model")


def ball(box_shape: Sequence[int], centre: Sequence[int], spacing_zyx: Sequence[float], radius_mm: float) -> np.ndarray:
    """Voxels of a box of ``box_shape`` within ``radius_mm`` of ``centre`` (local voxels)."""
    axes = np.ix_(*((np.arange(n) - c) * s for n, c, s in zip(box_shape, centre, spacing_zyx)))
    return sum(a.astype(np.float32) ** 2 for a in axes) <= radius_mm ** 2


def distance_near(mask: np.ndarray, spacing_zyx: Sequence[float], limit_mm: float) -> np.ndarray:
    """Each voxel's distance (mm) to the nearest voxel of ``mask``: exact wherever it is at most
    ``limit_mm``, and for every voxel of ``mask``'s bounding box grown by ``limit_mm``; inf outside
    that grown box. The transform runs on the grown box only: no voxel outside it lies within
    ``limit_mm`` of the mask, and on a refiner's crop the box is a fraction of the crop (a click's
    two transforms took 70 ms on the whole crop). An empty ``mask`` gets the whole-crop transform."""
    if not mask.any():
        return ndimage.distance_transform_edt(~mask, sampling=spacing_zyx)
    near = lesion_box(mask, [int(np.ceil(limit_mm / s)) + 1 for s in spacing_zyx])
    distance = np.full(mask.shape, np.inf)
    distance[near] = ndimage.distance_transform_edt(~mask[near], sampling=spacing_zyx)
    return distance


def component_at(mask: np.ndarray, voxel: Sequence[int]) -> np.ndarray:
    """The 26-connected component of ``mask`` holding ``voxel`` (empty when it is not in ``mask``)."""
    if not mask[tuple(voxel)]:
        return np.zeros_like(mask)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return labels == labels[tuple(voxel)]


def nearer_than(box_shape: Sequence[int], voxel: Sequence[int], others: Sequence[Sequence[int]],
                spacing_zyx: Sequence[float]) -> np.ndarray:
    """Voxels of a box nearer (mm) to ``voxel`` than to every one of ``others`` (local voxels)."""
    box = tuple(slice(0, n) for n in box_shape)
    return nearest_click_cell(box, spacing_zyx, [tuple(float(v) for v in voxel)],  # type: ignore[list-item]
                              [tuple(float(v) for v in o) for o in others]) if others else np.ones(tuple(box_shape), bool)


def correction_reach(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """How far (mm) a correction of the lesion ``mask`` reaches from its click: ``CORRECTION_RADIUS_MM``,
    or ``CORRECTION_SCALE`` times the lesion's radius as a sphere when that is larger."""
    volume = float(mask.sum()) * float(np.prod(spacing_zyx))
    return max(CORRECTION_RADIUS_MM, CORRECTION_SCALE * (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0))


def leak_at(mask: np.ndarray, model: np.ndarray, negative: Sequence[int], positive: Sequence[Sequence[int]],
            spacing_zyx: Sequence[float], reach_mm: float) -> np.ndarray:
    """What a negative click removes from ``mask``: the part of it connected to the click within
    ``reach_mm``, nearer to the click than to any positive click, and, unless the
    model (``model``, bool) calls the click itself lesion, where the model sees background."""
    region = mask & ball(mask.shape, negative, spacing_zyx, reach_mm)
    region &= nearer_than(mask.shape, negative, positive, spacing_zyx)
    if not model[tuple(negative)]:
        region &= ~model
    region[tuple(negative)] = bool(mask[tuple(negative)])
    return component_at(region, negative)


def missed_at(model: np.ndarray, positive: Sequence[int], spacing_zyx: Sequence[float], reach_mm: float) -> np.ndarray:
    """What a positive corrective click adds: the model's lesion connected to the click within
    ``reach_mm`` of it (the click alone when the model sees no lesion there)."""
    region = component_at(model & ball(model.shape, positive, spacing_zyx, reach_mm), positive)
    region[tuple(positive)] = True
    return region


def within_budget(mask: np.ndarray, added: np.ndarray, click: Sequence[int], spacing_zyx: Sequence[float],
                  budget: int) -> np.ndarray:
    """``added`` cut to its ``budget`` voxels nearest the click when ``mask | added`` would exceed
    ``budget`` voxels in all (``GROWTH_LIMIT``): a correction cannot turn a lesion into a leak."""
    new = added & ~mask
    room = budget - int(mask.sum())
    if int(new.sum()) <= room:
        return added
    if room <= 0:
        return added & mask
    where = np.argwhere(new)
    distance = (((where - np.asarray(click)) * np.asarray(spacing_zyx)) ** 2).sum(axis=1)
    keep = where[np.argsort(distance, kind="stable")[:room]]
    out = added & mask
    out[tuple(keep.T)] = True
    return out


def growth_budget(first: np.ndarray, spacing_zyx: Sequence[float]) -> int:
    """The most voxels corrections may make of a lesion whose first click gave ``first``:
    ``GROWTH_LIMIT`` times its volume (with ``GROWTH_FLOOR``, at least that volume plus a ball of
    the correction's reach)."""
    budget = int(GROWTH_LIMIT * first.sum())
    if GROWTH_FLOOR:
        reach = correction_reach(first, spacing_zyx)
        budget = max(budget, int(first.sum() + 4.0 / 3.0 * np.pi * reach ** 3 / float(np.prod(spacing_zyx))))
    return budget


# The ray grower's lesions by a digest of their crop, the click and the grower's settings: each
# corrective click grows the lesion's first click again (a few tenths of a second), on the same crop.
GROWN = ResultCache(16 * 2 ** 20)


def grown_lesion(crop: np.ndarray, click: Sequence[int], spacing_zyx: Sequence[float]) -> np.ndarray:
    """The ray grower's lesion (bool, read-only) from ``click`` (local voxel) on ``crop`` (HU):
    ``seeded.seed_labels`` with its current settings, or the same result kept from an earlier call."""
    from LiverTumorRefineLib.coarse import seeded

    key = (digest(crop), tuple(int(v) for v in click), tuple(float(s) for s in spacing_zyx), seeded.DEFAULT)
    grown = GROWN.get(key)
    if grown is None:
        grown = seeded.seed_labels(crop, [click], spacing_zyx) > 0
        grown.flags.writeable = False  # shared by every later call with this key
        GROWN.put(key, grown, grown.nbytes)
    return grown


def first_click_lesion(image: np.ndarray, spacing_zyx: Sequence[float], box: Sequence[slice],
                       first_box: Sequence[slice], seed: Voxel, cell: np.ndarray) -> np.ndarray:
    """The ray grower's lesion from the first click (``seed``, CT voxels) on ``box``, kept in
    ``cell`` (on ``box``). The grower sees only the first click's crop ``first_box``, so a
    correction that widens ``box`` does not change it."""
    local = in_box(seed, first_box)
    grown = grown_lesion(image[tuple(first_box)], local, spacing_zyx)  # type: ignore[arg-type]
    first = np.zeros(cell.shape, dtype=bool)
    first[tuple(slice(f.start - b.start, f.stop - b.start) for f, b in zip(first_box, box))] = grown
    return keep_clicked(first & cell, [in_box(seed, box)], [])  # type: ignore[list-item]


def lesion_like(image: np.ndarray, sample: np.ndarray, model: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Voxels of a crop (``image``, HU) whose lightly smoothed intensity is nearer the median over
    ``sample`` (lesion voxels) than that of the liver in a shell around the lesion (outside ``model``
    and ``sample``)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), [GUARD_SMOOTH_MM / s for s in spacing_zyx])
    distance = distance_near(model | sample, spacing_zyx, LIVER_SHELL_MM[1])
    shell = (distance > LIVER_SHELL_MM[0]) & (distance <= LIVER_SHELL_MM[1])
    shell &= (smooth > -40.0) & (smooth < 250.0)  # soft tissue, not air or bone
    if not shell.any() or not sample.any():
        return np.ones(image.shape, dtype=bool)
    core, liver = float(np.median(smooth[sample])), float(np.median(smooth[shell]))
    return np.abs(smooth - core) < np.abs(smooth - liver)


def near_click(model: np.ndarray, click: Sequence[int], spacing_zyx: Sequence[float]) -> np.ndarray:
    """The model's lesion within ``GUARD_NEAR_MM`` of a positive correction's click (the ball
    itself where the model sees none): the intensity that correction may add."""
    near = ball(model.shape, click, spacing_zyx, GUARD_NEAR_MM)
    return (model & near) if (model & near).any() else near


def model_mask(segmenter: ClickSegmenter, image: np.ndarray, spacing_zyx: Sequence[float], box: Sequence[slice],
               clicks: LesionClicks, cell: np.ndarray) -> np.ndarray:
    """The click model's lesion from ``clicks`` on ``box``, kept in ``cell`` and connected to the
    positive clicks."""
    _, prob = segmenter.lesion_probability(image, spacing_zyx, clicks.positive, clicks.negative, box)
    native = prob > segmenter.cfg.threshold
    return keep_clicked(native & cell, [v for v in (in_box(p, box) for p in clicks.positive) if v is not None],
                        [v for v in (in_box(p, box) for p in clicks.negative) if v is not None])


def guarded_addition(image: np.ndarray, spacing_zyx: Sequence[float], model: np.ndarray, click: Sequence[int],
                     reach_mm: float, cell: np.ndarray) -> np.ndarray:
    """What a positive click at ``click`` (local voxel) adds by the model's lesion ``model`` on a crop
    (``image``): the part connected to it within ``reach_mm``, in ``cell``, and with
    ``INTENSITY_GUARD`` only where the crop looks like the lesion near the click."""
    addable = model & lesion_like(image, near_click(model, click, spacing_zyx), model, spacing_zyx) \
        if INTENSITY_GUARD else model
    return missed_at(addable, click, spacing_zyx, reach_mm) & cell


def corrective_addition(image: np.ndarray, spacing_zyx: Sequence[float], model: np.ndarray, click: Sequence[int],
                        reach_mm: float, cell: np.ndarray) -> np.ndarray:
    """What a positive corrective click at ``click`` (local voxel) adds: ``guarded_addition``, and the
    model's lesion connected to it within ``CLICK_TRUST_MM`` without the intensity guard."""
    added = guarded_addition(image, spacing_zyx, model, click, reach_mm, cell)
    if CLICK_TRUST_MM > 0:
        added |= missed_at(model, click, spacing_zyx, CLICK_TRUST_MM) & cell
    return added


def first_click_addition(segmenter: ClickSegmenter, image: np.ndarray, spacing_zyx: Sequence[float],
                         box: Sequence[slice], lesion: LesionClicks, cell: np.ndarray, grown: np.ndarray) -> np.ndarray:
    """What the first click adds to the grower's lesion ``grown`` by ``FIRST_CLICK_MODEL``, from the
    model's view of that click alone (on ``box``)."""
    alone = model_mask(segmenter, image, spacing_zyx, box, LesionClicks(lesion.positive[:1]), cell)
    if FIRST_CLICK_MODEL == "union":
        return alone
    click = in_box(lesion.positive[0], box)
    return guarded_addition(image[tuple(box)], spacing_zyx, alone, click, first_click_reach(grown, alone, spacing_zyx),
                            cell)


def first_click_reach(grown: np.ndarray, model: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """How far (mm) the first click's addition reaches (``FIRST_CLICK_REACH``): as a correction of the
    grower's lesion ``grown`` would, or of the model's one-click lesion ``model`` where that is larger."""
    reach = correction_reach(grown, spacing_zyx)
    return max(reach, correction_reach(model, spacing_zyx)) if FIRST_CLICK_REACH == "model" else reach


def not_tiny(mask: np.ndarray, spacing_zyx: Sequence[float]) -> bool:
    """Whether ``mask`` holds at least a sphere of ``FIRST_CLICK_MIN_MM`` diameter."""
    volume = float(mask.sum()) * float(np.prod(spacing_zyx))
    return volume >= np.pi / 6.0 * FIRST_CLICK_MIN_MM ** 3


def hybrid_lesion(segmenter: ClickSegmenter, image: np.ndarray, spacing_zyx: Sequence[float], lesion: LesionClicks,
                  other_lesions: Sequence[LesionClicks] = ()) -> tuple[LesionMask, np.ndarray | None]:
    """A lesion's coarse mask by the hybrid: the ray grower's lesion from the first click (the
    model's instead when the grower's is over ``FIRST_CLICK_SWITCH`` times larger) with what
    ``first_click_addition`` adds to it (``FIRST_CLICK_MODEL``), then each
    corrective click applied within ``correction_reach`` of itself with the click model's view of
    all the clicks (``missed_at``, ``leak_at``), never past ``growth_budget``, nor on a voxel nearer
    another lesion's first click than to this one's clicks (``nearest_click_cell``). A positive click beyond the
    first click's crop widens the box (``click_grids``). Also returns the model's mask from all
    the clicks on the box (None after one click)."""
    grids = click_grids(lesion.positive, image.shape, spacing_zyx, segmenter.cfg)
    first_box = grids[0].box(image.shape)
    box = union_box([g.box(image.shape) for g in grids])
    cell = nearest_click_cell(box, spacing_zyx, lesion.positive, [o.positive[0] for o in other_lesions])
    positive = [v for v in (in_box(p, box) for p in lesion.positive) if v is not None]
    negative = [v for v in (in_box(p, box) for p in lesion.negative) if v is not None]
    mask = first_click_lesion(image, spacing_zyx, box, first_box, lesion.positive[0], cell)
    if FIRST_CLICK_SWITCH > 0:
        alone = model_mask(segmenter, image, spacing_zyx, box, LesionClicks(lesion.positive[:1]), cell)
        if mask.sum() > FIRST_CLICK_SWITCH * alone.sum() and not_tiny(alone, spacing_zyx):
            mask = alone
    if FIRST_CLICK_MODEL != "none":
        mask |= first_click_addition(segmenter, image, spacing_zyx, box, lesion, cell, mask)
    if len(positive) == 1 and not negative:
        return LesionMask(box, mask), None
    budget = growth_budget(mask, spacing_zyx)
    model = model_mask(segmenter, image, spacing_zyx, box, lesion, cell)
    for p in positive[1:]:
        added = corrective_addition(image[box], spacing_zyx, model, p, correction_reach(mask, spacing_zyx), cell)
        mask |= within_budget(mask, added, p, spacing_zyx, budget)
    for n in negative:
        mask &= ~leak_at(mask, model, n, positive, spacing_zyx, correction_reach(mask, spacing_zyx))
    return LesionMask(box, keep_clicked(mask, positive, negative)), model


def hybrid_click_lesion(segmenter: ClickSegmenter, refiner: Any, image: np.ndarray, spacing_zyx: Sequence[float],
                        lesion: LesionClicks, other_lesions: Sequence[LesionClicks] = ()
                        ) -> tuple[LesionMask, LesionMask]:
    """The hybrid's coarse and refined masks (see ``hybrid_lesion``). The refined outline stays
    within ``REFINE_REACH_MM`` of the coarse mask and off other lesions' cells, holds the positive
    clicks, and the negative clicks' leaks (``leak_at``) are removed from it too."""
    coarse, model = hybrid_lesion(segmenter, image, spacing_zyx, lesion, other_lesions)
    refined = refine_lesion(refiner, image, spacing_zyx, coarse)
    return coarse, guard_refined(refined, coarse, model, lesion, other_lesions, spacing_zyx)


def guard_refined(refined: LesionMask, coarse: LesionMask, model: np.ndarray | None, lesion: LesionClicks,
                  other_lesions: Sequence[LesionClicks], spacing_zyx: Sequence[float]) -> LesionMask:
    """A hybrid lesion's refined outline (``refined``, on a box holding ``coarse``'s) kept within
    ``REFINE_REACH_MM`` of its coarse mask and in its cell, holding its positive clicks, with the
    negative clicks' leaks (``leak_at``, by ``model``: the click model's mask from all the clicks, on
    the coarse box; None without corrections) removed from it too."""
    box = refined.box
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(coarse.box, box))
    on_box = np.zeros(refined.mask.shape, dtype=bool)
    on_box[inner] = coarse.mask
    reach = distance_near(on_box, spacing_zyx, REFINE_REACH_MM) <= REFINE_REACH_MM
    others = [o.positive[0] for o in other_lesions]
    mask = refined.mask & reach & nearest_click_cell(box, spacing_zyx, lesion.positive, others)
    positive = [v for v in (in_box(p, box) for p in lesion.positive) if v is not None]
    negative = [v for v in (in_box(p, box) for p in lesion.negative) if v is not None]
    if model is not None:
        model_box = np.zeros(mask.shape, dtype=bool)
        model_box[inner] = model
        reach = correction_reach(coarse.mask, spacing_zyx)  # the corrected coarse lesion's, for every negative click
        for n in negative:
            mask &= ~leak_at(mask, model_box, n, positive, spacing_zyx, reach)
    return LesionMask(box, keep_clicked(mask, positive, negative))


# --------------------------------------------------------------------------- simulated corrective clicks
def largest_error(truth: np.ndarray, prediction: np.ndarray, spacing_zyx: Sequence[float]
                  ) -> tuple[np.ndarray, tuple[int, int, int], bool] | None:
    """The largest 26-connected region where ``prediction`` differs from ``truth``, its deepest
    point (farthest from the region's edge, in mm) and whether it is missed lesion (True) or a
    leak (False); None when there is no error."""
    error = truth != prediction
    if not error.any():
        return None
    labels, n = ndimage.label(error, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    region = labels == int(sizes.argmax())
    where = np.argwhere(region)
    sub = tuple(slice(max(int(a) - 1, 0), int(b) + 2) for a, b in zip(where.min(axis=0), where.max(axis=0)))
    depth = ndimage.distance_transform_edt(region[sub], sampling=spacing_zyx)
    at = np.unravel_index(int(np.argmax(depth)), depth.shape)
    voxel = tuple(int(a + s.start) for a, s in zip(at, sub))
    return region, voxel, bool(truth[voxel])  # type: ignore[return-value]


def corrective_click(truth: np.ndarray, prediction: np.ndarray, spacing_zyx: Sequence[float]
                     ) -> tuple[tuple[int, int, int], bool] | None:
    """Where a user corrects ``prediction``: the deepest point of the largest error region
    (see ``largest_error``) and its sign (True: positive, a missed part; False: negative, a
    leak); None when there is no error."""
    found = largest_error(truth, prediction, spacing_zyx)
    return None if found is None else (found[1], found[2])
