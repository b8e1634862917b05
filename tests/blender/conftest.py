"""Run scripts inside the real `bpy` module, once per Blender version this machine has.

Every Blender test runs in a fresh subprocess (bpy and torch/numba never share a process, and each test starts
from factory settings). Interpreters: this environment's Python (bpy 5.x) and, when `./dev test` has made
it, `.venv-bpy42` (Blender 4.2 LTS). The add-on is loaded from the source tree as an extension in a
throw-away repository, exactly the way Blender loads an installed one (`bl_ext.<repo>.pointillist`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADDON_MODULE = "bl_ext.pointillist_dev.pointillist"


def blender_pythons() -> list[tuple[str, str]]:
    """(label, interpreter) for every environment that can import bpy."""
    found = []
    for label, python in (("bpy5", sys.executable), ("bpy42", str(ROOT / ".venv-bpy42" / "bin" / "python"))):
        if Path(python).exists() and subprocess.run([python, "-c", "import bpy"], capture_output=True).returncode == 0:
            found.append((label, python))
    return found


_PYTHONS = blender_pythons()


@pytest.fixture(scope="session")
def dev_extension_repo(tmp_path_factory) -> Path:
    """The source add-on as an extension repository, made the way the demo makes it."""
    from pointillist.blender_scene import extension_repo

    return extension_repo(ROOT / "addon", ROOT / "blender_assets" / "head_template.npz",
                          tmp_path_factory.mktemp("extensions"))


PRELUDE = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {backend!r})
    import bpy, addon_utils
    ARGS = json.loads(os.environ["POINTILLIST_TEST_ARGS"])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if {enable!r}:
        repo = bpy.context.preferences.extensions.repos.new(name="pointillist_dev", module="pointillist_dev",
                                                             custom_directory={repo!r}, source="USER")
        addon_utils.enable({module!r}, default_set=True, handle_error=None)
        ADDON = sys.modules[{module!r}]

    def emit(**values):
        with open(os.environ["POINTILLIST_TEST_OUT"], "w") as fh:
            json.dump(values, fh)
    """
)


class BlenderRunner:
    """`run(script, **args) -> dict`: the script sees ARGS, ADDON (the enabled add-on module) and emit()."""

    def __init__(self, label: str, python: str, repo: Path, tmp_path: Path):
        self.label, self.python, self.repo, self.tmp_path = label, python, repo, tmp_path

    def run(self, script: str, *, enable_addon: bool = True, timeout: float = 600, check: bool = True, **args) -> dict:
        prelude = PRELUDE.format(backend=str(ROOT / "backend"), enable=enable_addon, repo=str(self.repo),
                                 module=ADDON_MODULE)
        path = self.tmp_path / f"blender_script_{self.label}.py"
        path.write_text(prelude + "\n" + textwrap.dedent(script))
        out = self.tmp_path / f"blender_out_{self.label}.json"
        out.unlink(missing_ok=True)
        env = {**os.environ, "POINTILLIST_TEST_ARGS": json.dumps(args), "POINTILLIST_TEST_OUT": str(out),
               "BLENDER_USER_RESOURCES": str(self.tmp_path / f"blender-user-{self.label}")}
        proc = subprocess.run([self.python, str(path)], capture_output=True, text=True, env=env, timeout=timeout)
        self.stdout, self.stderr, self.returncode = proc.stdout, proc.stderr, proc.returncode
        if check:
            assert proc.returncode == 0, f"Blender script failed ({self.label}):\n{proc.stderr[-4000:]}"
        return json.loads(out.read_text()) if out.exists() else {}


@pytest.fixture(params=[label for label, _ in _PYTHONS] or [pytest.param("none", marks=pytest.mark.skip("no bpy"))])
def blender(request, dev_extension_repo, tmp_path) -> BlenderRunner:
    """A runner for each Blender version available (5.x always in CI; 4.2 LTS when `.venv-bpy42` exists)."""
    python = dict(_PYTHONS)[request.param]
    return BlenderRunner(request.param, python, dev_extension_repo, tmp_path)


@pytest.fixture(scope="session")
def avatar_bundles(tmp_path_factory) -> dict:
    """Small procedural rigged bundles (built here with torch, imported in Blender): a zip, a folder, and a plain
    3DGS PLY of the same Gaussians (no binding)."""
    sys.path.insert(0, str(ROOT / "backend"))
    from pointillist.avatar.bundle import write_bundle
    from pointillist.avatar.ply import write_gaussian_ply
    from pointillist.synth.procedural import make_procedural_avatar

    folder = tmp_path_factory.mktemp("bundles")
    avatar = make_procedural_avatar(3, density=0.05, hair_style="short", beard=False)
    write_bundle(avatar, folder / "small.zip")
    write_bundle(avatar, folder / "small")
    write_gaussian_ply(folder / "plain.ply", avatar.gaussians)
    return {"zip": folder / "small.zip", "folder": folder / "small", "ply": folder / "plain.ply",
            "count": avatar.gaussians.num}


# ------------------------------------------------------------------------------------ add-on part A helpers
# A real backend on loopback (tiny random generator, seconds per job) shared by the Create Avatar and client
# tests, the astronaut portrait, a faceless image, and the built extension zip.
from ..server.conftest import live_server, tiny_checkpoint, wall_png  # noqa: F401


@pytest.fixture(scope="session")
def astronaut_jpg(tmp_path_factory) -> Path:
    """skimage's astronaut (a public-domain NASA portrait that ships inside scikit-image)."""
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("portraits") / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def built_zip(tmp_path_factory) -> Path:
    """dist-style extension zip built by build_addon.py (validated by Blender's tool on the way)."""
    sys.path.insert(0, str(ROOT))
    import build_addon

    return build_addon.build(tmp_path_factory.mktemp("dist"))

