"""Everything a service instance is configured with, in one frozen dataclass (no web imports)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Request-size and work limits. Bodies over a limit answer 413 before they are read."""

    max_image_bytes: int = 32 * MiB  # the multipart `image` part
    max_options_bytes: int = 16 * 1024  # the multipart `options` part (JSON)
    max_multipart_overhead: int = 64 * 1024  # boundaries and part headers around them
    max_json_bytes: int = 64 * 1024  # any other body
    max_object_bytes: int = 256 * MiB  # PUT /v1/objects/{id}
    max_render_bytes: int = 64 * MiB  # POST /v1/render
    max_gaussians_per_object: int = 2_000_000
    max_registered_gaussians: int = 8_000_000  # all objects together; least recently used are dropped
    max_objects: int = 256
    max_objects_per_render: int = 64
    max_render_side: int = 8192
    max_render_pixels: int = 3840 * 2160 * 2
    max_queue: int = 8  # queued jobs (the running one not counted)
    max_pending_renders: int = 4  # renders running or waiting for the render thread
    retry_after_s: int = 5

    @property
    def max_upload_body(self) -> int:
        return self.max_image_bytes + self.max_options_bytes + self.max_multipart_overhead


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    token: str
    host: str = "127.0.0.1"
    port: int = 0
    allowed_hosts: tuple[str, ...] = ()  # extra Host names beyond the loopback ones
    checkpoint: Path | None = None  # None: the bundled generator
    head: Path | None = None  # None: the bundled head template (.npz only)
    device: str = "auto"
    shutdown_timeout_s: float = 10.0
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        object.__setattr__(self, "data_dir", Path(os.fspath(self.data_dir)))
