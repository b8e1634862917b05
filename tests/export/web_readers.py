"""The Node-based independent readers in tools/web, called from the tests.

`./dev test` installs them (npm ci in tools/web, Debian's chromium). Outside CI a missing tool skips the
test with the reason; under CI=true it fails, so a broken set-up can never pass silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "tools" / "web"


def require_web_tool(kind: str) -> str:
    """Path of `node` (with tools/web/node_modules installed) or of Chromium; skip or fail when missing."""
    if kind == "node":
        found = shutil.which("node")
        missing = None if found else "node is not installed"
        if found and not (WEB / "node_modules" / "gltf-validator").is_dir():
            missing = "tools/web/node_modules is missing (run `npm ci` in tools/web, or ./dev test)"
    else:
        found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
        missing = None if found else "Chromium is not installed (apt-get install chromium, or ./dev test as root)"
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{missing}; CI must run the independent readers")
        pytest.skip(missing)
    return found


def validate_gltf(path: Path) -> dict:
    """The Khronos glTF validator's report for `path` (tools/web/validate_gltf.mjs)."""
    proc = subprocess.run(["node", str(WEB / "validate_gltf.mjs"), str(path)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def view_splats(ply: Path, png: Path, size: int = 384) -> dict:
    """Draw `ply` with three.js + Spark in headless Chromium; the screenshot goes to `png`."""
    env = {**os.environ, "CHROMIUM": require_web_tool("chromium")}
    proc = subprocess.run(["node", str(WEB / "view_splats.mjs"), str(ply), str(png), str(size), str(size)],
                          check=False, capture_output=True, text=True, timeout=150, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
