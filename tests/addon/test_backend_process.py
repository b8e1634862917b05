"""Interpreter detection, the launch command, the ready line, process-tree stop and the restart policy."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from addon.backend_process import (
    BackendProcess,
    BackendProcessError,
    LaunchSettings,
    RestartPolicy,
    checkout_root,
    child_environment,
    detect_python,
    parse_ready_line,
    serve_command,
    venv_python,
)

from .conftest import pid_alive, read_pid


def test_ready_line_parses_and_names_the_url():
    ready = parse_ready_line(b'{"port": 5123, "token": "abc", "pid": 42, "version": "0.1.0", "host": "127.0.0.1"}\n')
    assert (ready.port, ready.token, ready.pid, ready.version) == (5123, "abc", 42, "0.1.0")
    assert ready.url == "http://127.0.0.1:5123"
    assert parse_ready_line('{"port": 1, "token": "t", "pid": 1, "version": "v", "host": "::1"}').url == "http://[::1]:1"


@pytest.mark.parametrize("line", ["", "INFO: started", "[1, 2]", '{"port": 0, "token": "t", "pid": 1, "version": "v"}',
                                  '{"port": 80, "token": null, "pid": 1, "version": "v"}', '{"port": 80}'])
def test_bad_ready_lines_are_errors(line):
    with pytest.raises(BackendProcessError, match="ready line|instead of"):
        parse_ready_line(line)


def test_serve_command_is_the_loopback_service_on_a_free_port(tmp_path):
    cmd = serve_command(LaunchSettings(python="/py", data_dir=tmp_path, device="cpu", checkpoint="/c.safetensors",
                                       head="/h.npz"))
    assert cmd[:3] == ["/py", "-m", "pointillist.server"]
    joined = " ".join(cmd)
    assert "--port 0" in joined and "--host 127.0.0.1" in joined and "--device cpu" in joined
    assert f"--data-dir {tmp_path}" in joined and "--checkpoint /c.safetensors" in joined and "--head /h.npz" in joined
    assert "--checkpoint" not in serve_command(LaunchSettings(python="/py", data_dir=tmp_path))
    with pytest.raises(BackendProcessError, match="device"):
        serve_command(LaunchSettings(python="/py", data_dir=tmp_path, device="tpu"))


def test_detect_python_prefers_the_checkout_venv_then_the_private_one(tmp_path):
    repo = tmp_path / "repo"
    (repo / "backend" / "pointillist").mkdir(parents=True)
    (repo / "backend" / "pointillist" / "__init__.py").write_text("")
    (repo / "pyproject.toml").write_text("")
    addon_file = repo / "addon" / "preferences.py"
    addon_file.parent.mkdir()
    addon_file.write_text("")
    private = tmp_path / "private-venv"
    assert checkout_root(addon_file) == repo.resolve()
    assert detect_python(private, addon_file) == ""  # neither exists yet
    venv_python(private).parent.mkdir(parents=True)
    venv_python(private).write_text("")
    assert detect_python(private, addon_file) == str(venv_python(private))
    venv_python(repo / ".venv").parent.mkdir(parents=True)
    venv_python(repo / ".venv").write_text("")
    assert detect_python(private, addon_file) == str(venv_python(repo.resolve() / ".venv"))
    assert detect_python(private, tmp_path / "elsewhere" / "x.py") == str(venv_python(private))


def test_child_environment_drops_blenders_python_home():
    env = child_environment({"PYTHONHOME": "/blender/python", "PATH": "/bin"})
    assert "PYTHONHOME" not in env and env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "1"


def test_start_reads_the_ready_line_and_stop_ends_the_whole_tree(fake_backend, tmp_path):
    process = BackendProcess(LaunchSettings(python=sys.executable, data_dir=tmp_path / "data"))
    ready = process.start(timeout=60)
    assert ready.version == "fake" and ready.pid == process.pid and process.alive()
    child = read_pid(fake_backend)
    assert pid_alive(child)
    process.stop(timeout=10)
    assert not process.alive()
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child), "the backend's child process outlived stop()"


def test_a_backend_that_exits_at_start_reports_its_log(fake_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")
    process = BackendProcess(LaunchSettings(python=sys.executable, data_dir=tmp_path / "data"))
    with pytest.raises(BackendProcessError, match="(?s)exited with code 2.*refuses to start"):
        process.start(timeout=60)
    assert not process.alive()


def test_a_backend_that_prints_garbage_is_an_error(fake_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "garbage")
    with pytest.raises(BackendProcessError, match="instead of its JSON ready line"):
        BackendProcess(LaunchSettings(python=sys.executable, data_dir=tmp_path / "d")).start(timeout=60)


def test_missing_interpreter_is_a_clear_error(tmp_path):
    with pytest.raises(BackendProcessError, match="Install Backend"):
        BackendProcess(LaunchSettings(python="", data_dir=tmp_path)).start()
    with pytest.raises(BackendProcessError, match="does not exist"):
        BackendProcess(LaunchSettings(python=str(tmp_path / "nope" / "python"), data_dir=tmp_path)).start()


def test_restart_policy_caps_restarts_within_its_window():
    policy = RestartPolicy(max_restarts=2, window_s=10)
    assert policy.allow(0.0) and policy.allow(1.0)
    assert not policy.allow(2.0)
    assert policy.allow(11.5)  # the first restart left the window


def test_unused_path_type_is_path():
    assert isinstance(venv_python(Path("v")), Path)
