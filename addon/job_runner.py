"""One Create Avatar job: backend up, upload, poll, download — as a plain function and a worker thread.

`create_avatar()` is the whole network side, synchronous, reporting `Progress` snapshots through a
callback and honouring a cancel event; headless Blender (where timers never fire) and the tests call it
directly. `JobRunner` runs the same function on a daemon thread and keeps the latest snapshot behind a
lock, which a `bpy.app.timers` callback reads on the main thread (the only place bpy may be touched).
Importing the downloaded bundle is not done here: it needs bpy, so the caller does it on the main thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .http_client import BackendError, Client, describe

FINISHED = ("succeeded", "failed", "cancelled")
QUALITIES = ("draft", "standard", "high")


class CreateFailed(RuntimeError):
    """The avatar could not be made; the message is for the artist."""


class Cancelled(CreateFailed):
    pass


@dataclass(frozen=True)
class Progress:
    state: str = "idle"  # idle starting uploading queued running downloading importing done failed cancelled
    progress: float = 0.0  # 0-1 over the whole create (backend start and download included)
    stage: str = ""
    error: str = ""
    job_id: str = ""
    bundle_path: str = ""
    warnings: tuple[str, ...] = ()  # a finished avatar's: how it differs from what was asked (a fallback)

    @property
    def active(self) -> bool:
        return self.state not in ("idle", "done", "failed", "cancelled")


def job_options(quality: str, point_budget: int, seed: int, refine_steps: int, carve: bool = True,
                anchor: bool = True) -> dict:
    """The server's `options` JSON from the panel: a budget or step count of -1/0 means the preset's; carving
    and anchoring to the photo are the server's defaults and are sent only when turned off."""
    if quality not in QUALITIES:
        raise CreateFailed(f"quality must be one of {', '.join(QUALITIES)}")
    options: dict = {"quality": quality, "seed": int(seed)}
    if point_budget > 0:
        options["max_points"] = int(point_budget)
    if refine_steps >= 0:
        options["refine_steps"] = int(refine_steps)
    if not carve:
        options["carve"] = False
    if not anchor:
        options["anchor"] = False
    return options


def check_portrait(path: str) -> Path:
    """Fail before any backend work when the portrait is not a readable file."""
    if not path:
        raise CreateFailed("choose a portrait image first")
    p = Path(path)
    if not p.is_file():
        raise CreateFailed(f"the portrait {p} does not exist")
    if p.stat().st_size == 0:
        raise CreateFailed(f"the portrait {p} is empty")
    return p


def create_avatar(connect: Callable[[threading.Event], Client], image_path: str, options: dict,
                  cache_dir: str | Path, report: Callable[[Progress], None] = lambda p: None,
                  cancel: threading.Event | None = None, poll_s: float = 0.25, timeout_s: float = 6 * 3600) -> Path:
    """portrait -> downloaded bundle zip in `cache_dir/avatars/`. Raises CreateFailed (Cancelled)."""
    cancel = cancel or threading.Event()
    portrait = check_portrait(image_path)
    report(Progress("starting", 0.0, "connecting to the backend"))
    try:
        client = connect(cancel)
    except (BackendError, OSError, RuntimeError) as exc:
        raise CreateFailed(str(exc)) from None
    if cancel.is_set():
        raise Cancelled("cancelled")
    report(Progress("uploading", 0.02, "uploading the portrait"))
    try:
        job = client.submit(portrait, options)
    except BackendError as exc:
        raise CreateFailed(str(exc)) from None
    job_id = job["job_id"]
    deadline = time.monotonic() + timeout_s
    cancel_sent = False
    while True:
        if cancel.is_set() and not cancel_sent:
            cancel_sent = True
            try:
                job = client.cancel(job_id)
            except BackendError as exc:
                if exc.code != "job_finished":
                    raise CreateFailed(f"cancelling failed: {exc}") from None
        else:
            try:
                job = client.job(job_id)
            except BackendError as exc:
                if exc.code == "unreachable":
                    raise CreateFailed("the backend stopped while making the avatar; it restarts on the next "
                                       "Create Avatar") from None
                raise CreateFailed(str(exc)) from None
        state = job.get("state", "")
        overall = 0.05 + 0.85 * float(job.get("progress") or 0.0)
        stage = str(job.get("stage") or state)
        if state in FINISHED:
            break
        report(Progress(state if state in ("queued", "running") else "running", overall, stage, job_id=job_id))
        if time.monotonic() > deadline:
            raise CreateFailed(f"the job did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)
    if state == "cancelled" or (cancel.is_set() and state != "succeeded"):
        raise Cancelled("cancelled")
    if state == "failed":
        error = job.get("error") or {}
        raise CreateFailed(describe(str(error.get("code", "failed")), str(error.get("message", "the job failed"))))
    avatar_id = job.get("avatar_id")
    if not avatar_id:
        raise CreateFailed("the backend reported success but named no avatar")
    report(Progress("downloading", 0.92, "downloading the avatar", job_id=job_id))
    try:
        return client.download_bundle(avatar_id, Path(cache_dir) / "avatars" / f"{avatar_id}.zip")
    except BackendError as exc:
        raise CreateFailed(str(exc)) from None


class JobRunner:
    """`create_avatar` on a daemon thread; `snapshot()` is the latest Progress (main thread reads it)."""

    def __init__(self, connect: Callable[[threading.Event], Client], image_path: str, options: dict,
                 cache_dir: str | Path, poll_s: float = 0.25):
        self._args = (connect, image_path, options, cache_dir)
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._progress = Progress("starting", 0.0, "starting")
        self.cancel_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pointillist-create", daemon=True)

    def start(self) -> JobRunner:
        self.thread.start()
        return self

    def _set(self, progress: Progress) -> None:
        with self._lock:
            self._progress = progress

    def _run(self) -> None:
        connect, image_path, options, cache_dir = self._args
        try:
            path = create_avatar(connect, image_path, options, cache_dir, self._set, self.cancel_event, self._poll_s)
        except Cancelled:
            self._set(Progress("cancelled", 0.0, "cancelled"))
        except CreateFailed as exc:
            self._set(Progress("failed", 0.0, "failed", error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - a worker thread must always end in a state the UI shows
            self._set(Progress("failed", 0.0, "failed", error=f"unexpected error: {exc!r}"))
        else:
            self._set(replace(self.snapshot(), state="importing", progress=0.97, stage="importing",
                              bundle_path=str(path)))

    def snapshot(self) -> Progress:
        with self._lock:
            return self._progress

    def cancel(self) -> None:
        self.cancel_event.set()

    def join(self, timeout: float | None = None) -> Progress:
        self.thread.join(timeout)
        return self.snapshot()
