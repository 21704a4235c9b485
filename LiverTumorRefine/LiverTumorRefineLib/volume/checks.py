"""Plausibility checks on the inputs of a refinement: is the CT in Hounsfield units, is the mask a
tumour outline. Cheap on huge volumes (they look at a strided subsample or stop early)."""
from __future__ import annotations

import numpy as np

from LiverTumorRefineLib.errors import RefineError

HU_HINT = ("refinement expects CT in Hounsfield units (air -1000, liver about 60) and may give wrong "
           "results: check that this is the CT and that its rescale slope/intercept were applied.")


def subsample(array: np.ndarray, max_samples: int = 1_000_000) -> np.ndarray:
    """A strided view of ``array`` with at most about ``max_samples`` voxels (no copy)."""
    step = max(1, int(np.ceil((array.size / max_samples) ** (1 / max(array.ndim, 1)))))
    return array[(slice(None, None, step),) * array.ndim]


def hu_plausibility(image_array: np.ndarray) -> str | None:
    """A warning when the intensities do not look like CT in HU, else None.

    Flags normalised or constant images (range under 100), volumes where most voxels exceed
    500 (rescale intercept missing, another modality), 8-bit images (integers in 0-255) and
    volumes reaching above 255 without a single negative value (no air or fat: MR, or raw CT
    values). A tight crop of liver in HU has no air and may have no negative voxel either (the
    test cases of ``conftest.blob_case`` are such crops), so those alone are not flagged.
    """
    sample = np.asarray(subsample(np.asarray(image_array)))
    if np.issubdtype(sample.dtype, np.floating):
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return f"The CT has no finite intensities (all NaN or infinite): {HU_HINT}"
    lo, hi, median = float(sample.min()), float(sample.max()), float(np.median(sample))
    eight_bit = (np.issubdtype(sample.dtype, np.integer) and sample.dtype.itemsize == 1) or (
        lo >= 0 and hi <= 255 and bool(np.all(sample == np.round(sample))))
    if hi - lo < 100:
        problem = f"its intensities only span {lo:g} to {hi:g}, as in a normalised (0-1, z-score) or constant image"
    elif median > 500:
        problem = f"most voxels are above 500 (median {median:g}), as in a CT without its rescale intercept or an MR"
    elif eight_bit:
        problem = f"its intensities are integers in 0-255 ({lo:g} to {hi:g}), as in an 8-bit image (PNG/JPEG or windowed export)"
    elif lo >= 0 and hi > 255:
        problem = f"no voxel is below 0 ({lo:g} to {hi:g}; no air or fat), as in an MR or a CT without its rescale intercept"
    else:
        return None
    return f"The CT does not look like Hounsfield units: {problem}; {HU_HINT}"


def check_not_whole_volume(mask: np.ndarray) -> None:
    """Refuse a mask whose tumour is every voxel (one non-zero value everywhere, or all True):
    that is a wrong file or label choice, not a tumour outline."""
    mask = np.asarray(mask)
    if mask.size == 0:
        return
    first = mask.flat[0]
    if first == 0 or (subsample(mask) != first).any():  # the usual case, decided on a subsample
        return
    if not (mask != first).any():
        value = "" if mask.dtype == bool else f" (value {first.item():g} everywhere)"
        message = f"The mask marks every voxel of the CT as tumour{value}: that is not a tumour outline. "
        raise RefineError(message + "Check the mask file and the tumour label.",
                          cli=message + "Check the mask file and the tumour label (--label).")
