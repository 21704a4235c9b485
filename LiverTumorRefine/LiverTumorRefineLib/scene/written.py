"""The coarse mask the module last wrote into a segment, kept to be read back without an export.

A positive corrective click with a new point groups it with the lesions of the coarse segment it
replaces, so the job needs that segment on the CT grid. Slicer's export of one segment
(``nodes.export_segment_mask``) allocates and fills several CT-sized images: 0.3 s on a 512 x 512 x
200 CT, and up to 1.2 s right after a job. The module wrote that segment itself from a mask it held,
so it keeps the mask (as its bounding-box crop) with the segment's stamp (``nodes.segment_stamp``)
and gives it back while the stamp is unchanged; after any edit of the segment, or of the CT, the
segment is exported again.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from LiverTumorRefineLib.scene import nodes
from LiverTumorRefineLib.worker import mask_crop, mask_from_crop


class WrittenMask:
    """One segment's last written mask (see the module docstring)."""

    def __init__(self) -> None:
        self._stamp: Optional[tuple] = None
        self._shape: tuple[int, ...] = ()
        self._start: tuple[int, ...] = ()
        self._crop: Optional[np.ndarray] = None

    def remember(self, segmentationNode, segmentId: str, volumeNode, mask: np.ndarray) -> None:
        """Keep ``mask`` (bool, the CT's grid), just written into ``segmentId``."""
        self._stamp = nodes.segment_stamp(segmentationNode, segmentId, volumeNode)
        crop, self._start = mask_crop(mask)
        self._shape = np.shape(mask)
        self._crop = crop.copy() if self._stamp is not None else None  # not a view of the caller's mask

    def recall(self, segmentationNode, segmentId: str, volumeNode) -> Optional[np.ndarray]:
        """The kept mask on the CT's grid while ``segmentId`` and the CT are as they were when it was
        written, else None (export the segment instead)."""
        if self._crop is None or nodes.segment_stamp(segmentationNode, segmentId, volumeNode) != self._stamp:
            return None
        return mask_from_crop(self._crop, self._start, self._shape)
