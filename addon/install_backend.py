"""Install Backend: a private virtual environment holding the backend wheel the extension carries.

An artist who never cloned the repository gets `pointillist serve` from the extension zip itself: this
module makes `<extension user dir>/backend-venv` with a Python 3.11 (the backend's `requires-python`),
pip-installs `wheels/pointillist-*.whl` with its pinned dependencies (torch and friends, from PyPI), and
checks that the result imports. It builds in `backend-venv.partial` and swaps it in only when the check
passes, so a failed or cancelled install never leaves a half-made backend behind. No bpy here; the
operator runs `install()` on a worker thread and shows `InstallProgress` snapshots.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .backend_process import IS_WINDOWS, child_environment, venv_python

BACKEND_PYTHON = (3, 11)


class InstallError(RuntimeError):
    """The install could not complete (message says why and what to do)."""


@dataclass(frozen=True)
class InstallProgress:
    state: str = "idle"  # idle | running | done | failed | cancelled
    progress: float = 0.0
    stage: str = ""
    error: str = ""


def bundled_backend_wheel(addon_dir: Path) -> Path | None:
    """The backend wheel build_addon.py put in the extension (`wheels/pointillist-<v>-py3-none-any.whl`)."""
    wheels = sorted((addon_dir / "wheels").glob("pointillist-*.whl"))
    return wheels[-1] if wheels else None


def python_version(python: str) -> tuple[int, int] | None:
    try:
        done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                              text=True, timeout=60, check=False)
    except OSError:
        return None
    parts = done.stdout.split()
    return (int(parts[0]), int(parts[1])) if done.returncode == 0 and len(parts) == 2 else None


def find_base_python(candidates: Sequence[str] = ()) -> str:
    """A Python 3.11 to make the venv from: explicit candidates, `python3.11` / the `py` launcher on PATH,
    then this interpreter (Blender 4.2-5.0 run 3.11; Blender 5.1+ runs 3.13, which the backend does not
    support yet). "" when none is found."""
    names = list(candidates)
    names += ["py"] if IS_WINDOWS else ["python3.11"]
    names.append(sys.executable)
    for name in names:
        path = shutil.which(name) or (name if name and Path(name).is_file() else None)
        if not path:
            continue
        if Path(path).name.lower() in ("py", "py.exe"):
            path_311 = subprocess.run([path, "-3.11", "-c", "import sys; print(sys.executable)"], capture_output=True,
                                      text=True, check=False).stdout.strip()
            if path_311:
                return path_311
            continue
        if python_version(path) == BACKEND_PYTHON:
            return path
    return ""


def install_commands(base_python: str, venv: Path, wheel: Path, pip_args: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """(stage text, command) steps; `venv` is the folder being built."""
    py = str(venv_python(venv))
    return [
        ("creating the virtual environment", [base_python, "-m", "venv", str(venv)]),
        ("installing the backend and its dependencies (torch is large: this can take minutes)",
         [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
          *pip_args, str(wheel)]),
        ("checking the installed backend", [py, "-c", "import pointillist, sys; print(pointillist.__version__)"]),
    ]


PIP_LINE = re.compile(r"^(Collecting|Downloading|Installing collected packages|Successfully installed|Processing)\b")


def needs_network(pip_args: Sequence[str]) -> bool:
    return "--no-index" not in pip_args


def install(base_python: str, target: Path, wheel: Path, *, pip_args: Sequence[str] = (), online_access: bool = True,
            report: Callable[[InstallProgress], None] = lambda p: None, cancel: threading.Event | None = None,
            log_path: Path | None = None) -> Path:
    """Make `target` a venv with the backend installed; answers its Python. Raises InstallError."""
    cancel = cancel or threading.Event()
    if needs_network(pip_args) and not online_access:
        raise InstallError("Blender's Allow Online Access is off, and Install Backend downloads the backend's "
                           "dependencies (torch and others) from PyPI: turn it on in Preferences > System > "
                           "Network, or give pip a local wheelhouse (--no-index --find-links DIR)")
    if not base_python:
        raise InstallError("no Python 3.11 found to make the backend's environment: install Python 3.11 and set "
                           "it as Base Python in the add-on preferences")
    if not wheel.is_file():
        raise InstallError(f"the backend wheel {wheel} is missing from the extension; reinstall the extension")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log_path = log_path or target.with_name(target.name + "-install.log")
    steps = install_commands(base_python, partial, wheel, pip_args)
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            for index, (stage, command) in enumerate(steps):
                report(InstallProgress("running", index / len(steps), stage))
                _run_step(command, stage, log, cancel, lambda line, i=index, s=stage: report(
                    InstallProgress("running", (i + 0.5) / len(steps), f"{s}: {line[:80]}")))
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report(InstallProgress("done", 1.0, "installed"))
    return str(venv_python(target))


def _run_step(command: list[str], stage: str, log, cancel: threading.Event, on_line: Callable[[str], None]) -> None:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", env=child_environment())
    except OSError as exc:
        raise InstallError(f"{stage} failed: cannot run {command[0]}: {exc.strerror or exc}") from None
    tail: list[str] = []

    def watch_cancel() -> None:
        while proc.poll() is None:
            if cancel.wait(0.2):
                proc.terminate()
                return

    threading.Thread(target=watch_cancel, daemon=True).start()
    for line in proc.stdout:
        log.write(line)
        line = line.rstrip()
        tail = (tail + [line])[-15:]
        if PIP_LINE.match(line):
            on_line(line)
    code = proc.wait()
    log.flush()
    if cancel.is_set():
        raise InstallError("cancelled")
    if code != 0:
        raise InstallError(f"{stage} failed (exit code {code}):\n" + "\n".join(tail))
