"""Checklist items 5, 16, 17: the server chooses every path (strict ids, realpath containment, links
refused), outputs are published atomically after validation, and start-up cleans up after a crash."""

from __future__ import annotations

import json
import os

import pytest
from pointillist.server.jobs import JobManager
from pointillist.server.storage import DataDir, StorageError, new_id


# ------------------------------------------------------------------------------- item 5: paths
@pytest.mark.parametrize("bad", ["../x", "..", ".", "a/b", "a\\b", "x\x00y", "", "0" * 31, "0" * 33, "G" * 32,
                                 "A" * 32, "%2e%2e%2f" + "0" * 23, "0" * 31 + "\n", "０" * 32])
def test_item05_ids_must_match_the_strict_pattern(tmp_path, bad):
    storage = DataDir(tmp_path)
    for make in (storage.job_record, storage.upload, storage.avatar_bundle, storage.avatar_record, storage.scratch):
        with pytest.raises(StorageError):
            make(bad)
    assert storage.job_record("0" * 32).parent == storage.root / "jobs"


def test_item05_paths_stay_inside_their_folder_after_realpath(tmp_path):
    storage = DataDir(tmp_path / "data")
    outside = tmp_path / "outside.zip"
    outside.write_bytes(b"secret")
    avatar_id = new_id()
    (storage.root / "avatars" / f"{avatar_id}.zip").symlink_to(outside)  # a planted link
    with pytest.raises(StorageError, match="resolves outside|symbolic link"):
        storage.avatar_bundle(avatar_id)
    with pytest.raises(StorageError):
        storage.inside("avatars", "../outside.zip")
    with pytest.raises(StorageError):
        storage.inside("elsewhere", "x")
    for name in ("..", "inner/../x", "/etc/passwd"):
        with pytest.raises(StorageError):
            storage.inside("avatars", name)


def test_item05_a_linked_data_folder_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data" / "avatars").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StorageError, match="symbolic link"):
        DataDir(tmp_path / "data")


def test_item05_reads_never_follow_links(tmp_path):
    storage = DataDir(tmp_path / "data")
    target = tmp_path / "target.json"
    target.write_text("{}")
    link = storage.root / "jobs" / "link.json"
    link.symlink_to(target)
    with pytest.raises(StorageError):
        storage.read_bytes(link, 100)


def test_item05_planted_links_and_traversal_are_never_served(fast_app, tmp_path):
    secret = tmp_path / "secret.zip"
    secret.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    avatar_id = new_id()
    root = fast_app.service.storage.root
    (root / "avatars" / f"{avatar_id}.zip").symlink_to(secret)
    (root / "avatars" / f"{avatar_id}.json").write_text(json.dumps({"avatar_id": avatar_id}))
    try:
        r = fast_app.request("GET", f"/v1/avatars/{avatar_id}/bundle")
        assert r.status_code == 404 and r.json()["error"]["code"] == "avatar_not_found"
        assert avatar_id not in {a["avatar_id"] for a in fast_app.request("GET", "/v1/avatars").json()["avatars"]}
    finally:
        (root / "avatars" / f"{avatar_id}.zip").unlink()
        (root / "avatars" / f"{avatar_id}.json").unlink()
    for path in ("/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/avatars/..%2Fjobs/bundle", "/v1/jobs/%2e%2e",
                 "/v1/avatars/" + "0" * 32 + "%2F..%2F..%2Fjobs/bundle", "/v1/objects/..%2Fx"):
        for method in ("GET", "DELETE", "PUT"):
            r = fast_app.request(method, path)
            assert r.status_code in (404, 405, 422), (method, path, r.status_code)
            assert r.headers["content-type"] == "application/json"


# ------------------------------------------------------------------------------- item 16: atomic outputs
def test_item16_publish_validates_before_anything_is_visible(tmp_path):
    storage = DataDir(tmp_path)
    staged = storage.scratch(new_id()) / "bundle.zip"
    staged.write_bytes(b"half a bundle")
    final = storage.avatar_bundle(new_id())

    def refuse(path):
        assert path == staged and not final.exists()
        raise ValueError("invalid bundle")

    with pytest.raises(ValueError):
        storage.publish(staged, final, refuse)
    assert not final.exists() and staged.exists()
    storage.publish(staged, final, lambda path: None)
    assert final.read_bytes() == b"half a bundle" and not staged.exists()


