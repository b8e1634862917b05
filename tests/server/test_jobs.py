"""Checklist items 12-15, 18, 19: async jobs with idempotency, the bounded queue, cooperative cancel, a
worker that survives failures, shutdown with a limit, health and ready. Jobs run the real pipeline
(`create_bundle`) on tiny checkpoints in an in-process service."""

from __future__ import annotations

import io
import json
import threading
import zipfile

import pytest
from pointillist import pipeline
from pointillist.avatar.bundle import read_zip_members
from pointillist.server.jobs import JobCancelled, JobManager
from pointillist.server.storage import DataDir

from .conftest import FAST, SLOW, InProcess, wait_for


@pytest.fixture(scope="module")
def slow_app(tmp_path_factory, slow_checkpoint):
    """Jobs that stay in AR decoding until cancelled; a queue of two."""
    from pointillist.server.config import Limits

    with InProcess(tmp_path_factory.mktemp("slow-data"), checkpoint=slow_checkpoint,
                   limits=Limits(max_queue=2, retry_after_s=7)) as app:
        wait_for(lambda: app.request("GET", "/v1/ready").status_code, lambda s: s == 200)
        yield app


# ------------------------------------------------------------------------------- item 12: async + idempotency
def test_item12_jobs_are_async_and_idempotent(fast_app, portrait_png):
    key = "create-portrait-1"
    first = fast_app.submit(portrait_png, FAST, headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    job = first.json()
    assert job["state"] in ("queued", "running") and job["avatar_id"] is None  # answered before the work is done
    assert first.headers["location"] == f"/v1/jobs/{job['job_id']}"
    replay = fast_app.submit(portrait_png, FAST, headers={"Idempotency-Key": key})
    assert replay.status_code == 202 and replay.json()["job_id"] == job["job_id"]
    assert replay.headers["idempotent-replayed"] == "true"
    done = fast_app.wait(job["job_id"])
    assert done["state"] == "succeeded" and done["progress"] == 1.0 and done["avatar_id"]
    again = fast_app.submit(portrait_png, FAST, headers={"Idempotency-Key": key})  # after completion: same job
    assert again.json()["job_id"] == job["job_id"] and again.json()["state"] == "succeeded"
    conflict = fast_app.submit(portrait_png, {**FAST, "seed": 9}, headers={"Idempotency-Key": key})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
    bad_key = fast_app.submit(portrait_png, FAST, headers={"Idempotency-Key": "../../etc"})
    assert bad_key.status_code == 422
    records = list((fast_app.service.storage.root / "jobs").glob("*.json"))
    assert sum(json.loads(p.read_text())["idempotency_key"] == key for p in records) == 1


def test_item12_finished_avatar_is_listed_and_downloadable(fast_app, finished_job, head):
    avatar_id = finished_job["avatar_id"]
    listing = fast_app.request("GET", "/v1/avatars").json()["avatars"]
    record = next(a for a in listing if a["avatar_id"] == avatar_id)
    assert record["job_id"] == finished_job["job_id"] and record["gaussians"] > 0
    r = fast_app.request("GET", f"/v1/avatars/{avatar_id}/bundle")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == f'attachment; filename="{avatar_id}.zip"'
    assert len(r.content) == record["bytes"]
    from pointillist.avatar.bundle import avatar_from_members
    from pointillist.avatar.gaussians import validate_avatar

    path = fast_app.service.storage.root / "downloaded.zip"
    path.write_bytes(r.content)
    try:
        avatar = avatar_from_members(read_zip_members(path), "download")
    finally:
        path.unlink()
    validate_avatar(avatar, num_faces=head.num_faces, num_vertices=head.num_vertices)
    assert avatar.gaussians.num == record["gaussians"]
    assert "preview.png" in zipfile.ZipFile(io.BytesIO(r.content)).namelist()


# ------------------------------------------------------------------------------- items 13, 14: queue and cancel
def test_item13_queue_is_bounded_and_item14_cancel_between_stages(slow_app, portrait_png):
    running = slow_app.submit(portrait_png, SLOW).json()["job_id"]
    slow_app.wait(running, lambda j: j["state"] == "running")
    queued = [slow_app.submit(portrait_png, {**SLOW, "seed": s}) for s in (1, 2)]
    assert [r.status_code for r in queued] == [202, 202]
    assert [r.json()["queue_position"] for r in queued] == [0, 1]
    jobs_before = len(list((slow_app.service.storage.root / "jobs").iterdir()))
    full = slow_app.submit(portrait_png, {**SLOW, "seed": 3})
    assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
    assert full.headers["retry-after"] == "7"
    assert len(list((slow_app.service.storage.root / "jobs").iterdir())) == jobs_before  # nothing created
    assert not list((slow_app.service.storage.root / "uploads").glob(".*"))
    for r in queued:  # queued jobs cancel at once
        cancelled = slow_app.request("DELETE", f"/v1/jobs/{r.json()['job_id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    r = slow_app.request("DELETE", f"/v1/jobs/{running}")
    assert r.status_code in (200, 202) and r.json()["cancel_requested"]
    job = slow_app.wait(running)
    assert job["state"] == "cancelled" and job["avatar_id"] is None
    assert slow_app.submit(portrait_png, {**SLOW, "seed": 4}).status_code == 202  # room again
    _cancel_all(slow_app)


def _cancel_all(app) -> None:
    for job_id in list(app.service.jobs._jobs):
        app.request("DELETE", f"/v1/jobs/{job_id}")  # 409 for finished ones: fine
    wait_for(app.service.jobs.stats, lambda s: s["running"] is None and s["queued"] == 0)


def test_item14_cancel_inside_ar_decoding(slow_app, portrait_png):
    job_id = slow_app.submit(portrait_png, SLOW).json()["job_id"]
    seen = []

    def decoding(job):
        seen.append(job["progress"])
        if job["state"] == "queued":  # the worker has not picked it up yet
            return False
        return job["state"] != "running" or (job["stage"] == "generate" and job["progress"] > 0.16)

    job = slow_app.wait(job_id, decoding, interval=0.02)
    assert job["state"] == "running" and job["stage"] == "generate"  # tokens are being decoded now
    r = slow_app.request("DELETE", f"/v1/jobs/{job_id}")
    assert r.status_code == 202 and r.json()["cancel_requested"] and r.json()["state"] == "running"
    job = slow_app.wait(job_id)
    assert job["state"] == "cancelled" and job["stage"] == "generate"  # stopped inside decoding
    assert job["error"] is None and job["avatar_id"] is None
    assert seen == sorted(seen)  # progress only grows
    root = slow_app.service.storage.root
    assert not list((root / "tmp").iterdir()) and not list((root / "uploads").iterdir())
    assert slow_app.request("GET", "/v1/avatars").json() == {"avatars": []}


def test_item14_finished_jobs_cannot_be_cancelled(fast_app, finished_job):
    r = fast_app.request("DELETE", f"/v1/jobs/{finished_job['job_id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
    r = fast_app.request("DELETE", "/v1/jobs/" + "f" * 32)
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"


# ------------------------------------------------------------------------------- item 15: failures stay in their job
def test_item15_worker_survives_failures_that_never_leak(fast_app, portrait_png, wall_png, monkeypatch):
    real = pipeline.create_bundle
    worker = fast_app.service.jobs._thread

    def failing(exc):
        def create_bundle(*args, **kwargs):
            raise exc
        return create_bundle

    def corrupt_output(portrait, out, *args, **kwargs):
        out.write_bytes(b"PK\x03\x04 this is not a bundle")
        return {"points": 1, "gaussians": 1}

    outcomes = {}
    for name, replacement in (("internal", failing(RuntimeError("kaboom at /home/artist/secret"))),
                              ("out_of_memory", failing(MemoryError())), ("invalid_output", corrupt_output)):
        monkeypatch.setattr(pipeline, "create_bundle", replacement)
        job_id = fast_app.submit(portrait_png, {**FAST, "seed": len(name)}).json()["job_id"]
        outcomes[name] = fast_app.wait(job_id)
    monkeypatch.setattr(pipeline, "create_bundle", real)
    job_id = fast_app.submit(wall_png, FAST).json()["job_id"]  # a real failure inside the pipeline: no face
    outcomes["bad_image"] = fast_app.wait(job_id)
    for code, job in outcomes.items():
        assert job["state"] == "failed" and job["error"]["code"] == code, job
        assert "Traceback" not in job["error"]["message"] and "secret" not in job["error"]["message"]
    assert "no face" in outcomes["bad_image"]["error"]["message"]
    root = fast_app.service.storage.root
    assert not list((root / "tmp").iterdir()) and not list((root / "uploads").iterdir())
    published = {a["job_id"] for a in fast_app.request("GET", "/v1/avatars").json()["avatars"]}
    assert not published & {j["job_id"] for j in outcomes.values()}
    assert len(list((root / "avatars").glob("*.json"))) == len(list((root / "avatars").glob("*.zip")))
    # the same worker thread goes on and makes the next avatar
    good = fast_app.wait(fast_app.submit(portrait_png, {**FAST, "seed": 11}).json()["job_id"])
    assert good["state"] == "succeeded" and fast_app.service.jobs._thread is worker and worker.is_alive()


# ------------------------------------------------------------------------------- item 18: shutdown limit
class _Runner:
    """A runner for the manager's mechanics only: `stubborn` ignores cancel, otherwise it honours it."""

    def __init__(self, stubborn: bool):
        self.stubborn = stubborn
        self.started = threading.Event()
        self.release = threading.Event()

    def prepare(self):
        pass

    def avatar_for_job(self, job_id):
        return None

    def run(self, job_id, image, options, progress, cancelled):
        self.started.set()
        while not self.release.wait(0.01):
            if cancelled() and not self.stubborn:
                raise JobCancelled()
        raise JobCancelled()


@pytest.mark.parametrize("stubborn", [False, True])
def test_item18_shutdown_interrupts_jobs_and_respects_its_limit(tmp_path, stubborn):
    storage = DataDir(tmp_path)
    runner = _Runner(stubborn)
    manager = JobManager(storage, runner, max_queue=4)
    manager.start()
    running, _ = manager.submit(b"image-1", {})
    queued, _ = manager.submit(b"image-2", {})
    assert runner.started.wait(30)
    stopped = manager.shutdown(0.3 if stubborn else 30)
    assert stopped is (not stubborn)
    if stubborn:  # it returned at its limit while the job still held the worker, instead of waiting for it
        assert manager._thread.is_alive() and not runner.release.is_set()
        runner.release.set()
        manager._thread.join(30)
    assert manager.get(queued["job_id"])["error"]["code"] == "interrupted"
    final = manager.get(running["job_id"])
    assert final["state"] == "failed" and final["error"]["code"] == "interrupted"
    on_disk = json.loads(storage.job_record(running["job_id"]).read_text())
    assert on_disk["state"] == "failed" and on_disk["error"]["code"] == "interrupted"
    with pytest.raises(Exception, match="shutting down"):
        manager.submit(b"image-3", {})


# ------------------------------------------------------------------------------- item 19: health and ready
def test_item19_health_is_open_and_ready_reports_the_model(fast_app):
    from pointillist import __version__

    r = fast_app.client.get("/v1/health")  # no token
    assert r.status_code == 200 and r.json() == {"status": "ok", "version": __version__}
    ready = fast_app.request("GET", "/v1/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] and body["model"]["name"] == "tiny, complete by fallback" and body["queue"]["worker_alive"]


def test_item19_ready_is_503_when_the_model_cannot_load(tmp_path, tiny_checkpoint, wall_png):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:4000])
    with InProcess(tmp_path / "data", checkpoint=broken) as app:
        wait_for(lambda: app.service.jobs.prepared.is_set(), bool)
        r = app.request("GET", "/v1/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert "failed to load" in r.json()["error"]["message"] and r.headers["retry-after"]
        assert app.client.get("/v1/health").status_code == 200
        job = app.wait(app.submit(wall_png, FAST).json()["job_id"])
        assert job["state"] == "failed" and job["error"]["code"] == "model_error"
