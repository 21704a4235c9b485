"""Tumour masks and label maps: which label is the tumour, and putting a refined mask back
in the original map's form."""
from __future__ import annotations

import numpy as np

from LiverTumorRefineLib.errors import RefineError

LITS_TUMOUR = 2
LITS_LIVER = 1
# Segment and structure names that say tumour. Radiotherapy names put the target type first (AAPM
# TG-263: "GTV", "GTV_Liver", "GTVp"), while "Liver-GTV" is the liver without it: a gross tumour
# volume is recognised by its name's start.
TUMOUR_WORDS = ("tumor", "tumour", "lesion")
TUMOUR_PREFIXES = ("gtv",)
# A mask with more distinct values than this is an image (a CT has thousands), not a label map.
MAX_LABELS = 256
SMALL_SPAN = 4  # distinct_values tests each value between the minimum and maximum up to this span


def names_a_tumour(name: str) -> bool:
    """True when a segment or structure name says tumour ("Tumor", "lesion 2", "GTV_Liver")."""
    text = name.strip().lower()
    return any(word in text for word in TUMOUR_WORDS) or text.startswith(TUMOUR_PREFIXES)


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


def select_label(labels: np.ndarray, label: int | None = None, *, copy: bool = True) -> tuple[np.ndarray, int | None]:
    """Binary tumour mask from a mask or label map, and the label used (None = a bool mask).

    Default: label 2 in a LiTS-style 0/1/2 map, the one non-zero value of a binary mask (0/1,
    0/255, ...); a map with several labels and no LiTS tumour label is refused rather than
    guessed, because flattening it would lose the other labels. ``copy=False``: where the
    mask's bytes already are ``labels``' (a bool mask, or label 1 of a one-byte 0/1 mask), it
    is a read-only view of them instead of a copy (a volume-sized saving at the peak).
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
        return _mask_of(labels, label, values, copy), label
    if labels.dtype == bool:
        return (labels.copy() if copy else _read_only(labels)), None
    if LITS_TUMOUR in values and values <= {0, 1, 2}:
        return labels == LITS_TUMOUR, LITS_TUMOUR
    foreground = values - {0}
    if len(foreground) > 1:
        raise RefineError(f"The mask holds several labels ({present}) and none is the LiTS tumour label 2: "
                          "choose the tumour label with --label.")
    if not foreground:
        return np.zeros(labels.shape, dtype=bool), None
    value = int(next(iter(foreground)))
    return _mask_of(labels, value, values, copy), value


def _mask_of(labels: np.ndarray, value: int, values: set, copy: bool) -> np.ndarray:
    """``labels == value``, or with ``copy`` False a read-only bool view of ``labels`` where
    that is the same bytes (one-byte integers holding only 0 and ``value`` 1)."""
    if not copy and value == 1 and values <= {0, 1} and labels.dtype.itemsize == 1 and labels.dtype.kind in "iu":
        return _read_only(labels.view(bool))
    return labels == value


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def merge_label(labels: np.ndarray, refined: np.ndarray, label: int | None, *, reuse: bool = False) -> np.ndarray:
    """Put ``refined`` back into the original mask's form: a binary mask keeps its foreground
    value; in a label map only the chosen label changes (voxels leaving a LiTS tumour become
    liver, others 0). ``label`` None: a bool mask, returned as uint8 0/1. ``reuse``: the result
    may be ``refined``'s own memory where it already holds the answer's bytes (uint8 0/1), so the
    caller must not use ``refined`` afterwards."""
    if label is None:
        return refined.view(np.uint8) if reuse else refined.astype(np.uint8)
    values = distinct_values(labels)
    if values <= {0, label}:  # a binary mask: the refined mask in its value, without a copy of the input
        if reuse and label == 1 and labels.dtype == np.uint8:
            return refined.view(np.uint8)
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
