"""The local backend process: which Python runs it, how it is launched, its ready line, and its shutdown.

No bpy here: the add-on's operators and the tests drive these functions directly. The backend is
`<python> -m pointillist.server --port 0 …`; once listening it prints one JSON line on stdout
(`{"port", "token", "pid", "version", "host"}`) and logs to stderr, which goes to a log file so a full pipe
can never stall it. The process runs in its own process group (POSIX) or process group + job of its own
(Windows), so stopping it stops everything it started (e.g. torch worker processes) too.

Platform code is small and explicit: Linux and macOS share the POSIX path (new session, signal the
group); Windows uses CREATE_NEW_PROCESS_GROUP and `taskkill /T`. Only Linux is tested here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

IS_WINDOWS = sys.platform == "win32"
READY_TIMEOUT_S = 180.0  # torch import + model load on a slow laptop; the worker thread waits, never the UI


class BackendProcessError(RuntimeError):
    """The local backend could not be started (message says what to fix)."""


# ------------------------------------------------------------------------------------ interpreters
def venv_python(venv: Path) -> Path:
    """The interpreter inside a virtual environment, per platform."""
    return venv / "Scripts" / "python.exe" if IS_WINDOWS else venv / "bin" / "python"


def checkout_root(start: Path | None = None) -> Path | None:
    """The repository root when the add-on runs from a source checkout (it has backend/pointillist)."""
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        if (parent / "backend" / "pointillist" / "__init__.py").is_file() and (parent / "pyproject.toml").is_file():
            return parent
    return None


def detect_python(private_venv: Path | None, start: Path | None = None) -> str:
    """The Python for the local backend: the checkout's `.venv` (the README's environment) when the add-on
    runs from a checkout, else the private venv made by Install Backend; "" when neither exists."""
    root = checkout_root(start)
    candidates = [venv_python(root / ".venv")] if root else []
    if private_venv is not None:
        candidates.append(venv_python(private_venv))
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return ""


# ------------------------------------------------------------------------------------ launch
@dataclass(frozen=True)
class LaunchSettings:
    python: str
    data_dir: Path
    device: str = "auto"
    checkpoint: str = ""  # "" = the extension's bundled generator (or the backend's default)
    head: str = ""  # "" = the extension's bundled head template (or the backend's default)
    log_path: Path | None = None


def serve_command(settings: LaunchSettings) -> list[str]:
    """`python -m pointillist.server` (= `pointillist serve`) on a free loopback port."""
    if settings.device not in ("auto", "cpu", "cuda"):
        raise BackendProcessError(f"device must be auto, cpu or cuda, not {settings.device!r}")
    command = [settings.python, "-m", "pointillist.server", "--host", "127.0.0.1", "--port", "0",
               "--data-dir", str(settings.data_dir), "--device", settings.device]
    if settings.checkpoint:
        command += ["--checkpoint", settings.checkpoint]
    if settings.head:
        command += ["--head", settings.head]
    return command


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Blender's environment minus what would point the backend's Python at Blender's own runtime."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONHOME", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    assets = Path(__file__).absolute().parent / "assets"  # not resolve(): the dev extension links files
    if assets.is_dir():  # an installed backend has no blender_assets/: defaults come from the extension
        env["POINTILLIST_ASSETS"] = str(assets)
    return env


@dataclass(frozen=True)
class ReadyInfo:
    port: int
    token: str
    pid: int
    version: str
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_ready_line(line: bytes | str) -> ReadyInfo:
    """The one JSON ready line; anything else is an error naming what was read."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        raise BackendProcessError(f"the backend printed {text[:200]!r} instead of its JSON ready line") from None
    if not isinstance(value, dict):
        raise BackendProcessError(f"the backend's ready line is not a JSON object: {text[:200]!r}")
    try:
        port, pid = int(value["port"]), int(value["pid"])
        token, version = value["token"], str(value["version"])
    except (KeyError, TypeError, ValueError):
        raise BackendProcessError(f"the backend's ready line lacks port/token/pid/version: {text[:200]!r}") from None
    if not 0 < port < 65536 or not isinstance(token, str) or not token:
        raise BackendProcessError(f"the backend's ready line has no usable port or token: {text[:200]!r}")
    return ReadyInfo(port=port, token=token, pid=pid, version=version, host=str(value.get("host") or "127.0.0.1"))