def test_item16_record_writes_are_atomic(tmp_path, monkeypatch):
    storage = DataDir(tmp_path)
    path = storage.job_record(new_id())
    storage.write_json(path, {"state": "queued"})

    class Boom(Exception):
        pass

    def explode(value, *args, **kwargs):
        raise Boom()

    monkeypatch.setattr(json, "dumps", explode)
    with pytest.raises(Boom):
        storage.write_json(path, {"state": "running"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"state": "queued"}
    from pointillist import atomic

    real_fsync = os.fsync

    def fail_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fail_fsync)
    with pytest.raises(OSError):
        storage.write_json(path, {"state": "succeeded"})
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert json.loads(path.read_text()) == {"state": "queued"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


# ------------------------------------------------------------------------------- item 17: start-up clean-up
class _NeverRuns:
    def prepare(self):
        pass

    def avatar_for_job(self, job_id):
        from pointillist.server.avatars import AvatarStore

        return AvatarStore(self.storage).for_job(job_id)

    def run(self, *args):
        raise AssertionError("no job should run")


def _job(storage: DataDir, state: str, **extra) -> str:
    job_id = new_id()
    storage.write_json(storage.job_record(job_id), {
        "job_id": job_id, "state": state, "progress": 0.3, "stage": "generate", "error": None, "avatar_id": None,
        "created_at": "t", "updated_at": "t", "cancel_requested": False, "options": {}, "idempotency_key": None,
        "fingerprint": "f", **extra})
    return job_id


def test_item17_start_up_marks_interrupted_jobs_and_removes_strays(tmp_path):
    storage = DataDir(tmp_path)
    running, queued = _job(storage, "running"), _job(storage, "queued")
    done = _job(storage, "succeeded", avatar_id=new_id())
    storage.write_bytes(storage.upload(running), b"portrait")
    (storage.scratch(running) / "bundle.zip").write_bytes(b"partial zip")  # what a kill -9 leaves
    (storage.root / "avatars" / ".deadbeef.zip.x1y2.tmp").write_bytes(b"partial")  # an interrupted atomic write
    (storage.root / "jobs" / f".{running}.json.abc.tmp").write_text("{")
    orphan = new_id()
    storage.write_json(storage.avatar_record(orphan), {"avatar_id": orphan})  # listing without its bundle
    (storage.root / "uploads" / "junk-link").symlink_to(tmp_path)
    runner = _NeverRuns()
    runner.storage = storage
    manager = JobManager(storage, runner)
    manager.start()
    try:
        for job_id in (running, queued):
            job = manager.get(job_id)
            assert job["state"] == "failed" and job["error"]["code"] == "interrupted", job
            assert json.loads(storage.job_record(job_id).read_text())["error"]["code"] == "interrupted"
        assert manager.get(done)["state"] == "succeeded"
        assert not list((storage.root / "tmp").iterdir())
        assert not list((storage.root / "uploads").iterdir())
        assert sorted(p.name for p in (storage.root / "avatars").iterdir()) == []
        assert sorted(p.name for p in (storage.root / "jobs").iterdir()) == sorted(f"{j}.json" for j in (running, queued, done))
    finally:
        manager.shutdown(5)


def test_item17_a_job_whose_avatar_was_published_before_the_crash_succeeded(tmp_path):
    storage = DataDir(tmp_path)
    job_id = _job(storage, "running")
    avatar_id = new_id()
    storage.write_json(storage.avatar_record(avatar_id), {"avatar_id": avatar_id, "job_id": job_id})
    storage.write_bytes(storage.avatar_bundle(avatar_id), b"PK")
    runner = _NeverRuns()
    runner.storage = storage
    manager = JobManager(storage, runner)
    manager.start()
    try:
        job = manager.get(job_id)
        assert job["state"] == "succeeded" and job["avatar_id"] == avatar_id and job["error"] is None
    finally:
        manager.shutdown(5)


def test_item17_one_service_per_data_folder(tmp_path):
    """A second service on the same folder would mark the first one's running jobs interrupted: refused."""
    first, second = DataDir(tmp_path), DataDir(tmp_path)
    first.lock()
    with pytest.raises(StorageError, match="another pointillist service"):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()
