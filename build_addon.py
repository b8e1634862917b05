"""Build the installable Blender extension: dist/pointillist-<version>.zip.

    python build_addon.py [--out dist] [--no-validate]

The zip holds, at its root: blender_manifest.toml (the source manifest plus the generated
`wheels = [...]` list), the add-on package (addon/*.py), assets/ (the head template and the default
generator checkpoint from blender_assets/), and wheels/: the pointillist backend wheel (built here with
`pip wheel --no-deps`) and plyfile's wheel (the version pinned in pyproject.toml). Blender installs the
wheels into the extension's site-packages, so the add-on can import the numpy-only backend modules
(`pointillist.avatar`, `pointillist.head.data`); Install Backend pip-installs the same backend wheel, with
its dependencies, into a private environment. The zip is written to a temp file and renamed, and is
checked with Blender's own validator (`bl_pkg/cli/blender_ext.py validate`, shipped in the bpy wheel)
when bpy is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ASSETS = ("head_template.npz", "generator.safetensors")
CARRIED_DEPENDENCIES = ("plyfile",)  # what the add-on's numpy-only backend imports need beyond Blender's numpy


class BuildError(RuntimeError):
    pass


def manifest_version(root: Path = ROOT) -> str:
    manifest = tomllib.loads((root / "blender_manifest.toml").read_text(encoding="utf-8"))
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    if manifest["version"] != project["version"]:
        raise BuildError(f"blender_manifest.toml version {manifest['version']} differs from pyproject.toml's "
                         f"{project['version']}: the extension and its backend wheel share one version")
    return manifest["version"]


def pinned(name: str, root: Path = ROOT) -> str:
    """`name==X` as pinned in pyproject.toml's dependencies."""
    for dep in tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]:
        match = re.fullmatch(rf"\s*{re.escape(name)}\s*==\s*([^\s;]+)\s*", dep.split("#")[0])
        if match:
            return f"{name}=={match.group(1)}"
    raise BuildError(f"{name} is not pinned with == in pyproject.toml")


def build_backend_wheel(dest: Path, root: Path = ROOT) -> Path:
    """The pointillist wheel (pure Python; no build isolation, so it builds offline)."""
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(dest), str(root)],
                          capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("pointillist-*.whl"))
    if done.returncode != 0 or not wheels:
        raise BuildError(f"building the backend wheel failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wheels[-1]


def fetch_wheel(requirement: str, dest: Path, cache: Path) -> Path:
    """A pure-Python wheel of `requirement` (cached under `cache`, downloaded with pip once)."""
    name = requirement.split("==")[0].replace("-", "_").lower()
    version = requirement.split("==")[1]
    cached = [w for w in cache.glob("*.whl") if w.name.lower().startswith(f"{name}-{version}-")] if cache.is_dir() else []
    if not cached:
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "-q", "-d", str(cache), requirement],
                              capture_output=True, text=True, check=False)
        cached = [w for w in cache.glob("*.whl") if w.name.lower().startswith(f"{name}-{version}-")]
        if done.returncode != 0 or not cached:
            raise BuildError(f"cannot get a wheel for {requirement}:\n{done.stderr[-2000:]}")
    wheel = cached[0]
    if not wheel.name.endswith("-none-any.whl"):
        raise BuildError(f"{wheel.name} is not pure Python; the extension would need per-platform builds")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(wheel, dest / wheel.name)
    return dest / wheel.name


def manifest_with_wheels(text: str, wheels: list[str]) -> str:
    """Insert `wheels = [...]` among the top-level keys (before the first [table])."""
    if re.search(r"(?m)^\s*wheels\s*=", text):
        raise BuildError("blender_manifest.toml already lists wheels; build_addon.py generates that list")
    line = "wheels = [\n" + "".join(f'  "./wheels/{w}",\n' for w in wheels) + "]\n\n"
    match = re.search(r"(?m)^\[", text)
    return text[:match.start()] + line + text[match.start():] if match else text.rstrip() + "\n\n" + line


def blender_ext_tool() -> Path | None:
    """Blender's extension tool inside the installed bpy wheel, if any."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    return None


def validate(zip_path: Path, tool: Path | None = None) -> str:
    tool = tool or blender_ext_tool()
    if tool is None:
        raise BuildError("bpy is not installed here, so Blender's extension validator is not available")
    done = subprocess.run([sys.executable, str(tool), "validate", str(zip_path)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0 or "error" in done.stdout.lower():
        raise BuildError(f"Blender's validator rejected {zip_path.name}:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def build(out: Path = ROOT / "dist", *, root: Path = ROOT, check: bool = True) -> Path:
    version = manifest_version(root)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"pointillist-{version}.zip"
    with tempfile.TemporaryDirectory(prefix="pointillist-build-") as tmp:
        wheels_dir = Path(tmp) / "wheels"
        wheels = [build_backend_wheel(wheels_dir, root)]
        wheels += [fetch_wheel(pinned(dep, root), wheels_dir, out / ".wheel-cache") for dep in CARRIED_DEPENDENCIES]
        manifest = manifest_with_wheels((root / "blender_manifest.toml").read_text(encoding="utf-8"),
                                        [w.name for w in wheels])
        fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=out)
        os.close(fd)
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("blender_manifest.toml", manifest)
                for source in sorted((root / "addon").rglob("*")):
                    if source.is_file() and "__pycache__" not in source.parts and source.suffix != ".pyc":
                        zf.write(source, source.relative_to(root / "addon").as_posix())
                for name in ASSETS:
                    asset = root / "blender_assets" / name
                    if not asset.is_file():
                        raise BuildError(f"{asset} is missing (see README: blender_assets/)")
                    zf.write(asset, f"assets/{name}", compress_type=zipfile.ZIP_STORED)
                for wheel in wheels:
                    zf.write(wheel, f"wheels/{wheel.name}", compress_type=zipfile.ZIP_STORED)
            if check:
                validate(Path(partial))
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default dist/)")
    parser.add_argument("--no-validate", action="store_true", help="skip Blender's validator (no bpy installed)")
    args = parser.parse_args(argv)
    try:
        path = build(args.out, check=not args.no_validate)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