def _spawn_flags() -> dict:
    if IS_WINDOWS:
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}  # its own process group: killpg reaches its children


def _log_tail(path: Path | None, limit: int = 1500) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[-limit:].strip()


class BackendProcess:
    """One launched backend: start (waits for the ready line), alive, stop (the whole process tree)."""

    def __init__(self, settings: LaunchSettings):
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.ready: ReadyInfo | None = None
        self._log = None

    def start(self, timeout: float = READY_TIMEOUT_S, cancel: threading.Event | None = None) -> ReadyInfo:
        python = self.settings.python
        if not python:
            raise BackendProcessError("no Python for the local backend: set one in the add-on preferences or "
                                      "press Install Backend")
        if not Path(python).is_file():
            raise BackendProcessError(f"the backend Python {python} does not exist: fix it in the add-on "
                                      f"preferences or press Install Backend")
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.settings.log_path or self.settings.data_dir.parent / "backend.log"
        self.settings = LaunchSettings(**{**self.settings.__dict__, "log_path": log_path})
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
        try:
            self.proc = subprocess.Popen(serve_command(self.settings), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=self._log, env=child_environment(),
                                         cwd=str(self.settings.data_dir), **_spawn_flags())
        except OSError as exc:
            self._close_log()
            raise BackendProcessError(f"cannot run {python}: {exc.strerror or exc}") from None
        line = self._read_line(timeout, cancel)
        if not line:
            try:
                code = self.proc.wait(2)  # stdout closed: it is exiting, or give up on it
            except subprocess.TimeoutExpired:
                code = None
            self.stop()
            if cancel is not None and cancel.is_set():
                raise BackendProcessError("cancelled while the backend was starting")
            why = f"exited with code {code}" if code is not None else f"printed no ready line within {timeout:.0f} s"
            tail = _log_tail(log_path)
            raise BackendProcessError(f"the local backend {why}" + (f"; its log ends:\n{tail}" if tail else ""))
        try:
            self.ready = parse_ready_line(line)
        except BackendProcessError:
            self.stop()
            raise
        return self.ready

    def _read_line(self, timeout: float, cancel: threading.Event | None) -> bytes:
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while reader.is_alive() and time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
            reader.join(0.1)
            if self.proc.poll() is not None:
                reader.join(1.0)
                break
        return out[0].strip() if out else b""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Graceful stop of the whole tree (SIGTERM to the group / CTRL_BREAK), then a hard kill."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                _terminate_tree(proc)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            _kill_tree(proc)  # also reaps children the backend left behind, even if it exited itself
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _terminate_tree(proc: subprocess.Popen) -> None:
    if IS_WINDOWS:
        try:
            proc.send_signal(signal.CTRL_BREAK_EVENT)  # the group made by CREATE_NEW_PROCESS_GROUP
        except OSError:
            pass
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the group id is the pid (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_tree(proc: subprocess.Popen) -> None:
    if IS_WINDOWS:
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True, check=False)
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------------------ restarts
@dataclass
class RestartPolicy:
    """Restart a backend that died, but not forever: at most `max_restarts` within `window_s` seconds
    (a backend that crashes at start-up must surface its error, not loop)."""

    max_restarts: int = 3
    window_s: float = 300.0
    history: list[float] = field(default_factory=list)

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.history = [t for t in self.history if now - t < self.window_s]
        if len(self.history) >= self.max_restarts:
            return False
        self.history.append(now)
        return True
