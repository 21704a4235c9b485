"""Results kept by the content of their inputs, within a byte bound.

A result is kept under a key that holds a digest of its inputs' arrays (``digest``: BLAKE2b of
their dtype, shape and bytes) and everything else it depends on, so a match is the same computation
and gives the identical result, and nothing has to name the CT. Three users:

- the kept worker's Refiner keeps its refined boxes (``Refiner.keep_boxes``): a click changes one
  lesion, and the other boxes see the same crops and parenchyma HU as in the last job; with a
  batch-invariant runtime it keeps each patch's prediction too, for the box the click changed;
- the click model keeps its outputs (``ClickSegmenter.seen``), and the ray grower its first-click
  lesions (``clicks.GROWN``): a correction asks again for what click 1 computed.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Hashable

import numpy as np

DEFAULT_BYTES = 256 * 2 ** 20  # a Refiner's kept boxes (keep_boxes): those of a few CTs' lesions
PATCH_BYTES = 64 * 2 ** 20  # ... and its kept patch predictions: about 3500 patches in 2 orientations


def digest(*arrays: np.ndarray) -> str:
    """A digest of the arrays' dtypes, shapes and values."""
    h = hashlib.blake2b(digest_size=20)
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


class ResultCache:
    """Results by everything they depend on; the least recently used are dropped beyond
    ``max_bytes`` of kept arrays. ``hits`` counts the results given back."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

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
