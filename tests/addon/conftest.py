"""Fixtures for the add-on's pure modules (no bpy): a fake backend package on PYTHONPATH."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def fake_backend(tmp_path, monkeypatch):
    """PYTHONPATH holds a `pointillist.server` that is fake_server.py; answers the child-pid file path."""
    pkg = tmp_path / "fakepkg" / "pointillist" / "server"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    shutil.copy(HERE / "fake_server.py", pkg / "__main__.py")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fakepkg"))
    child_pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_CHILD_PID_FILE", str(child_pid_file))
    return child_pid_file


def read_pid(path: Path) -> int:
    return int(path.read_text())


__all__ = ["os", "pid_alive", "read_pid"]
