"""Atomic file writes: a reader sees the old file or the whole new one, never half a file.

Standard library only, so the Blender add-on can carry it with the PLY layout. Every output of the
project (head models, PLYs, bundles, images, GIFs) goes through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create `path` via a temp file in the same folder: write, flush, fsync, `os.replace`.

    Same folder so the rename stays on one file system (atomic); on any error the temp file is removed
    and an existing `path` is left untouched.
    """
    return atomic_write_files({path: write})[0]


def atomic_write_files(writers: dict[str | os.PathLike, Callable[[BinaryIO], None]]) -> list[Path]:
    """Write several files that belong together (e.g. GaussianAvatars' PLY + params).

    Every file is fully written and fsynced to a temp sibling before the first rename, so a failure
    while writing leaves all targets as they were; only a crash between the final renames could
    leave a mix of old and new files.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for target, write in writers.items():
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
        while staged:
            tmp, path = staged[0]
            os.replace(tmp, path)
            staged.pop(0)
            fsync_dir(path.parent)
    except BaseException:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    return [Path(p) for p in writers]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
