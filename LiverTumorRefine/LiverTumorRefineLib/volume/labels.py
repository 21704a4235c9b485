"""Tumour masks and label maps: which label is the tumour, and putting a refined mask back
in the original map's form."""
from __future__ import annotations

import numpy as np

from LiverTumorRefineLib.errors import RefineError

LITS_TUMOUR = 2
LITS_LIVER = 1
# A mask with more distinct values than this is an image (a CT has thousands), not a label map.
MAX_LABELS = 256
SMALL_SPAN = 4  # distinct_values tests each value between the minimum and maximum up to this span


def distinct_values(labels: np.ndarray) -> set:
    """The values present in ``labels``. A mask whose values span a few integers (0/1, 0/255,
    0/1/2) is read from its minimum, maximum and a test per value between them, a tenth of the
    time of sorting 30 M voxels; anything else is sorted."""
    if labels.size and (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
        low, high = labels.min(), labels.max()
        if int(high) - int(low) <= SMALL_SPAN:
            middle = [v for v in range(int(low) + 1, int(high)) if (labels == v).any()]
            return {low.item(), high.item(), *middle}
    return set(np.unique(labels).tolist())


def select_label(labels: np.ndarray, label: int | None = None) -> tuple[np.ndarray, int | None]:
    """Binary tumour mask from a mask or label map, and the label used (None = a bool mask).

    Default: label 2 in a LiTS-style 0/1/2 map, the one non-zero value of a binary mask (0/1,
    0/255, ...); a map with several labels and no LiTS tumour label is refused rather than
    guessed, because flattening it would lose the other labels.
    """
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise RefineError("The mask has non-integer values: give a binary mask or a label map "
                              "(threshold probability maps first).")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label <= 0):
        raise RefineError(f"Tumour label {label!r} is not valid: label 0 is the background, so the tumour label is a "
                          "positive whole number (2 in a LiTS map, 1 in a binary mask).")
    values = distinct_values(labels)
    if len(values) > MAX_LABELS:
        raise RefineError(f"The mask has {len(values)} different values: this looks like an image (a CT?), not a "
                          "label map. Give the coarse tumour mask or label map instead.")
    present = ", ".join(str(int(v)) for v in sorted(values))
    if label is not None:
        if label not in values:
            raise RefineError(f"Label {label} is not in the mask (labels present: {present}): choose one with --label.")
        return labels == label, label
    if labels.dtype == bool:
        return labels.copy(), None
    if LITS_TUMOUR in values and values <= {0, 1, 2}:
        return labels == LITS_TUMOUR, LITS_TUMOUR
    foreground = values - {0}
    if len(foreground) > 1:
        raise RefineError(f"The mask holds several labels ({present}) and none is the LiTS tumour label 2: "
                          "choose the tumour label with --label.")
    if not foreground:
        return np.zeros(labels.shape, dtype=bool), None
    value = int(next(iter(foreground)))
    return labels == value, value


def merge_label(labels: np.ndarray, refined: np.ndarray, label: int | None) -> np.ndarray:
    """Put ``refined`` back into the original mask's form: a binary mask keeps its foreground
    value; in a label map only the chosen label changes (voxels leaving a LiTS tumour become
    liver, others 0). ``label`` None: a bool mask, returned as uint8 0/1."""
    if label is None:
        return refined.astype(np.uint8)
    values = distinct_values(labels)
    if values <= {0, label}:  # a binary mask: the refined mask in its value, without a copy of the input
        out = refined.astype(labels.dtype)
        out *= label
        return out
    fill = LITS_LIVER if label == LITS_TUMOUR and values <= {0, 1, 2} else 0
    out = labels.copy()
    left = labels == label
    np.greater(left, refined, out=left)  # was the label, no longer is; in place: one mask-sized temporary
    out[left] = fill
    out[refined] = label
    return out


def prediction_mask(labels: np.ndarray, label: int | None) -> np.ndarray:
    """The predicted tumour for evaluation: the truth's label when present, else the foreground
    of a binary mask (one non-zero value: a 0/1 prediction counts as tumour, even against a
    LiTS truth), else empty (a label map without tumour is a valid, if poor, answer)."""
    values = set(np.unique(labels).tolist())
    if label is not None and label in values:
        return labels == label
    if len(values - {0}) == 1:
        return labels != 0
    return np.zeros(labels.shape, dtype=bool)
