"""The one registry of coarse sources: their names, how each makes a coarse tumour mask.

Every front end (CLI, Python API, the Slicer worker) names a source the same way and gets its
mask from ``make_coarse``:

- ``mask``: a coarse mask the user already has (nothing to make);
- ``seeds``: one click (RAS point, mm) per lesion;
- ``automatic``: the shipped coarse liver + tumour network (``auto`` is accepted too);
- ``totalsegmentator``: TotalSegmentator's liver tumour task (installed separately).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from LiverTumorRefineLib.device import with_cpu_fallback
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.progress import Progress, report
from LiverTumorRefineLib.volume.geometry import Volume

LIVER, TUMOUR = 1, 2  # the automatic network's labels (LiTS convention)


@dataclass(frozen=True)
class CoarseSource:
    """A coarse source: its name, what the Slicer module calls it, and the segment it adds there."""

    name: str
    title: str
    segment_name: str | None  # None: the source adds no segment (the user's own mask)


SOURCES = (
    CoarseSource("mask", "Existing segment", None),
    CoarseSource("seeds", "Seed points", "Tumour (seeded coarse)"),
    CoarseSource("automatic", "Automatic", "Tumour (automatic coarse)"),
    CoarseSource("totalsegmentator", "TotalSegmentator", "Tumour (TotalSegmentator coarse)"),
)
ALIASES = {"auto": "automatic"}
BY_NAME = {source.name: source for source in SOURCES}


def source_named(name: str) -> CoarseSource:
    """The source called ``name`` (or an alias); RefineError listing the choices otherwise."""
    found = BY_NAME.get(ALIASES.get(str(name), str(name)))
    if found is None:
        raise RefineError(f"Unknown coarse source {name!r}: choose one of {', '.join(BY_NAME)}.")
    return found


def make_coarse(source: str, image: Volume, *, seeds: Sequence[Sequence[float]] | None = None,
                negative_seeds: Sequence[Sequence[float]] | None = None, seed_method: str = "auto",
                device: str = "auto", seg_weights: str | os.PathLike | None = None,
                ct_path: str | os.PathLike | None = None, notes: list[str] | None = None,
                progress: Progress | None = None, guards: list[Callable[[np.ndarray], np.ndarray]] | None = None
                ) -> Volume:
    """The coarse mask ``source`` makes for ``image`` (an LPS-oriented CT volume): 0/1 from seeds
    and TotalSegmentator, the 0/1/2 liver + tumour label map from the automatic network.
    ``seeds``: one item per lesion, a RAS point (mm) or a list of them (see ``from_seeds``);
    ``negative_seeds``: RAS points of leaks to keep out, and ``seed_method`` what grows the lesions
    (see ``clicks.SEED_METHODS``). ``ct_path``: the CT file, if there is one, for
    TotalSegmentator (else the volume is written to a temporary file). CUDA out-of-memory falls
    back to the CPU with a note in ``notes``. A source whose refinement needs more than the mask
    appends to ``guards`` what to apply to the refined mask (bool, on ``image``'s grid): the
    hybrid's guards on each clicked lesion's refined outline."""
    name = source_named(source).name
    notes = notes if notes is not None else []
    if name != "automatic":  # the automatic network reports its own stages from 0
        report(progress, 0.0, "Making the coarse mask")
    if name == "mask":
        raise RefineError("The coarse source 'mask' makes nothing: give the coarse mask itself.")
    if name == "seeds":
        mask = from_seeds(image, seeds, negative_seeds, seed_method, guards)
    elif name == "automatic":
        mask = with_cpu_fallback(lambda dev: automatic_labels(image, seg_weights, dev, progress), device,
                                 "automatic coarse segmentation", notes)
        if not (mask.array == TUMOUR).any():
            found = "a liver but no tumour" if (mask.array == LIVER).any() else "neither liver nor tumour"
            raise RefineError(f"The automatic coarse segmentation found {found} in this CT: place one point inside "
                              "each lesion and use seed points, or give a coarse mask.",
                              cli=f"The automatic coarse segmentation found {found} in this CT: place one seed per "
                                  "lesion (--seeds) or give a coarse mask (--mask).")
    else:
        mask = from_totalsegmentator(image, ct_path, device)
    report(progress, 1.0, "Coarse mask made")
    return mask


def from_seeds(image: Volume, seeds: Sequence[Any] | None,
               negative_seeds: Sequence[Sequence[float]] | None = None, method: str = "auto",
               guards: list[Callable[[np.ndarray], np.ndarray]] | None = None) -> Volume:
    """A 0/1 coarse tumour mask from seeds (RAS mm), by the ray grower (``seeded``), the click model
    or the hybrid of both (``clicks``; these two also take ``negative_seeds``), as ``method``
    says. Each item of ``seeds`` is one lesion: a point, or a list of its points (the first inside
    it, the others corrective clicks; the ray grower grows each point as a lesion of its own).
    With the hybrid, ``guards`` gets ``ClickedLesions.guard`` for the refined mask."""
    from LiverTumorRefineLib.coarse import clicks
    from LiverTumorRefineLib.coarse.points import check_points, ras_to_voxels
    from LiverTumorRefineLib.coarse.seeded import grow_from_seeds

    if seeds is None or len(seeds) == 0:
        raise RefineError("No seed points: place one point inside each lesion, then try again.",
                          cli="The seeded coarse source needs at least one seed inside a lesion (--seeds).")
    lesions = [list(item) if is_point_list(item) else [item] for item in seeds]
    # check_points names a malformed seed as given (an empty lesion too: "[] is not a point")
    flat = ras_to_voxels(check_points([p for lesion in lesions for p in lesion]), image)
    negative = ras_to_voxels(check_points(list(negative_seeds or [])), image)
    chosen = clicks.seed_method(method, negative)
    if chosen == "rays":
        return image.with_array(grow_from_seeds(image.array, flat, image.spacing_zyx).astype(np.uint8))
    starts = np.cumsum([0] + [len(lesion) for lesion in lesions])
    voxels = [flat[a:b] for a, b in zip(starts[:-1], starts[1:])]
    made = clicks.lesions_from_clicks(image.array, image.spacing_zyx, voxels, negative, method=chosen)
    if guards is not None:
        guards.append(lambda refined: made.guard(refined, image.spacing_zyx))
    return image.with_array((made.labels(image.array.shape) > 0).astype(np.uint8))


def is_point_list(item: Any) -> bool:
    """Whether a seeds item is a list of points (one lesion's clicks) rather than one point."""
    return isinstance(item, (list, tuple)) and len(item) > 0 and isinstance(item[0], (list, tuple, np.ndarray))


def automatic_labels(image: Volume, weights: str | os.PathLike | None = None, device: str = "auto",
                     progress: Progress | None = None) -> Volume:
    """The automatic coarse network's 0/1/2 (background, liver, tumour) labels of an LPS CT volume."""
    from LiverTumorRefineLib.coarse.autoseg import Segmenter

    return image.with_array(Segmenter(weights, device=device).segment(image.array, image.spacing_zyx, progress))


def from_totalsegmentator(image: Volume, ct_path: str | os.PathLike | None, device: str) -> Volume:
    """TotalSegmentator's 0/1 liver tumour mask on ``image``'s grid."""
    from LiverTumorRefineLib.coarse import totalseg
    from LiverTumorRefineLib.volume import io

    with tempfile.TemporaryDirectory(prefix="livertumorrefine-ct-") as work:
        if ct_path is None or Path(ct_path).is_dir():  # a DICOM folder or an array: give it a NIfTI file
            ct_path = Path(work) / "ct.nii.gz"
            io.write_volume(image, ct_path, force=True)
        mask = totalseg.tumour_mask(ct_path, image, device)
    if not mask.any():
        raise RefineError("TotalSegmentator found no liver tumour in this CT: place one point inside each lesion and "
                          "use seed points, or give a coarse mask.",
                          cli="TotalSegmentator found no liver tumour in this CT: place one seed per lesion (--seeds) "
                              "or give a coarse mask (--mask).")
    return image.with_array(mask.astype(np.uint8))
