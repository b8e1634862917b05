"""The one backend the add-on talks to: a local process it owns, or a remote URL. No bpy here.

`ensure()` (worker threads only: it may start a process and wait for it) answers a `Client` for a backend
that is up and accepts our token, restarting a local process that died, within a `RestartPolicy`.
`watch()` is cheap (no network) and is what a Blender timer calls to notice a dead process.
`stop()` stops the local process tree; the add-on calls it on disable, on Blender quit (atexit) and when
a new file is loaded only if the user asked to stop. One module-level `MANAGER` serves the add-on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

from .backend_process import (
    BackendProcess,
    BackendProcessError,
    LaunchSettings,
    RestartPolicy,
)
from .http_client import BackendError, Client


@dataclass(frozen=True)
class BackendConfig:
    mode: str = "local"  # "local" | "remote"
    launch: LaunchSettings | None = None  # local
    url: str = ""  # remote
    token: str = ""  # remote


class BackendManager:
    def __init__(self, policy: RestartPolicy | None = None):
        self._lock = threading.RLock()
        self.config = BackendConfig()
        self.process: BackendProcess | None = None
        self.policy = policy or RestartPolicy()
        self.restarts = 0
        self.state = "stopped"  # stopped | starting | running | died | error | remote
        self.message = ""
        self._wanted = False  # a local process should be running (started and not stopped by the user)

    # ---------------------------------------------------------------------------- configuration
    def configure(self, config: BackendConfig) -> None:
        """New settings apply at the next start; a running process started with other settings is stopped."""
        with self._lock:
            old = self.config
            self.config = config
            if self.process is not None and (config.mode != "local" or _launch_key(old) != _launch_key(config)):
                self._stop_process()

    # ---------------------------------------------------------------------------- use
    def ensure(self, cancel: threading.Event | None = None) -> Client:
        """A client for a live backend that accepts our token; starts or restarts the local one."""
        with self._lock:
            config = self.config
            if config.mode == "remote":
                return self._check(Client(config.url, config.token), remote=True)
            if config.launch is None:
                raise BackendProcessError("the local backend is not configured")
            if self.process is not None and self.process.alive() and self.process.ready is not None:
                ready = self.process.ready
                try:
                    return self._check(Client(ready.url, ready.token), remote=False)
                except BackendError as exc:
                    # A killed process looks alive until its threads are torn down and it can be reaped; if it
                    # was dying, restart it below instead of failing the artist's request.
                    if exc.code != "unreachable" or self._process_alive():
                        raise
            if self.process is not None:  # it was started and has died since
                died = self.process
                self.process = None
                died.stop()
                if not self.policy.allow():
                    self.state = "error"
                    self.message = ("the local backend keeps stopping; see its log: "
                                    f"{died.settings.log_path}")
                    raise BackendProcessError(self.message)
                self.restarts += 1
            self.state, self.message = "starting", "starting the backend…"
            process = BackendProcess(config.launch)
            try:
                ready = process.start(cancel=cancel)
            except BackendProcessError as exc:
                self.state, self.message = "error", str(exc)
                raise
            self.process, self._wanted = process, True
            self.state, self.message = "running", f"backend {ready.version} on port {ready.port}"
            return self._check(Client(ready.url, ready.token), remote=False)

    def _check(self, client: Client, *, remote: bool) -> Client:
        """Health, then /v1/ready (proves the token). A model still loading is fine: jobs queue meanwhile."""
        try:
            for attempt in range(20):  # a just-started backend on a loaded machine may reset the first connection
                try:
                    client.health()
                    break
                except BackendError as exc:
                    if remote or exc.code != "unreachable" or attempt == 19 or not self._process_alive():
                        raise
                    time.sleep(0.25)
            client.ready()
        except BackendError as exc:
            if exc.code == "not_ready" and "failed" not in exc.message and "stopped" not in exc.message:
                return client
            self.state, self.message = "error", str(exc)
            raise
        if remote:
            self.state, self.message = "remote", f"remote backend at {client.url}"
        return client

    def _process_alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def watch(self) -> str:
        """Cheap and never waits (main thread): notices a local process that died. Answers the state."""
        if not self._lock.acquire(blocking=False):  # a worker is starting the backend right now
            return self.state
        try:
            if self.process is not None and not self.process.alive() and self.state == "running":
                code = self.process.proc.poll() if self.process.proc else None
                self.state = "died"
                self.message = f"the backend stopped (exit code {code}); restarting it"
            return self.state
        finally:
            self._lock.release()

    def wants_restart(self) -> bool:
        """A process the user started has died: the add-on restarts it (on a worker thread)."""
        with self._lock:
            return self._wanted and self.state == "died"

    def stop(self) -> None:
        with self._lock:
            self._wanted = False
            self._stop_process()
            self.state, self.message = "stopped", ""

    def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop()

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self.process.pid if self.process is not None else None


def _launch_key(config: BackendConfig):
    return (config.mode, replace(config.launch, log_path=None) if config.launch else None)


MANAGER = BackendManager()
