"""Writing the files bnnmip is asked to write, and nothing else.

Every file bnnmip writes (an exported model, a CSV export, a figure, a side journal of results)
is opened by :func:`open_for_writing`: a symbolic link at the path is refused (``O_NOFOLLOW``, also
against a link made between the check and the open), and so is anything that is not a regular
file once opened (a directory, a FIFO, a device); an existing file is truncated only after that
check.  Errors are :class:`~bnnmip.errors.InvalidArgumentError` naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

from .errors import InvalidArgumentError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open; cleared once it is known regular


def open_for_writing(path: str | os.PathLike, *, text: bool = True, append: bool = False,
                     newline: str | None = None) -> IO:
    """``path`` opened for writing (truncated unless ``append``), never through a link or onto a non-file."""
    path = Path(path)
    if path.is_symlink():
        raise InvalidArgumentError(f"{path}: is a symbolic link; bnnmip does not write through links")
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"{path}: folder {str(path.parent)!r} does not exist")
    flags = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | _NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_APPEND if append else 0
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidArgumentError(f"{path}: is a symbolic link; bnnmip does not write through links") from None
        reason = "it is a directory" if e.errno == errno.EISDIR else (e.strerror or str(e))
        raise InvalidArgumentError(f"{path}: cannot write ({reason})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgumentError(f"{path}: cannot write (not a regular file)")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        if not append:
            os.ftruncate(fd, 0)
        return os.fdopen(fd, ("a" if append else "w") + ("" if text else "b"), newline=newline if text else None,
                         encoding="utf-8" if text else None)
    except BaseException:
        os.close(fd)
        raise


def write_file(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`open_for_writing`; returns the path."""
    try:
        with open_for_writing(path, text=isinstance(data, str)) as f:
            f.write(data)
    except OSError as e:  # a full disk, a quota
        raise InvalidArgumentError(f"{path}: cannot write ({e.strerror or e})") from None
    return Path(path)
