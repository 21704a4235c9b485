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

import numpy as np

from .boxes import Box, component_labels

REFINED, KEPT_COARSE = "refined", "kept coarse"


@dataclass
class LesionDecision:
    """What the gate did with one lesion (voxel counts; slices are array indices of the volume)."""

    lesion: int
    slices: tuple[int, int]  # first and last axial slice (inclusive)
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
                offset: int = 0, probability: np.ndarray | None = None) -> tuple[np.ndarray, list[LesionDecision]]:
    """``refined`` with lesions whose shrinkage the evidence does not support restored to
    ``coarse``, and one decision per lesion. ``wanted``: voxels the ungated refinement would
    change (bool, like the masks); ``offset``: the first slice of these arrays in the volume.
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
    z_first, z_last = _slice_range(labels, n)
    out, decisions = refined, []
    for k in range(1, n + 1):
        confidence = float(n_made[k] / n_wanted[k]) if n_wanted[k] else 1.0
        decision, reason = REFINED, ""
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
        final = int(np.count_nonzero(out[labels == k])) if reason else int(n_refined[k])
        decisions.append(LesionDecision(k, (int(z_first[k]) + offset, int(z_last[k]) + offset), int(n_coarse[k]),
                                        final, int(n_refined[k]), round(confidence, 4), decision, reason))
    return out, decisions


def _restore_least_sure(out: np.ndarray, removed: np.ndarray, probability: np.ndarray, n: int) -> None:
    """Set back the ``n`` voxels of ``removed`` with the highest ``probability``, in place."""
    index = np.flatnonzero(removed)
    if n <= 0 or not len(index):
        return
    order = np.argsort(-probability.ravel()[index], kind="stable")[:n]
    out.ravel()[index[order]] = True


def _slice_range(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last slice index of each label 1..n."""
    first = np.full(n + 1, labels.shape[0], dtype=np.int64)
    last = np.full(n + 1, -1, dtype=np.int64)
    for z in range(labels.shape[0]):
        present = np.unique(labels[z])
        first[present] = np.minimum(first[present], z)
        last[present] = z
    return first, last


def box_offset(box: Box) -> int:
    """The first slice of ``box`` in the volume."""
    return int(box[0].start or 0)
