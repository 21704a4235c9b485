"""Atomic file writes: a reader (or a crash) never sees half a file, and nothing is left behind."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary file name in ``path``'s folder; on success it is renamed onto ``path``
    with the permissions a plain ``open`` would give (mkstemp's 0600 would hide shared models),
    on any error or Ctrl-C it is deleted. ``suffix`` lets writers pick the format by extension."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
