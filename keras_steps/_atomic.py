"""Files written so that a kill at any moment leaves the old file or the new one.

Keras opens the target itself and writes into it, so a process killed during
``model.save`` over an existing file leaves a truncated file where a good one
was. Here the file is written under a temporary name in the same directory
(so the rename stays on one filesystem), flushed to disk, then renamed over
the target with ``os.replace``, which POSIX and Windows make atomic.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator

__all__ = ["atomic_path", "can_replace", "fsync", "is_local", "write_bytes", "write_with"]

#: The name endings Keras dispatches on; the temporary name keeps the target's.
SUFFIXES = (".weights.h5", ".weights.json", ".keras", ".hdf5", ".h5", ".json")

TEMP_MARK = ".tmp-"


def is_local(filepath: object) -> bool:
    """Whether ``filepath`` names a local file (not ``gs://``, ``hf://``, ...)."""
    return isinstance(filepath, (str, os.PathLike)) and "://" not in os.fspath(filepath)


def can_replace(filepath: object, suffixes: tuple[str, ...]) -> bool:
    """Whether ``filepath`` is a local file with one of ``suffixes`` in an existing directory.

    Other paths go to Keras unchanged, so that its errors name the path given.
    """
    if not is_local(filepath):
        return False
    path = os.path.abspath(os.fspath(filepath))
    return path.endswith(suffixes) and os.path.isdir(os.path.dirname(path))


def _suffix(name: str) -> str:
    return next((s for s in SUFFIXES if name.endswith(s)), "")


def fsync(path: str, directory: bool = False) -> None:
    """Flush ``path`` (a file, or with ``directory`` a directory) to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # Windows cannot open a directory; its rename is durable
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``target``.

    The temporary file sits next to ``target`` as ``.NAME.tmp-XXXX<suffix>``
    (the suffix kept, since Keras picks the format from it). After the body
    returns, the file is fsynced, renamed over ``target`` and the directory
    fsynced, so the new file survives a power cut too. If the body raises, the
    temporary file is removed and ``target`` is untouched. A process killed
    before the rename leaves ``target`` as it was, and the temporary file
    behind.
    """
    target = os.fspath(target)
    if os.path.islink(target):
        target = os.path.realpath(target)  # replace the file, keep the link
    directory = os.path.dirname(os.path.abspath(target))
    name = os.path.basename(target)
    temp = os.path.join(directory, f".{name}{TEMP_MARK}{secrets.token_hex(4)}{_suffix(name)}")
    try:
        yield temp
        if os.path.exists(target):
            # open(target, "w") would have kept the file's permissions.
            os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
        fsync(temp)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    fsync(directory, directory=True)


def write_bytes(target: str | os.PathLike, content: bytes) -> None:
    """Write ``content`` to ``target`` atomically."""
    with atomic_path(target) as temp, open(temp, "wb") as f:
        f.write(content)


def write_with(write: Callable[[str], object], target: str | os.PathLike) -> None:
    """Call ``write(temporary_path)`` and put the result at ``target`` atomically."""
    with atomic_path(target) as temp:
        write(temp)
