"""create_avatar's step logic against a scripted in-memory backend API (the real one: tests/blender)."""

from __future__ import annotations

import threading

import pytest

from addon.http_client import BackendError
from addon.job_runner import (
    Cancelled,
    CreateFailed,
    JobRunner,
    create_avatar,
    job_options,
)


class ScriptedClient:
    """Answers `job()` with the scripted states in turn; records cancels and downloads."""

    def __init__(self, states, error=None):
        self.states = list(states)
        self.error = error
        self.cancelled = False
        self.downloaded = None

    def submit(self, path, options):
        self.options = options
        return {"job_id": "j1", "state": "queued"}

    def job(self, job_id):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"job_id": job_id, "state": state, "progress": 0.5, "stage": state, "error": self.error,
                "avatar_id": "a1" if state == "succeeded" else None}

    def cancel(self, job_id):
        self.cancelled = True
        self.states = ["cancelled"]
        return {"job_id": job_id, "state": "running"}

    def download_bundle(self, avatar_id, dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"zip")
        self.downloaded = dest
        return dest


@pytest.fixture
def portrait(tmp_path):
    path = tmp_path / "face.png"
    path.write_bytes(b"\x89PNG")
    return str(path)


def test_options_map_presets_and_overrides():
    assert job_options("draft", 0, 3, -1) == {"quality": "draft", "seed": 3}
    assert job_options("high", 500, 0, 0) == {"quality": "high", "seed": 0, "max_points": 500, "refine_steps": 0}
    assert job_options("draft", 0, 3, -1, carve=False) == {"quality": "draft", "seed": 3, "carve": False}
    assert job_options("draft", 0, 3, -1, anchor=False) == {"quality": "draft", "seed": 3, "anchor": False}
    with pytest.raises(CreateFailed, match="quality"):
        job_options("ultra", 0, 0, -1)


def test_success_downloads_the_bundle_and_reports_progress(portrait, tmp_path):
    client = ScriptedClient(["queued", "running", "succeeded"])
    seen = []
    path = create_avatar(lambda cancel: client, portrait, {"seed": 1}, tmp_path / "cache", seen.append, poll_s=0)
    assert path == tmp_path / "cache" / "avatars" / "a1.zip" and path.read_bytes() == b"zip"
    states = [p.state for p in seen]
    assert states[0] == "starting" and "uploading" in states and "running" in states and states[-1] == "downloading"
    assert all(a.progress <= b.progress for a, b in zip(seen, seen[1:]))


def test_a_failed_job_shows_the_servers_message(portrait, tmp_path):
    client = ScriptedClient(["running", "failed"], error={"code": "bad_image", "message": "no face was found"})
    with pytest.raises(CreateFailed, match="the portrait cannot be used: no face was found"):
        create_avatar(lambda cancel: client, portrait, {}, tmp_path, poll_s=0)


def test_missing_portrait_fails_before_the_backend_is_touched(tmp_path):
    touched = []
    with pytest.raises(CreateFailed, match="does not exist"):
        create_avatar(lambda cancel: touched.append(1), str(tmp_path / "nope.jpg"), {}, tmp_path)
    with pytest.raises(CreateFailed, match="choose a portrait"):
        create_avatar(lambda cancel: touched.append(1), "", {}, tmp_path)
    assert not touched


def test_backend_errors_become_create_failures(portrait, tmp_path):
    def dead(cancel):
        raise BackendError("unreachable", "cannot reach the backend at http://127.0.0.1:1")

    with pytest.raises(CreateFailed, match="cannot reach"):
        create_avatar(dead, portrait, {}, tmp_path)


def test_cancel_sends_delete_and_ends_cancelled(portrait, tmp_path):
    client = ScriptedClient(["running"])
    cancel = threading.Event()
    submit = client.submit
    client.submit = lambda path, options: (cancel.set(), submit(path, options))[1]  # artist cancels mid-job
    with pytest.raises(Cancelled):
        create_avatar(lambda event: client, portrait, {}, tmp_path, cancel=cancel, poll_s=0)
    assert client.cancelled and client.downloaded is None


def test_cancel_before_upload_uploads_nothing(portrait, tmp_path):
    client = ScriptedClient(["running"])
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        create_avatar(lambda event: client, portrait, {}, tmp_path, cancel=cancel, poll_s=0)
    assert not hasattr(client, "options")


def test_runner_thread_ends_in_importing_with_the_bundle(portrait, tmp_path):
    client = ScriptedClient(["running", "succeeded"])
    runner = JobRunner(lambda cancel: client, portrait, {}, tmp_path, poll_s=0).start()
    final = runner.join(30)
    assert final.state == "importing" and final.bundle_path.endswith("a1.zip")
    failing = JobRunner(lambda cancel: client, str(tmp_path / "missing.png"), {}, tmp_path).start()
    assert failing.join(30).state == "failed" and "does not exist" in failing.snapshot().error
