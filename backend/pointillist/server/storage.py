"""The data directory: the server chooses every path, ids are strict, nothing escapes its folder.

    DATA_DIR/
      jobs/<job_id>.json          one record per job (atomic rewrites)
      uploads/<job_id>.img        the portrait while its job waits or runs; removed when it ends
      avatars/<avatar_id>.zip     finished bundles, published by rename once validated
      avatars/<avatar_id>.json    what the listing shows (written before the zip is published)
      tmp/<job_id>/               a running job's scratch space; emptied at every start

* Ids are made here (`uuid4().hex`); a client-supplied id must match `ID_RE` before it is joined to a
  folder, and the joined path must still lie inside that folder after `realpath` (symlinks resolved);
  a symlink where a file should be is refused, and files are opened with `O_NOFOLLOW`.
* Writes are atomic: temp file in the same folder → fsync → validate → `os.replace` → fsync the folder,
  so a crash or `kill -9` leaves either nothing or the whole file where a client can see it.
* `clean_start()` removes what a crash can leave behind: scratch folders, `.*.tmp` temp files from
  interrupted atomic writes, avatar listings whose bundle was never published.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_write, fsync_dir

log = logging.getLogger("pointillist.server")

ID_RE = re.compile(r"[0-9a-f]{32}")  # job and avatar ids, server-made
OBJECT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # render objects, client-chosen
IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
FOLDERS = ("jobs", "uploads", "avatars", "tmp")
MAX_RECORD_BYTES = 1 << 20


class StorageError(Exception):
    """A path that would leave its folder, a link where a file should be, an unreadable record."""


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


class DataDir:
    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = Path(os.path.realpath(root))
        for name in FOLDERS:
            folder = self.root / name
            if folder.is_symlink():
                raise StorageError(f"{folder}: is a symbolic link; the data directory's folders must be real folders")
            folder.mkdir(mode=0o700, exist_ok=True)
            if not folder.is_dir():
                raise StorageError(f"{folder}: is not a folder")

    # ------------------------------------------------------------------------------- one service per folder
    def lock(self) -> None:
        """Hold an exclusive lock on the folder for this process's life (released by the kernel even on
        kill -9), so a second service cannot mark the first one's running jobs as interrupted."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the add-on starts one service per data folder anyway
            return
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(f"{self.root}: another pointillist service is using this data directory") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._lock_fd = None

    # ------------------------------------------------------------------------------- paths
    def inside(self, folder: str, name: str) -> Path:
        """`folder/name`, refused unless it stays inside `folder` after realpath and is not a link."""
        if folder not in FOLDERS:
            raise StorageError(f"unknown folder {folder!r}")
        if not name or "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
            raise StorageError(f"refusing file name {name!r}")
        base = self.root / folder
        path = base / name
        real = os.path.realpath(path)
        if os.path.dirname(real) != str(base):
            raise StorageError(f"{name!r} resolves outside {folder}/")
        if path.is_symlink():
            raise StorageError(f"{folder}/{name} is a symbolic link; refused")
        return path

    def _checked(self, value: str, what: str) -> str:
        if not is_id(value):
            raise StorageError(f"malformed {what} id")
        return value

    def job_record(self, job_id: str) -> Path:
        return self.inside("jobs", f"{self._checked(job_id, 'job')}.json")

    def upload(self, job_id: str) -> Path:
        return self.inside("uploads", f"{self._checked(job_id, 'job')}.img")

    def avatar_bundle(self, avatar_id: str) -> Path:
        return self.inside("avatars", f"{self._checked(avatar_id, 'avatar')}.zip")

    def avatar_record(self, avatar_id: str) -> Path:
        return self.inside("avatars", f"{self._checked(avatar_id, 'avatar')}.json")

    def scratch(self, job_id: str) -> Path:
        path = self.inside("tmp", self._checked(job_id, "job"))
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    # ------------------------------------------------------------------------------- I/O
    @staticmethod
    def write_bytes(path: Path, payload: bytes) -> None:
        atomic_write(path, lambda fh: fh.write(payload))

    def write_json(self, path: Path, value: dict) -> None:
        self.write_bytes(path, json.dumps(value, indent=1, allow_nan=False).encode("utf-8"))

    @staticmethod
    def read_bytes(path: Path, max_bytes: int) -> bytes:
        """Read a regular file without following a link at its last component."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise
        except OSError as exc:  # ELOOP: a link
            raise StorageError(f"{path.name}: cannot be opened safely ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise StorageError(f"{path.name}: not a regular file")
            if info.st_size > max_bytes:
                raise StorageError(f"{path.name}: {info.st_size} bytes, over the {max_bytes}-byte limit")
            return fh.read(max_bytes + 1)[:max_bytes]

    def read_json(self, path: Path) -> dict:
        try:
            value = json.loads(self.read_bytes(path, MAX_RECORD_BYTES))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(f"{path.name}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise StorageError(f"{path.name}: not a JSON object")
        return value

    @staticmethod
    def publish(staged: Path, final: Path, validate: Callable[[Path], None]) -> None:
        """Make `staged` visible as `final`: fsync → validate → `os.replace` → fsync the folder.

        `staged` must be on the same file system (it lives under tmp/ of the same data dir).
        Nothing is published when validation raises.
        """
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        validate(staged)
        os.replace(staged, final)
        fsync_dir(final.parent)

    def remove(self, path: Path) -> None:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            pass

    def ids(self, folder: str, suffix: str) -> list[str]:
        """Ids of regular files `folder/<id><suffix>` (links and odd names skipped)."""
        found = []
        for entry in os.scandir(self.root / folder):
            if not entry.name.endswith(suffix):
                continue
            stem = entry.name[: -len(suffix)]
            if is_id(stem) and entry.is_file(follow_symlinks=False):
                found.append(stem)
        return sorted(found)

    # ------------------------------------------------------------------------------- start-up
    def clean_start(self) -> list[str]:
        """Remove leftovers of a crash; returns what was removed (relative paths, for the log)."""
        removed = []
        for entry in os.scandir(self.root / "tmp"):
            self.remove(Path(entry.path))
            removed.append(f"tmp/{entry.name}")
        for folder in ("jobs", "uploads", "avatars"):
            for entry in os.scandir(self.root / folder):
                stray_temp = entry.name.startswith(".") and entry.name.endswith(".tmp")
                if stray_temp or entry.is_symlink():
                    self.remove(Path(entry.path))
                    removed.append(f"{folder}/{entry.name}")
        for avatar_id in self.ids("avatars", ".json"):
            if not (self.root / "avatars" / f"{avatar_id}.zip").is_file():
                self.remove(self.root / "avatars" / f"{avatar_id}.json")
                removed.append(f"avatars/{avatar_id}.json")
        return removed
