"""Per-lesion do-no-harm gate: keep a lesion's refinement only where the evidence supports it.

A lesion is a connected component of coarse, refined or proposed voxels. Its *confidence* is the share of
the voxels the network wanted to change there on which the augmented predictions agreed (so the
change was made). A refinement that shrinks a lesion by more than ``1 - min_kept`` of its coarse
volume, scaled down by that confidence, is refused and the lesion keeps its coarse outline: the
coarse segmenter or the reader decided the lesion exists, and a refiner that is unsure must not
take most of it away.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from LiverTumorRefineLib.refine.boxes import Box, component_labels, label_boxes

REFINED, KEPT_COARSE = "refined", "kept coarse"


@dataclass
class LesionDecision:
    """What the gate did with one lesion (voxel counts; slices are array indices of the volume)."""

    lesion: int
    slices: tuple[int, int]  # first and last axial slice (inclusive)
    box: tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 voxel indices in the volume (inclusive)
    coarse_voxels: int
    refined_voxels: int  # after the gate
    proposed_voxels: int  # what the refinement proposed before the lesion-level decision
    confidence: float
    decision: str
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def allowed_shrink(confidence: float, min_kept: float) -> float:
    """The largest fraction of its coarse volume a lesion may lose at ``confidence``."""
    return (1.0 - min_kept) * confidence


def lesion_gate(coarse: np.ndarray, refined: np.ndarray, wanted: np.ndarray, min_kept: float,
                origin: Sequence[int] = (0, 0, 0), probability: np.ndarray | None = None) -> tuple[np.ndarray, list[LesionDecision]]:
    """``refined`` with lesions whose shrinkage the evidence does not support restored to
    ``coarse``, and one decision per lesion. ``wanted``: voxels the ungated refinement would
    change (bool, like the masks); ``origin``: the volume index (z, y, x) of these arrays' first voxel.
    With ``probability`` (the mean prediction per voxel) such a lesion is not restored whole:
    the removed voxels the network was least sure of come back until the shrink is allowed."""
    labels = component_labels(coarse | refined | wanted)  # held-back additions belong to their lesion
    n = int(labels.max())
    if n == 0:
        return refined, []
    flat = labels.ravel()
    count = lambda m: np.bincount(flat[m.ravel()], minlength=n + 1)  # noqa: E731 - voxels per label
    n_coarse, n_refined = count(coarse), count(refined)
    n_wanted, n_made = count(wanted), count(wanted & (refined != coarse))
    boxes = label_boxes(labels, n)
    out, decisions = refined, []
    for k in range(1, n + 1):
        confidence = float(n_made[k] / n_wanted[k]) if n_wanted[k] else 1.0
        decision, reason, final = REFINED, "", int(n_refined[k])
        allowed = allowed_shrink(confidence, min_kept)
        if n_coarse[k] and n_refined[k] < (1 - allowed) * n_coarse[k]:
            reason = f"would shrink by {1 - n_refined[k] / n_coarse[k]:.0%} at confidence {confidence:.2f}"
            if out is refined:
                out = refined.copy()
            inside = labels == k
            if probability is None:
                decision = KEPT_COARSE
                out[inside] = coarse[inside]
            else:
                reason += f"; capped at {allowed:.0%}"
                _restore_least_sure(out, coarse & inside & ~refined, probability,
                                    int(np.ceil((1 - allowed) * n_coarse[k])) - int(n_refined[k]))
            final = int(np.count_nonzero(out[inside]))
        box = tuple(v + int(origin[i // 2]) for i, v in enumerate(boxes[k]))
        decisions.append(LesionDecision(k, box[:2], box, int(n_coarse[k]), final, int(n_refined[k]),  # type: ignore[arg-type]
                                        round(confidence, 4), decision, reason))
    return out, decisions


def _restore_least_sure(out: np.ndarray, removed: np.ndarray, probability: np.ndarray, n: int) -> None:
    """Set back the ``n`` voxels of ``removed`` with the highest ``probability``, in place."""
    index = np.flatnonzero(removed)
    if n <= 0 or not len(index):
        return
    order = np.argsort(-probability.ravel()[index], kind="stable")[:n]
    out.ravel()[index[order]] = True


def box_origin(box: Box) -> tuple[int, int, int]:
    """The volume index of ``box``'s first voxel."""
    return tuple(int(s.start or 0) for s in box)  # type: ignore[return-value]
