"""The CT a worker job reads, written once per version of the CT and shared by the jobs that use it.

Each job used to copy the CT out of the scene and write it into its own folder: on a 512 x 512 x 200
CT that is 100 MB before every corrective click, 0.3-0.6 s of the main thread on a 2-core machine.
A CT changes far less often than its segments, so ``CtFiles`` keeps one file per version
(``nodes.ct_identity``: the node, its voxels' modification time and its grid) in a temporary folder
of its own, and the job file names it.
"""
from __future__ import annotations

import tempfile
from collections import OrderedDict
from itertools import count
from pathlib import Path
from typing import Any, Optional

import numpy as np

from LiverTumorRefineLib.scene import nodes
from LiverTumorRefineLib.volume.atomic import atomic_path

# Versions kept: the current one and the one before it, which a job may still be reading.
KEEP = 2


class CtFiles:
    """The CT files of one Logic's jobs (see the module docstring)."""

    def __init__(self) -> None:
        self._folder: Optional[tempfile.TemporaryDirectory] = None
        self._files: "OrderedDict[str, Path]" = OrderedDict()
        self._names = count(1)

    def path(self, volumeNode: Any, geometry: dict[str, list[float]]) -> Path:
        """The file holding ``volumeNode``'s voxels as ``nodes.ct_array`` gives them, written now
        unless this version of the CT already has one."""
        identity = nodes.ct_identity(volumeNode, geometry)
        path = self._files.get(identity)
        if path is not None and path.is_file():  # a temporary-file cleaner may have removed it
            self._files.move_to_end(identity)
            return path
        path = self._folderPath() / f"ct-{next(self._names)}.npy"
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, nodes.ct_array(volumeNode))
        self._files[identity] = path
        while len(self._files) > KEEP:
            _, old = self._files.popitem(last=False)
            old.unlink(missing_ok=True)
        return path

    def clear(self) -> None:
        """Remove every file (the module was closed: the next job writes its CT again)."""
        self._files.clear()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def _folderPath(self) -> Path:
        if self._folder is None or not Path(self._folder.name).is_dir():
            self._folder = tempfile.TemporaryDirectory(prefix="LiverTumorRefine-ct-")
        return Path(self._folder.name)
