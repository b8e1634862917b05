"""Avatar jobs: a bounded queue, one worker thread, records persisted as JSON, cooperative cancel.

* `submit` stores the upload and the job record, then queues it; a full queue answers 429 `queue_full`
  with Retry-After and creates nothing. An `Idempotency-Key` maps to one job for good (the key is kept
  in the record, so a retry after a restart still finds it); the same key with a different image or
  options answers 409 `idempotency_conflict`.
* One worker thread runs jobs one at a time through a `JobRunner` (the pipeline glue lives in
  `avatars.py`; this module imports no torch). Whatever a job raises is caught and recorded on that job
  only: the worker goes on with the next one.
* Cancel is cooperative: a queued job is cancelled at once; a running job gets its flag set and the
  pipeline stops at its next check (between stages and every 64 tokens of AR decoding).
* `start` marks jobs a previous process left queued or running as `failed` with code `interrupted`
  (unless their avatar was already published, then they succeeded) and removes their uploads.
* `shutdown(timeout)` stops taking jobs, interrupts the running one and waits at most `timeout` s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from .errors import ApiError
from .storage import DataDir, StorageError, new_id

log = logging.getLogger("pointillist.server")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: share of the whole job each pipeline stage takes, in order (for a monotonic 0-1 progress)
STAGE_WEIGHTS = (("understand", 0.05), ("fit", 0.08), ("encode", 0.02), ("generate", 0.55), ("decode", 0.02),
                 ("refine", 0.18), ("bundle", 0.07), ("publish", 0.03))
PUBLIC_FIELDS = ("job_id", "state", "progress", "stage", "error", "avatar_id", "created_at", "updated_at",
                 "cancel_requested", "options", "warnings")


class JobCancelled(Exception):
    """Raised by a runner when the job's cancel flag stopped it."""


