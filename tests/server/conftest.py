"""Fixtures for the service tests: tiny generator checkpoints, a rendered portrait, in-process apps and
real `python -m pointillist.server` processes on loopback.

Checkpoints are random tiny generators (seconds per job); the "slow" one is shaped so AR decoding
always runs to its budget (the final norm is a constant and coordinate logits fall with the level, so
it walks the grid in small steps and never chooses END): jobs on it stay in the `generate` stage long
enough to cancel, kill or shut down mid-decoding, deterministically.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 600.0  # generous bound for jobs on a shared, loaded 2-core machine (never a timing assertion)


def _tiny_generator(head, **ar_overrides):
    from ..generators import tiny_generator

    return tiny_generator(head, **ar_overrides)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, head) -> Path:
    from pointillist.model.checkpoint import save_generator

    from ..generators import complete_by_fallback

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    # its avatars are complete only through create's fallback to the fitted head's surface (tests/generators.py)
    save_generator(path, complete_by_fallback(_tiny_generator(head)), {"name": "tiny, complete by fallback"})
    return path


@pytest.fixture(scope="session")
def slow_checkpoint(tmp_path_factory, head) -> Path:
    import torch
    from pointillist.model.checkpoint import save_generator

    model = _tiny_generator(head, max_points=4096)
    ar, end = model.ar, model.tokenizer.end
    levels = model.tokenizer.levels
    with torch.no_grad():
        bias = torch.nn.functional.normalize(torch.randn(ar.config.dim), dim=0) * 5
        ar.norm.weight.zero_()
        ar.norm.bias.copy_(bias)
        unit = bias / bias.norm()
        ar.tok_emb.weight[end] = -10 * bias  # END is never likely
        ar.tok_emb.weight[:levels] = -0.6 * torch.arange(levels, dtype=torch.float32)[:, None] * unit[None]
    from ..generators import opaque_gaussians

    path = tmp_path_factory.mktemp("ckpt") / "slow.safetensors"
    # a job it finishes is complete through create's fallback to the fitted head's surface (tests/generators.py)
    save_generator(path, opaque_gaussians(model), {"name": "tiny slow (never ends)"})
    return path


@pytest.fixture(scope="session")
def portrait_png(head) -> bytes:
    from PIL import Image
    from pointillist.avatar.animate import AvatarAnimator
    from pointillist.avatar.controls import FaceControls
    from pointillist.preview import ViewSpec, render_frame
    from pointillist.synth.procedural import make_procedural_avatar

    avatar = make_procedural_avatar(4, head, hair_style="short")
    image = render_frame(AvatarAnimator(avatar, head), FaceControls(),
                         ViewSpec(yaw_deg=10, width=512, height=512, radius=0.7))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def wall_png() -> bytes:
    """A valid image with no face in it: accepted at upload, fails in the job."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


FAST = {"max_points": 700, "refine_steps": 0}  # tests/generators.py: FALLBACK_POINTS
# an untrained model's points land all over the portrait: without carving it writes to its whole budget
SLOW = {"max_points": 4096, "refine_steps": 0, "carve": False}


# ------------------------------------------------------------------------------------ in process
class InProcess:
    """A service app with its lifespan running, driven by Starlette's TestClient (Host 127.0.0.1:8000)."""

    PORT = 8000

    def __init__(self, data_dir: Path, *, token: str = "t" * 43, raise_server_exceptions: bool = True, **config):
        import warnings

        with warnings.catch_warnings():  # Starlette 1.x nudges toward httpx2; httpx works the same here
            warnings.filterwarnings("ignore", message=".*httpx2")
            from starlette.testclient import TestClient

        from pointillist.server.app import create_app
        from pointillist.server.config import ServerConfig

        self.token = token
        self.app = create_app(ServerConfig(data_dir=data_dir, token=token, port=self.PORT, **config))
        self.service = self.app.service
        self.client = TestClient(self.app, base_url=f"http://127.0.0.1:{self.PORT}",
                                 raise_server_exceptions=raise_server_exceptions)
        self.auth = {"Authorization": f"Bearer {token}"}

    def __enter__(self):
        self.client.__enter__()
        return self

    def __exit__(self, *exc):
        self.client.__exit__(*exc)

    def request(self, method: str, url: str, **kw):
        headers = {**self.auth, **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)

    def submit(self, image: bytes, options: dict | None = None, **kw):
        data = {"options": json.dumps(options)} if options is not None else None
        return self.request("POST", "/v1/avatars", files={"image": ("portrait.png", image, "image/png")}, data=data, **kw)

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, until=lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
             timeout: float = WAIT_S, interval: float = 0.05) -> dict:
        return wait_for(lambda: self.job(job_id), until, timeout, interval)


