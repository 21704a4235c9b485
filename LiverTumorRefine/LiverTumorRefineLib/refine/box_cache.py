"""Refined boxes kept between a kept worker's jobs, found again by the content of their inputs.

The Slicer module re-runs the seeded job on each click, and the job refines the whole coarse mask.
A click changes one lesion, so the Refiner's other boxes (``boxes.lesion_boxes``: one per group of
nearby lesions) see the same CT crop, the same mask crop and the same parenchyma HU as in the last
job: their refinement is the same computation. ``BoxCache`` keys a box's result by a digest of
those inputs (BLAKE2b of the crops' bytes, with the box, the spacing, the parenchyma HU and the
intensity gate's setting), so a match gives the identical result, and nothing has to name the CT.
A Refiner keeps one only when asked (``Refiner.keep_boxes``; the kept worker asks). A cache belongs
to one Refiner, whose model and options are part of what its results depend on.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Hashable, Sequence

import numpy as np

DEFAULT_BYTES = 256 * 2 ** 20  # the kept results' arrays: the boxes of a few CTs' lesions


def digest(*arrays: np.ndarray) -> str:
    """A digest of the arrays' dtypes, shapes and values."""
    h = hashlib.blake2b(digest_size=20)
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


class BoxCache:
    """Box results by everything they depend on; the least recently used are dropped beyond
    ``max_bytes`` of kept arrays. ``hits`` counts the results given back."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def key(image: np.ndarray, mask: np.ndarray, box: Sequence[slice], spacing_zyx: Sequence[float],
            liver_hu: float | None, gate: bool) -> tuple:
        """The key of the refinement of ``box`` of ``mask`` on ``image`` with this parenchyma HU and gate."""
        return (tuple((int(b.start), int(b.stop)) for b in box), digest(image[tuple(box)], mask[tuple(box)]),
                tuple(float(s) for s in spacing_zyx), None if liver_hu is None else float(liver_hu), bool(gate))

    def get(self, key: Hashable) -> Any:
        """The result kept under ``key``, or None."""
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return found[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Keep ``value`` (``nbytes`` of arrays) under ``key``; one larger than the whole cache is not kept."""
        if nbytes > self.max_bytes:
            return
        if key in self._items:
            self._bytes -= self._items.pop(key)[1]
        self._items[key] = (value, int(nbytes))
        self._bytes += int(nbytes)
        while self._bytes > self.max_bytes:
            self._bytes -= self._items.popitem(last=False)[1][1]

    def clear(self) -> None:
        """Keep nothing."""
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """The kept arrays' bytes."""
        return self._bytes
