"""Per-lesion coarse results kept between the Slicer module's click updates.

A click update re-runs the seeded job for every lesion, but a click changes one lesion (a negative
click, those near it): the others' inputs are the same as in the last job, and so are their
results. The kept worker (``worker --serve``) turns this cache on for a job whose CT it can name:
``for_ct`` takes a name that changes whenever the CT's voxels or geometry do (the Slicer module
sends the volume node's ID, its image data's modification time and its IJK-to-RAS matrix). Without
a name nothing is looked up or kept, so a CT that changed is never matched by its old results.

A lesion's coarse result depends on the CT, its spacing, the method and click model, all its
clicks (among them the negative clicks near enough to change it: ``clicks.near_negatives``) and the
other lesions' first clicks (their cells); the key holds each of these. The click model is named
by ``identity``, not ``id``: an id is given again once its object is freed.
"""
from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Hashable, Iterator, Optional, Sequence

DEFAULT_SIZE = 32  # lesions kept: a few cases' worth, a few megabytes of crops


_NUMBERS: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
_COUNTER = itertools.count(1)


def identity(model: Any) -> int:
    """A number naming ``model`` (a click segmenter) for as long as the process runs:
    never given to another object, even after ``model`` is freed (None: 0)."""
    if model is None:
        return 0
    if model not in _NUMBERS:
        _NUMBERS[model] = next(_COUNTER)
    return _NUMBERS[model]


class LesionCache:
    """Lesion results by everything they depend on, the least recently used dropped beyond ``size``."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self.ct: Optional[str] = None
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    @contextmanager
    def for_ct(self, identity: Optional[str]) -> Iterator[None]:
        """Look up and keep results for the CT named ``identity`` while the block runs (None: neither)."""
        previous, self.ct = self.ct, identity
        try:
            yield
        finally:
            self.ct = previous

    def key(self, shape: Sequence[int], spacing_zyx: Sequence[float], method: str, segmenter: Any,
            lesion: Hashable, other_first_clicks: Sequence[Sequence[float]]) -> Optional[tuple]:
        """The key of a lesion's result on the current CT, or None when no CT is named."""
        if self.ct is None:
            return None
        return (self.ct, tuple(int(n) for n in shape), tuple(float(s) for s in spacing_zyx), method,
                identity(segmenter), lesion, tuple(tuple(float(v) for v in p) for p in other_first_clicks))

    def get(self, key: Optional[tuple]) -> Any:
        """The kept result for ``key``, or None."""
        if key is None or key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Optional[tuple], value: Any) -> None:
        """Keep ``value`` under ``key`` (nothing when ``key`` is None)."""
        if key is None:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


LESIONS = LesionCache()  # the process's cache (a kept worker's), off until a job names its CT