def wait_for(fetch, until, timeout: float = WAIT_S, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    value = fetch()
    while not until(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout:.0f} s; last value: {value}")
        time.sleep(interval)
        value = fetch()
    return value


@pytest.fixture(scope="session")
def fast_app(tmp_path_factory, tiny_checkpoint):
    """One in-process service on the fast tiny checkpoint, shared by the tests that run real jobs."""
    with InProcess(tmp_path_factory.mktemp("fast-data"), checkpoint=tiny_checkpoint) as app:
        wait_for(lambda: app.request("GET", "/v1/ready").status_code, lambda s: s == 200)
        yield app


@pytest.fixture(scope="session")
def finished_job(fast_app, portrait_png) -> dict:
    """A job that ran to a published avatar (upload -> queue -> pipeline -> validated bundle)."""
    response = fast_app.submit(portrait_png, FAST)
    assert response.status_code == 202, response.text
    job = fast_app.wait(response.json()["job_id"])
    assert job["state"] == "succeeded", job
    return job


# ------------------------------------------------------------------------------------ processes
class ServeProcess:
    """`python -m pointillist.server …` on loopback; reads the ready line, logs go to a file."""

    def __init__(self, data_dir: Path, *args: str, log_path: Path | None = None, expect_ready: bool = True):
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "PYTHONPATH": str(ROOT / "backend") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.data_dir = data_dir
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, "-m", "pointillist.server", "--data-dir", str(data_dir), *args],
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=ROOT)
        self.ready: dict | None = None
        if expect_ready:
            line = self._read_line(timeout=WAIT_S)
            if not line:
                self.proc.kill()
                raise AssertionError(f"no ready line; exit {self.proc.wait()}; log:\n{self.log()}")
            self.ready = json.loads(line)
            self.url = f"http://127.0.0.1:{self.ready['port']}"
            self.token = self.ready["token"]
            import httpx

            self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"},
                                       timeout=120)

    def _read_line(self, timeout: float) -> bytes:
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return out[0].strip() if out else b""

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def submit(self, image: bytes, options: dict | None = None, **kw):
        data = {"options": json.dumps(options)} if options is not None else None
        return self.client.post("/v1/avatars", files={"image": ("p.png", image, "image/png")}, data=data, **kw)

    def wait(self, job_id: str, until=lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
             timeout: float = WAIT_S) -> dict:
        return wait_for(lambda: self.job(job_id), until, timeout, 0.1)

    def wait_idle(self) -> None:
        """Until no job is queued or running (other tests may have left some)."""
        def queue():
            return self.client.get("/v1/ready").json()["queue"]

        wait_for(queue, lambda q: q["queued"] == 0 and q["running"] is None, interval=0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def kill(self) -> int:
        self.proc.kill()  # SIGKILL: no clean-up of any kind
        code = self.proc.wait()
        self.close()
        return code

    def close(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, tiny_checkpoint):
    """One real service process (fast checkpoint) for end-to-end, fuzz and load tests."""
    server = ServeProcess(tmp_path_factory.mktemp("live-data"), "--checkpoint", str(tiny_checkpoint))
    wait_for(lambda: server.client.get("/v1/ready").status_code, lambda s: s == 200)
    yield server
    if server.proc.poll() is None:
        server.stop()
