"""A short, bounded load test on loopback: concurrent health and render requests against the real
process for a few seconds; every answer is a 200 and the service (worker included) still answers after."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
from pointillist.server.render_payload import (
    FrameObject,
    ObjectAttributes,
    RenderRequest,
    decode_raw_image,
    encode_object,
    encode_render,
)

from .conftest import FAST

pytestmark = pytest.mark.e2e

SECONDS = 3.0
HEALTH_CLIENTS = 4
RENDER_CLIENTS = 4  # = the service's default bound on renders in flight, so no 503 is expected


def test_bounded_load_on_health_and_render(live_server, portrait_png):
    rng = np.random.default_rng(0)
    n = 5000
    dirs = rng.normal(size=(n, 3))
    means = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * 0.1).astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    attrs = ObjectAttributes(opacities=np.full(n, 0.8, np.float32), scales=np.full((n, 3), 0.004, np.float32),
                             colors=rng.uniform(0, 1, (n, 3)).astype(np.float32))
    assert live_server.client.put("/v1/objects/load", content=encode_object(attrs),
                                  headers={"Content-Type": "application/octet-stream"}).status_code == 200
    from pointillist.render.camera import fov_to_K, orbit_viewmat

    frame = encode_render(RenderRequest(width=128, height=128, near=0.01, far=10.0, background=np.zeros(3, np.float32),
                                        viewmat=orbit_viewmat(0.0, 0.0, 0.6), K=fov_to_K(30.0, 128, 128),
                                        objects=[FrameObject("load", means, quats)], raw=True))
    results: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + SECONDS
    auth = {"Authorization": f"Bearer {live_server.token}"}

    def worker(kind: str):
        with httpx.Client(base_url=live_server.url, headers=auth, timeout=120) as client:
            while time.monotonic() < stop:
                try:
                    if kind == "health":
                        r = client.get("/v1/health")
                    else:
                        r = client.post("/v1/render", content=frame, headers={"Content-Type": "application/octet-stream"})
                        if r.status_code == 200:
                            rgba, _ = decode_raw_image(r.content)
                            assert rgba.shape == (128, 128, 4) and rgba[..., 3].max() > 0.5
                except Exception as exc:  # noqa: BLE001 - collected and reported below
                    with lock:
                        errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    results[(kind, r.status_code)] += 1

    # a job in the queue meanwhile, so the worker is busy while the HTTP side is under load
    job_id = live_server.submit(portrait_png, {**FAST, "seed": 21}).json()["job_id"]
    threads = [threading.Thread(target=worker, args=(kind,)) for kind in
               ["health"] * HEALTH_CLIENTS + ["render"] * RENDER_CLIENTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert set(results) == {("health", 200), ("render", 200)}, results
    assert results[("health", 200)] > 0 and results[("render", 200)] > 0
    assert live_server.client.get("/v1/ready").status_code == 200
    job = live_server.wait(job_id)
    assert job["state"] == "succeeded"  # the worker finished its job while the HTTP side was loaded
