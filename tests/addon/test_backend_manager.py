"""The manager: ensure() starts, checks health and token, restarts a dead backend within the policy."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from addon.backend_manager import BackendConfig, BackendManager
from addon.backend_process import BackendProcessError, LaunchSettings, RestartPolicy
from addon.http_client import BackendError

from .conftest import pid_alive, read_pid


def _local(tmp_path) -> BackendConfig:
    return BackendConfig(mode="local", launch=LaunchSettings(python=sys.executable, data_dir=tmp_path / "data"))


def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_ensure_starts_once_restarts_after_death_and_stop_ends_the_tree(fake_backend, tmp_path):
    manager = BackendManager(RestartPolicy(max_restarts=1, window_s=600))
    manager.configure(_local(tmp_path))
    client = manager.ensure()
    assert client.health()["status"] == "ok" and manager.state == "running"
    first = manager.pid
    assert manager.ensure().url == client.url and manager.pid == first  # reused, not restarted
    os.kill(first, signal.SIGKILL)
    _wait_dead(first)
    deadline = time.monotonic() + 10  # the child's exit reaches waitpid a moment after /proc shows it (loaded CI)
    while manager.watch() != "died" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager.watch() == "died" and manager.wants_restart()
    manager.ensure()
    assert manager.pid != first and manager.restarts == 1 and manager.state == "running"
    os.kill(manager.pid, signal.SIGKILL)
    _wait_dead(manager.pid)
    with pytest.raises(BackendProcessError, match="keeps stopping"):  # the policy allowed one restart
        manager.ensure()
    manager.stop()
    child = read_pid(fake_backend)
    _wait_dead(child)
    assert not pid_alive(child)


def test_stop_after_start_leaves_no_process(fake_backend, tmp_path):
    manager = BackendManager()
    manager.configure(_local(tmp_path))
    manager.ensure()
    pid, child = manager.pid, read_pid(fake_backend)
    manager.stop()
    _wait_dead(child)
    assert not pid_alive(pid) and not pid_alive(child) and manager.state == "stopped" and manager.pid is None


def test_new_settings_stop_the_old_process(fake_backend, tmp_path):
    manager = BackendManager()
    manager.configure(_local(tmp_path))
    manager.ensure()
    pid = manager.pid
    manager.configure(BackendConfig(mode="local", launch=LaunchSettings(python=sys.executable,
                                                                        data_dir=tmp_path / "data", device="cpu")))
    _wait_dead(pid)
    assert not pid_alive(pid) and manager.pid is None
    manager.stop()


def test_remote_with_a_wrong_token_or_no_server_is_a_clear_error(fake_backend, tmp_path):
    local = BackendManager()
    local.configure(_local(tmp_path))
    url = local.ensure().url
    try:
        remote = BackendManager()
        remote.configure(BackendConfig(mode="remote", url=url, token="wrong-token"))
        with pytest.raises(BackendError, match="refused the token"):
            remote.ensure()
        remote.configure(BackendConfig(mode="remote", url=url, token="x" * 43))
        assert remote.ensure().url == url and remote.state == "remote"
    finally:
        local.stop()
    with pytest.raises(BackendError, match="cannot reach the backend"):
        remote.ensure()


def test_a_request_right_after_a_crash_restarts_instead_of_failing(fake_backend, tmp_path):
    """A killed backend looks alive until it is reaped; a request in that window must restart it, not raise
    'cannot reach the backend' at the artist (the race behind a flaky Blender test)."""
    manager = BackendManager()
    manager.configure(_local(tmp_path))
    manager.ensure()
    first = manager.pid
    os.kill(first, signal.SIGKILL)  # no waiting: ensure() runs while the process may still be tearing down
    client = manager.ensure()
    assert manager.pid != first and client.health()["status"] == "ok" and manager.state == "running"
    manager.stop()
