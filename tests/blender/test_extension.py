"""The extension zip: Blender's validator (5.0 and 4.2) accepts it, it installs and enables, and the
backend wheel it carries is importable inside Blender (numpy-only modules, plyfile from its wheel)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import _PYTHONS, ROOT

pytestmark = pytest.mark.blender


def test_zip_layout_and_manifest_wheels(built_zip):
    assert built_zip.name == "pointillist-0.1.0.zip"
    names = set(zipfile.ZipFile(built_zip).namelist())
    assert {"blender_manifest.toml", "__init__.py", "create.py", "backend_process.py", "assets/head_template.npz",
            "assets/generator.safetensors"} <= names
    wheels = sorted(n for n in names if n.startswith("wheels/"))
    assert [w.split("-")[0] for w in wheels] == ["wheels/plyfile", "wheels/pointillist"]
    manifest = zipfile.ZipFile(built_zip).read("blender_manifest.toml").decode()
    for wheel in wheels:
        assert f'"./{wheel}"' in manifest
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


@pytest.mark.parametrize("label", [label for label, _ in _PYTHONS])
def test_blenders_own_validator_accepts_the_zip(built_zip, label):
    python = dict(_PYTHONS)[label]
    tools = sorted(Path(python).parents[1].glob("lib/python3*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/"
                                                "blender_ext.py"))
    assert tools, f"no blender_ext.py in {python}'s bpy"
    done = subprocess.run([sys.executable, str(tools[-1]), "validate", str(built_zip)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and "Success" in done.stdout, done.stdout + done.stderr


def test_a_broken_manifest_is_rejected(tmp_path):
    sys.path.insert(0, str(ROOT))
    import build_addon

    (tmp_path / "addon").mkdir()
    (tmp_path / "pyproject.toml").write_text('[project]\nversion = "0.2.0"\ndependencies = []\n')
    (tmp_path / "blender_manifest.toml").write_text('version = "0.1.0"\n')
    with pytest.raises(build_addon.BuildError, match="version"):
        build_addon.build(tmp_path / "dist", root=tmp_path)
    assert not (tmp_path / "dist" / "pointillist-0.1.0.zip").exists()


def test_zip_installs_enables_and_imports_the_carried_backend(blender, built_zip):
    result = blender.run(
        """
        import addon_utils
        sys.path[:] = [p for p in sys.path if not p.endswith("backend")]  # the harness puts the source tree first
        bpy.ops.extensions.package_install_files(filepath=ARGS["zip"], repo="user_default", enable_on_install=True)
        name = "bl_ext.user_default.pointillist"
        enabled = addon_utils.check(name)[1]
        import pointillist.avatar, pointillist.head.data, plyfile
        has_ops = hasattr(bpy.types, "AVATAR_OT_create") and hasattr(bpy.types, "VIEW3D_PT_avatar_create")
        mode = bpy.context.preferences.addons[name].preferences.backend_mode
        site = os.path.dirname(os.path.dirname(os.path.dirname(pointillist.avatar.__file__)))
        listing = sorted(os.listdir(site))
        addon_utils.disable(name, default_set=True, handle_error=None)
        emit(enabled=enabled, avatar=pointillist.avatar.__file__, has_ops=has_ops,
             plyfile_installed="plyfile.py" in listing, listing=listing,
             mode=mode, gone=not hasattr(bpy.types, "AVATAR_OT_create"))
        """,
        enable_addon=False, zip=str(built_zip),
    )
    assert result["enabled"] and result["has_ops"] and result["mode"] == "LOCAL" and result["gone"]
    # from the wheel Blender installed, not the source tree; plyfile's wheel went into the same site-packages
    assert "extensions" in result["avatar"] and str(ROOT / "backend") not in result["avatar"], result["avatar"]
    assert result["plyfile_installed"], (result["avatar"], result["listing"])
