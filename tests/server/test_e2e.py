"""End to end: the real `python -m pointillist.server` process on loopback, driven over HTTP.

Upload -> job -> bundle download; cancel; `kill -9` mid-job then restart (the job is `failed` with code
`interrupted`, no partial bundle is visible, finished avatars and idempotency keys survive); SIGTERM with
a job running (graceful, within the limit); the ready line, the loopback bind, Host checks on the wire
and a log that never holds the token.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys

import pytest
from pointillist.avatar.bundle import avatar_from_members, read_zip_members
from pointillist.avatar.gaussians import validate_avatar

from .conftest import FAST, ROOT, SLOW, ServeProcess

pytestmark = pytest.mark.e2e


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (Linux /proc)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            with open(table) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]) if width == 8 else addr)
    return found


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


# ------------------------------------------------------------------------------- process start
def test_item01_item19_ready_line_and_loopback_bind(live_server):
    ready = live_server.ready
    assert set(ready) == {"port", "token", "pid", "version", "host"}
    assert ready["pid"] == live_server.proc.pid and ready["host"] == "127.0.0.1" and len(ready["token"]) >= 43
    if sys.platform.startswith("linux"):
        assert _listening_addresses(ready["port"]) == {"127.0.0.1"}
    r = live_server.client.get("/v1/health", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert live_server.client.get("/v1/ready").json()["ready"] is True


def test_item01_serve_refuses_a_public_bind_without_the_flags(tmp_path):
    for args, needle in ((["--host", "0.0.0.0"], "--allow-remote"),
                         (["--host", "0.0.0.0", "--allow-remote"], "--token-file")):
        done = subprocess.run([sys.executable, "-m", "pointillist.server", "--data-dir", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
        assert done.returncode == 2 and done.stdout == "" and needle in done.stderr
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_item17_a_second_service_on_the_same_folder_is_refused(live_server):
    done = subprocess.run([sys.executable, "-m", "pointillist.server", "--data-dir", str(live_server.data_dir)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert done.returncode == 2 and done.stdout == "" and "another pointillist service" in done.stderr
    assert live_server.client.get("/v1/ready").status_code == 200  # the first one is untouched


def test_item03_host_checks_on_the_wire(live_server):
    port, token = live_server.ready["port"], live_server.token
    for host_line in (b"Host: evil.example\r\n", b"Host: 127.0.0.1.nip.io:%d\r\n" % port, b"Host: \r\n"):
        answer = _raw_request(port, b"GET /v1/avatars HTTP/1.1\r\n" + host_line +
                              b"Authorization: Bearer " + token.encode() + b"\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 403") and b'"forbidden_host"' in answer, answer[:200]
    answer = _raw_request(port, b"GET /v1/health HTTP/1.0\r\n\r\n")  # no Host at all
    assert answer.split(b" ")[1] in (b"400", b"403"), answer[:200]


# ------------------------------------------------------------------------------- jobs over HTTP
def test_e2e_upload_job_bundle_download(live_server, portrait_png, head):
    live_server.wait_idle()
    r = live_server.submit(portrait_png, FAST)
    assert r.status_code == 202
    job = live_server.wait(r.json()["job_id"])
    assert job["state"] == "succeeded" and job["progress"] == 1.0
    bundle = live_server.client.get(f"/v1/avatars/{job['avatar_id']}/bundle")
    assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/zip"
    listed = {a["avatar_id"]: a for a in live_server.client.get("/v1/avatars").json()["avatars"]}
    assert listed[job["avatar_id"]]["sha256"] == hashlib.sha256(bundle.content).hexdigest()
    zip_path = live_server.log_path.with_suffix(".zip")
    zip_path.write_bytes(bundle.content)
    avatar = avatar_from_members(read_zip_members(zip_path), "download")
    validate_avatar(avatar, num_faces=head.num_faces, num_vertices=head.num_vertices)
    assert avatar.gaussians.num == listed[job["avatar_id"]]["gaussians"]
    # the tiny model's avatar came from create's fallback (tests/generators.py): the job record, the avatar
    # listing and the bundle all carry the same warning
    assert any("fitted head's surface" in w for w in job["warnings"])
    assert listed[job["avatar_id"]]["warnings"] == job["warnings"] == avatar.meta["warnings"]


def test_e2e_an_avatar_no_try_completes_fails_the_job_and_publishes_nothing(tmp_path, portrait_png, head):
    """A random tiny generator (half-transparent scattered points) makes nothing that passes the completeness
    check: the job fails with its own code and the coverage in the message, and no avatar is listed."""
    from pointillist.model.checkpoint import save_generator

    from ..generators import tiny_generator

    checkpoint = tmp_path / "scatter.safetensors"
    save_generator(checkpoint, tiny_generator(head), {"name": "tiny random"})
    server = ServeProcess(tmp_path / "data", "--checkpoint", str(checkpoint))
    try:
        job = server.wait(server.submit(portrait_png, {"max_points": 96, "refine_steps": 0}).json()["job_id"])
        assert job["state"] == "failed" and job["error"]["code"] == "incomplete_avatar", job
        assert "could not make a complete avatar" in job["error"]["message"] and job["avatar_id"] is None
        assert server.client.get("/v1/avatars").json()["avatars"] == []
    finally:
        assert server.stop() == 0


def test_item14_e2e_cancel_a_running_job(live_server, portrait_png):
    live_server.wait_idle()
    job_id = live_server.submit(portrait_png, {**FAST, "seed": 5}).json()["job_id"]
    live_server.wait(job_id, lambda j: j["state"] != "queued")
    r = live_server.client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code in (200, 202)
    job = live_server.wait(job_id)
    assert job["state"] == "cancelled" and job["avatar_id"] is None
    assert job_id not in {a["job_id"] for a in live_server.client.get("/v1/avatars").json()["avatars"]}


def test_item22_logs_never_contain_the_token(live_server):
    token = live_server.token
    import httpx

    with httpx.Client(base_url=live_server.url, timeout=60) as raw:
        raw.get(f"/v1/avatars?token={token}")  # a client putting it in the URL: 401, and logged redacted
        raw.get(f"/v1/jobs/{token}", headers={"Authorization": f"Bearer {token}"})
        raw.get("/v1/avatars", headers={"Authorization": f"Bearer {token}x"})
        raw.get(f"/v1/nope/{token}", headers={"Authorization": f"Bearer {token}"})
        raw.post("/v1/render", content=token.encode(),
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})
    log = live_server.log()
    assert "GET /v1/avatars" in log and "[redacted]" in log  # the requests were logged...
    assert token not in log  # ...without the token


# ------------------------------------------------------------------------------- crashes and restarts
def test_item16_item17_kill_9_mid_job_then_restart(tmp_path, slow_checkpoint, tiny_checkpoint, portrait_png):
    data = tmp_path / "data"
    first = ServeProcess(data, "--checkpoint", str(slow_checkpoint))
    try:
        done = first.wait(first.submit(portrait_png, FAST, headers={"Idempotency-Key": "keep-me"}).json()["job_id"])
        assert done["state"] == "succeeded"
        before = first.client.get(f"/v1/avatars/{done['avatar_id']}/bundle").content
        doomed = first.submit(portrait_png, SLOW).json()["job_id"]
        first.wait(doomed, lambda j: j["state"] == "running" and j["stage"] == "generate")
    finally:
        assert first.kill() == -signal.SIGKILL
    assert json.loads((data / "jobs" / f"{doomed}.json").read_text())["state"] == "running"  # as the crash left it
    assert list((data / "tmp").iterdir())  # the dead job's scratch folder is still there

    second = ServeProcess(data, "--checkpoint", str(tiny_checkpoint))
    try:
        job = second.job(doomed)
        assert job["state"] == "failed" and job["error"]["code"] == "interrupted" and job["avatar_id"] is None
        assert second.job(done["job_id"])["state"] == "succeeded"
        avatars = second.client.get("/v1/avatars").json()["avatars"]
        assert [a["avatar_id"] for a in avatars] == [done["avatar_id"]]  # no partial bundle visible
        assert second.client.get(f"/v1/avatars/{done['avatar_id']}/bundle").content == before
        assert sorted(p.name for p in (data / "avatars").iterdir()) == sorted(
            [f"{done['avatar_id']}.zip", f"{done['avatar_id']}.json"])
        assert not list((data / "tmp").iterdir()) and not list((data / "uploads").iterdir())
        replay = second.submit(portrait_png, FAST, headers={"Idempotency-Key": "keep-me"})
        assert replay.json()["job_id"] == done["job_id"]  # idempotency keys survive restarts too
        assert f"job {doomed} was running or queued when the service stopped: now failed (interrupted)" in second.log()
        assert "start-up clean-up removed" in second.log()
    finally:
        assert second.stop() == 0


def test_item18_sigterm_stops_gracefully_within_the_limit(tmp_path, slow_checkpoint, portrait_png):
    data = tmp_path / "data"
    server = ServeProcess(data, "--checkpoint", str(slow_checkpoint), "--shutdown-timeout", "20")
    job_id = server.submit(portrait_png, SLOW).json()["job_id"]
    server.wait(job_id, lambda j: j["state"] == "running" and j["stage"] == "generate")
    queued = server.submit(portrait_png, {**SLOW, "seed": 2}).json()["job_id"]
    code = server.stop(signal.SIGTERM)
    assert code == 0, server.log_path.read_text()[-2000:]
    for jid in (job_id, queued):
        record = json.loads((data / "jobs" / f"{jid}.json").read_text())
        assert record["state"] == "failed" and record["error"]["code"] == "interrupted", record
    assert not list((data / "avatars").iterdir()) and not list((data / "tmp").iterdir())
    log = server.log_path.read_text()
    assert "worker stopped" in log and "Traceback" not in log


def test_listening_socket_is_tcp_with_nodelay():
    """asyncio sets TCP_NODELAY on accepted sockets only when the listener's proto says TCP; without it
    every response waits for the client's delayed ACK (about 40 ms on Linux)."""
    from pointillist.server.main import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] > 0
    finally:
        sock.close()
