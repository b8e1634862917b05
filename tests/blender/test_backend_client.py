"""The add-on's backend client inside Blender, with a real `pointillist serve` process on loopback:
start (auto-detected Python), health, restart after a crash, and no process left once the add-on is
disabled; a wrong token, an unreachable URL and a missing interpreter are clear errors."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = [pytest.mark.blender, pytest.mark.e2e]

SETUP = """
import importlib, signal, time
prefs = bpy.context.preferences.addons[ADDON.__name__].preferences
prefs.cache_dir = ARGS["cache"]
manager_mod = importlib.import_module(ADDON.__name__ + ".backend_manager")
MANAGER = manager_mod.MANAGER

def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

def descendants(pid):
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for task in (os.listdir(f"/proc/{current}/task") if os.path.isdir(f"/proc/{current}/task") else []):
            try:
                kids = {int(k) for k in open(f"/proc/{current}/task/{task}/children").read().split()}
            except FileNotFoundError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found

def wait_gone(pids, limit=20):
    deadline = time.monotonic() + limit
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]
"""


@pytest.mark.slow
def test_local_backend_starts_restarts_and_leaves_nothing_after_disable(blender, tiny_checkpoint, tmp_path):
    result = blender.run(
        SETUP + textwrap.dedent("""
        prefs.checkpoint = ARGS["checkpoint"]
        prefs.device = "CPU"
        preferences = importlib.import_module(ADDON.__name__ + ".preferences")
        detected = preferences.resolved_python(prefs)
        bpy.ops.avatar.backend_start()
        first = MANAGER.pid
        health = MANAGER.ensure().health()
        os.kill(first, signal.SIGKILL)  # a crash
        wait_gone([first])
        died = MANAGER.watch()  # what the 2 s timer does, until it notices (a killed process is reaped a bit later)
        for _ in range(100):
            if died == "died":
                break
            time.sleep(0.1)
            died = MANAGER.watch()
        wants = MANAGER.wants_restart()
        bpy.ops.avatar.backend_start()
        second = MANAGER.pid
        tree = {second} | descendants(second)
        addon_utils.disable(ADDON.__name__, default_set=True, handle_error=None)
        emit(detected=detected, health=health, died=died, wants=wants, restarted=second != first and second is not None,
             tree=sorted(tree), left=wait_gone(tree))
        """),
        cache=str(tmp_path / "cache"), checkpoint=str(tiny_checkpoint),
    )
    assert result["detected"].endswith(".venv/bin/python")  # the checkout's environment, found by itself
    assert result["health"]["status"] == "ok"
    assert result["died"] == "died" and result["wants"] and result["restarted"]
    assert result["left"] == [], f"processes outlived disabling the add-on: {result['left']} of {result['tree']}"


def test_wrong_token_unreachable_backend_and_missing_python_are_clear_errors(blender, live_server, tmp_path):
    result = blender.run(
        SETUP + textwrap.dedent("""
        errors = {}
        def attempt(label):
            try:
                bpy.ops.avatar.backend_start()
                errors[label] = None
            except RuntimeError as exc:
                errors[label] = str(exc)
        prefs.backend_mode = "REMOTE"
        prefs.remote_url = ARGS["url"]
        prefs.remote_token = "not-the-token"
        attempt("wrong_token")
        prefs.remote_token = ARGS["token"]
        attempt("right_token")
        state = MANAGER.state
        prefs.remote_url = "http://127.0.0.1:9"
        attempt("unreachable")
        prefs.backend_mode = "LOCAL"
        prefs.python_path = "/nonexistent/bin/python"
        attempt("no_python")
        emit(errors=errors, state=state)
        """),
        cache=str(tmp_path / "cache"), url=live_server.url, token=live_server.token,
    )
    errors = result["errors"]
    assert "refused the token" in errors["wrong_token"]
    assert errors["right_token"] is None and result["state"] == "remote"
    assert "cannot reach the backend" in errors["unreachable"]
    assert "does not exist" in errors["no_python"]
