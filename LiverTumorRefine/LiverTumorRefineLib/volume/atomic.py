"""Atomic file writes: a reader (or a crash) never sees half a file, and nothing is left behind."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from LiverTumorRefineLib.errors import RefineError


def _final_mode(target: Path) -> int:
    """The mode a replaced file keeps (so ``--force`` never loosens a 0444 file), else the one a
    plain ``open`` would give (mkstemp's 0600 would hide shared models)."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary file name in ``path``'s folder; on success it is renamed onto ``path``
    (keeping the mode of a file it replaces), on any error or Ctrl-C it is deleted. ``suffix``
    lets writers pick the format by extension. Write and verify the file inside the block."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _final_mode(target))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_files(path: str | os.PathLike) -> Iterator[str]:
    """For formats written as a header plus data files (``.nhdr``, ``.mhd``): yield ``path``'s
    name inside a hidden temporary folder beside it, so the header names its data file by its
    final name. On success every data file is renamed into place, then the header (a reader that
    sees the new header sees complete data); on any error the folder is deleted."""
    target = Path(path)
    folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        inside = folder / target.name
        yield str(inside)
        for written in sorted(folder.iterdir(), key=lambda p: p.name == target.name):  # header last
            final = target.parent / written.name
            os.chmod(written, _final_mode(final))
            os.replace(written, final)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file atomically, verified by reading it back before the rename."""
    with atomic_path(path) as tmp:
        try:
            Path(tmp).write_text(text, encoding="utf-8")
            problem = "" if Path(tmp).read_text(encoding="utf-8") == text else "the file read back differs"
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem:
            raise RefineError(f"Writing {path} failed ({problem}): is the disk full? Free some space or choose "
                              "another folder; nothing was written.")


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