class JobFailure(Exception):
    """An expected failure with a stable code (see errors.JOB_ERROR_CODES)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Published(NamedTuple):
    """What a succeeded job made."""

    avatar_id: str
    warnings: list[str]  # for the artist: how the avatar differs from what was asked


class JobRunner(Protocol):
    def prepare(self) -> None: ...

    def run(self, job_id: str, image: bytes, options: dict, progress: Callable[[str, float], None],
            cancelled: Callable[[], bool]) -> Published: ...

    def avatar_for_job(self, job_id: str) -> str | None: ...


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def fingerprint(image: bytes, options: dict) -> str:
    h = hashlib.sha256(image)
    h.update(b"\0" + json.dumps(options, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def overall_progress(stage: str, fraction: float) -> float:
    done = 0.0
    for name, weight in STAGE_WEIGHTS:
        if name == stage:
            return min(1.0, done + weight * min(max(fraction, 0.0), 1.0))
        done += weight
    return done


class JobManager:
    def __init__(self, storage: DataDir, runner: JobRunner, *, max_queue: int = 8, retry_after_s: int = 5):
        self.storage = storage
        self.runner = runner
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._jobs: dict[str, dict] = {}
        self._keys: dict[str, str] = {}
        self._queue: deque[str] = deque()
        self._cancel: dict[str, threading.Event] = {}
        self._running: str | None = None
        self._stopping = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.prepared = threading.Event()
        self.prepare_error: str | None = None

    # ---------------------------------------------------------------------------- life cycle
    def start(self) -> None:
        removed = self.storage.clean_start()
        if removed:
            log.info("start-up clean-up removed %d stray file(s): %s", len(removed), ", ".join(removed[:10]))
        for job_id in self.storage.ids("jobs", ".json"):
            try:
                job = self.storage.read_json(self.storage.job_record(job_id))
            except (StorageError, OSError) as exc:
                log.warning("skipping unreadable job record %s: %s", job_id, exc)
                continue
            if job.get("job_id") != job_id or job.get("state") not in (QUEUED, RUNNING, *TERMINAL):
                log.warning("skipping malformed job record %s", job_id)
                continue
            if job["state"] in (QUEUED, RUNNING):
                avatar_id = self.runner.avatar_for_job(job_id)
                if avatar_id:  # published before the crash, record not yet updated
                    job.update(state=SUCCEEDED, progress=1.0, stage="done", avatar_id=avatar_id, error=None)
                else:
                    job.update(state=FAILED, error={
                        "code": "interrupted",
                        "message": f"the service stopped while the job was {job['state']}; submit the portrait again"})
                job["updated_at"] = now()
                self._save(job)
                log.info("job %s was running or queued when the service stopped: now %s%s", job_id, job["state"],
                         " (interrupted)" if job["state"] == FAILED else "")
            self.storage.remove(self.storage.upload(job_id))
            self._jobs[job_id] = job
            if job.get("idempotency_key"):
                self._keys[job["idempotency_key"]] = job_id
        for job_id in self.storage.ids("uploads", ".img"):  # uploads without a live job
            self.storage.remove(self.storage.upload(job_id))
        self._thread = threading.Thread(target=self._loop, name="pointillist-worker", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float) -> bool:
        """Stop: queued jobs fail as interrupted, the running one is asked to stop; True if it stopped in time."""
        with self._cond:
            self._stopping = True
            while self._queue:
                job = self._jobs[self._queue.popleft()]
                self._finish(job, FAILED, error={"code": "interrupted",
                                                 "message": "the service shut down before the job ran; submit it again"})
            if self._running:
                self._cancel[self._running].set()
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if not stopped:
            log.error("the worker did not stop within %.1f s; leaving its job to start-up clean-up", timeout)
        return stopped

    @property
    def worker_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---------------------------------------------------------------------------- requests
    def submit(self, image: bytes, options: dict, idempotency_key: str | None = None) -> tuple[dict, bool]:
        """(public job, created). Raises ApiError for conflicts, a full queue or shutdown."""
        fp = fingerprint(image, options)
        with self._cond:
            existing = self._existing(idempotency_key, fp)
            if existing is not None:
                return existing, False
            self._check_capacity()
        job_id = new_id()
        upload = self.storage.upload(job_id)
        self.storage.write_bytes(upload, image)  # outside the lock: it can be tens of MB
        with self._cond:
            try:
                existing = self._existing(idempotency_key, fp)  # a concurrent twin may have won
                if existing is not None:
                    self.storage.remove(upload)
                    return existing, False
                self._check_capacity()
            except ApiError:
                self.storage.remove(upload)
                raise
            stamp = now()
            job = {"job_id": job_id, "state": QUEUED, "progress": 0.0, "stage": "queued", "error": None,
                   "avatar_id": None, "warnings": [], "created_at": stamp, "updated_at": stamp, "cancel_requested": False,
                   "options": options, "idempotency_key": idempotency_key, "fingerprint": fp}
            self._save(job)
            self._jobs[job_id] = job
            if idempotency_key:
                self._keys[idempotency_key] = job_id
            self._cancel[job_id] = threading.Event()
            self._queue.append(job_id)
            self._cond.notify_all()
            log.info("job %s queued (%d waiting)", job_id, len(self._queue))
            return self._public(job), True

    def get(self, job_id: str) -> dict:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise ApiError("job_not_found", "no job with this id")
            return self._public(job)

    def cancel(self, job_id: str) -> tuple[dict, bool]:
        """(public job, finished now). Queued: cancelled at once. Running: flagged, stops at its next check."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise ApiError("job_not_found", "no job with this id")
            if job["state"] == CANCELLED:
                return self._public(job), True
            if job["state"] in TERMINAL:
                raise ApiError("job_finished", f"the job already {job['state']}; nothing to cancel")
            job["cancel_requested"] = True
            if job["state"] == QUEUED:
                self._queue.remove(job_id)
                self._finish(job, CANCELLED)
                return self._public(job), True
            self._cancel[job_id].set()
            job["updated_at"] = now()
            self._save(job)
            log.info("job %s: cancel requested", job_id)
            return self._public(job), False

    def stats(self) -> dict:
        with self._cond:
            return {"queued": len(self._queue), "running": self._running, "max_queue": self.max_queue,
                    "worker_alive": self.worker_alive}

    # ---------------------------------------------------------------------------- worker
    def _loop(self) -> None:
        try:
            self.runner.prepare()
        except Exception as exc:  # noqa: BLE001 - reported by /v1/ready; jobs then fail with the cause
            self.prepare_error = f"{type(exc).__name__}: {exc}"
            log.error("model preparation failed: %s", self.prepare_error)
        finally:
            self.prepared.set()
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._jobs[self._queue.popleft()]
                job_id = job["job_id"]
                self._running = job_id
                job.update(state=RUNNING, stage="starting", updated_at=now())
                self._save(job)
                flag = self._cancel[job_id]
            try:
                self._run(job, flag)
            except BaseException:
                log.exception("job %s: error while recording its outcome", job_id)
            finally:
                with self._cond:
                    self._running = None
                    self._cancel.pop(job_id, None)
                    if job["state"] not in TERMINAL:  # recording failed above: never leave it running
                        self._finish(job, FAILED, error={"code": "internal", "message": "an unexpected error; "
                                                                                        "details are in the server log"})
                self.storage.remove(self.storage.upload(job_id))

    def _run(self, job: dict, flag: threading.Event) -> None:
        job_id = job["job_id"]
        started = time.perf_counter()
        last_stage = [None]

        def progress(stage: str, fraction: float) -> None:
            with self._cond:
                job["progress"] = round(max(job["progress"], overall_progress(stage, fraction)), 4)
                job["stage"] = stage
                if stage != last_stage[0]:  # persist on stage changes only (progress stays in memory)
                    last_stage[0] = stage
                    job["updated_at"] = now()
                    self._save(job)

        try:
            image = self.storage.read_bytes(self.storage.upload(job_id), 1 << 31)
            published = self.runner.run(job_id, image, dict(job["options"]), progress, flag.is_set)
        except JobCancelled:
            with self._cond:
                if job["cancel_requested"]:
                    self._finish(job, CANCELLED)
                else:  # stopped by shutdown, not by the client
                    self._finish(job, FAILED, error={"code": "interrupted",
                                                     "message": "the service shut down while the job ran; submit it again"})
            log.info("job %s stopped after %.1f s (%s)", job_id, time.perf_counter() - started, job["state"])
            return
        except JobFailure as exc:
            with self._cond:
                self._finish(job, FAILED, error={"code": exc.code, "message": exc.message})
            log.info("job %s failed (%s): %s", job_id, exc.code, exc.message)
            return
        except MemoryError:
            with self._cond:
                self._finish(job, FAILED, error={"code": "out_of_memory", "message": "the job ran out of memory; "
                                                 "try a lower quality or fewer points"})
            log.error("job %s ran out of memory", job_id)
            return
        except Exception:
            log.exception("job %s failed unexpectedly", job_id)
            with self._cond:
                self._finish(job, FAILED, error={"code": "internal",
                                                 "message": "an unexpected error; details are in the server log"})
            return
        with self._cond:
            job["avatar_id"], job["warnings"] = published.avatar_id, list(published.warnings)
            self._finish(job, SUCCEEDED)
        log.info("job %s succeeded in %.1f s: avatar %s%s", job_id, time.perf_counter() - started, published.avatar_id,
                 "".join(f"; warning: {w}" for w in published.warnings))

    # ---------------------------------------------------------------------------- helpers (lock held)
    def _existing(self, key: str | None, fp: str) -> dict | None:
        if not key or key not in self._keys:
            return None
        job = self._jobs[self._keys[key]]
        if job.get("fingerprint") != fp:
            raise ApiError("idempotency_conflict", "this Idempotency-Key was already used with a different image "
                                                   "or options; use a new key for a new request")
        return self._public(job)

    def _check_capacity(self) -> None:
        if self._stopping:
            raise ApiError("shutting_down", "the service is shutting down; submit the job again once it restarts")
        if len(self._queue) >= self.max_queue:
            raise ApiError("queue_full", f"{len(self._queue)} jobs are already waiting (the limit); "
                                         f"retry after {self.retry_after_s} s",
                           headers={"Retry-After": str(self.retry_after_s)})

    def _finish(self, job: dict, state: str, error: dict | None = None) -> None:
        job.update(state=state, error=error, updated_at=now())
        if state == SUCCEEDED:  # otherwise `stage` keeps where the job stopped
            job.update(progress=1.0, stage="done")
        self._save(job)
        self.storage.remove(self.storage.upload(job["job_id"]))

    def _save(self, job: dict) -> None:
        try:
            self.storage.write_json(self.storage.job_record(job["job_id"]), job)
        except OSError as exc:  # a full disk must not kill the worker; memory keeps the truth
            log.error("could not persist job %s: %s", job["job_id"], exc)

    def _public(self, job: dict) -> dict:
        view = {k: job.get(k) for k in PUBLIC_FIELDS}
        if job["state"] == QUEUED and job["job_id"] in self._queue:
            view["queue_position"] = self._queue.index(job["job_id"])
        return view
