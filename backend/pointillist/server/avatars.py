"""Finished avatars and the job runner that makes them with `pipeline.create_bundle`.

A job's bundle is written as a zip into the job's scratch folder (atomically, by `write_bundle`), read
back and validated against the head model, and only then renamed into `avatars/` — so `avatars/` only
ever holds complete, valid bundles, whatever happens to the process meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from .jobs import JobCancelled, JobFailure, Published, now
from .storage import DataDir, StorageError, new_id

log = logging.getLogger("pointillist.server")

MAX_BUNDLE_BYTES = 1 << 30
#: options a client may set (the server chooses checkpoint, device and every path)
CLIENT_OPTIONS = ("quality", "max_points", "temperature", "top_p", "top_k", "seed", "refine_steps", "carve", "anchor")


class AvatarStore:
    def __init__(self, storage: DataDir):
        self.storage = storage

    def list(self) -> list[dict]:
        out = []
        for avatar_id in self.storage.ids("avatars", ".zip"):
            record = self.record(avatar_id)
            if record is not None:
                out.append(record)
        return sorted(out, key=lambda r: r.get("created_at", ""))

    def record(self, avatar_id: str) -> dict | None:
        try:
            if not self.storage.avatar_bundle(avatar_id).is_file():
                return None
            record = self.storage.read_json(self.storage.avatar_record(avatar_id))
        except (StorageError, OSError):
            return None
        if record.get("avatar_id") != avatar_id:
            return None
        fields = {k: record.get(k) for k in ("avatar_id", "job_id", "created_at", "gaussians", "points", "bytes", "sha256")}
        return {**fields, "warnings": [str(w) for w in record.get("warnings") or []]}

    def bundle_bytes(self, avatar_id: str) -> bytes | None:
        try:
            if self.record(avatar_id) is None:
                return None
            return self.storage.read_bytes(self.storage.avatar_bundle(avatar_id), MAX_BUNDLE_BYTES)
        except (StorageError, FileNotFoundError):
            return None

    def for_job(self, job_id: str) -> str | None:
        for record in self.list():
            if record.get("job_id") == job_id:
                return record["avatar_id"]
        return None


class AvatarRunner:
    """`JobRunner` for the pipeline: one model and head model, loaded once on the worker thread."""

    def __init__(self, storage: DataDir, *, checkpoint: Path | None = None, head: Path | None = None,
                 device: str = "auto"):
        self.storage = storage
        self.avatars = AvatarStore(storage)
        self.checkpoint = checkpoint
        self.head_path = head
        self.device = device
        self.head = None
        self.ready = threading.Event()
        self.model_info: dict = {}

    def prepare(self) -> None:
        from ..head.model import HeadModel
        from ..pipeline import load_model, resolve_device

        self.head = HeadModel.load(self.head_path)
        model, info = load_model(self.checkpoint, resolve_device(self.device))
        if model.config.tokenizer.num_faces != self.head.num_faces:
            raise ValueError(f"the checkpoint was trained for a head with {model.config.tokenizer.num_faces} "
                             f"triangles; the head model has {self.head.num_faces}")
        self.model_info = {"name": info.get("name"), "head": self.head.model_id}
        self.ready.set()

    def avatar_for_job(self, job_id: str) -> str | None:
        return self.avatars.for_job(job_id)

    def run(self, job_id: str, image: bytes, options: dict, progress: Callable[[str, float], None],
            cancelled: Callable[[], bool]) -> str:
        from ..avatar.gaussians import AvatarFormatError
        from ..model.image_encoder import CheckpointError
        from ..pipeline import Cancelled, CreateError, CreateOptions, IncompleteAvatar, create_bundle
        from ..preprocess.decode import PortraitError

        if not self.ready.is_set():
            raise JobFailure("model_error", "the generator could not be loaded; see the server log")
        unknown = sorted(set(options) - set(CLIENT_OPTIONS))
        if unknown:
            raise JobFailure("bad_options", f"unknown option(s) {', '.join(unknown)}")
        create = CreateOptions(**options, checkpoint=str(self.checkpoint) if self.checkpoint else None,
                               device=self.device)
        scratch = self.storage.scratch(job_id)
        staged = scratch / "bundle.zip"
        try:
            summary = create_bundle(image, staged, create, head=self.head, progress=progress, cancelled=cancelled)
            if cancelled():
                raise Cancelled("cancelled before publishing")
            progress("publish", 0.0)
            avatar_id = new_id()
            payload_hash = hashlib.sha256(staged.read_bytes()).hexdigest()
            record = {"avatar_id": avatar_id, "job_id": job_id, "created_at": now(),
                      "gaussians": summary.get("gaussians"), "points": summary.get("points"),
                      "bytes": staged.stat().st_size, "sha256": payload_hash, "warnings": summary.get("warnings", [])}
            # the listing record first: without its zip it is ignored (and removed at start-up)
            self.storage.write_json(self.storage.avatar_record(avatar_id), record)
            try:
                self.storage.publish(staged, self.storage.avatar_bundle(avatar_id), self._validate)
            except BaseException:
                self.storage.remove(self.storage.avatar_record(avatar_id))
                raise
            progress("publish", 1.0)
            return Published(avatar_id, record["warnings"])
        except Cancelled:
            raise JobCancelled() from None
        except PortraitError as exc:
            raise JobFailure("bad_image", _clean(str(exc))) from None
        except IncompleteAvatar as exc:
            raise JobFailure("incomplete_avatar", _clean(str(exc))) from None
        except CreateError as exc:
            raise JobFailure("bad_options", _clean(str(exc))) from None
        except CheckpointError as exc:
            log.error("job %s: checkpoint problem: %s", job_id, exc)
            raise JobFailure("model_error", "the generator checkpoint could not be used; see the server log") from None
        except AvatarFormatError as exc:
            log.error("job %s: the avatar failed validation: %s", job_id, exc)
            raise JobFailure("invalid_output", "the generated avatar failed validation and was not published") from None
        finally:
            self.storage.remove(scratch)

    def _validate(self, path: Path) -> None:
        from ..avatar.bundle import read_bundle
        from ..avatar.gaussians import validate_avatar

        avatar = read_bundle(path)
        validate_avatar(avatar, num_faces=self.head.num_faces, num_vertices=self.head.num_vertices)


def _clean(message: str) -> str:
    """Messages name the upload as `<bytes>`; say "the image" instead (and never a server path)."""
    return message.replace("<bytes>: ", "the image: ").replace("<bytes>", "the image")
