"""Checklist items 9, 10, 25: weights only through safetensors or `torch.load(weights_only=True)` with no
fallback, FLAME pickles only through the allow-list converter, and minimum safe versions pinned."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version
from pointillist.server.main import ServeError, _check_checkpoint, _check_head

from .conftest import ROOT

PACKAGE = ROOT / "backend" / "pointillist"
SAFE_UNPICKLER = PACKAGE / "head" / "safe_unpickle.py"


class _Marker:
    """Unpickling this creates a file: proof that a pickle ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _evil_pickle(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / f"{name}.ran"
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"state_dict": _Marker(marker)}))
    return path, marker


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield owner, name, node


def _sources():
    return [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]


# ------------------------------------------------------------------------------- item 9: weights
def test_item09_every_torch_load_is_weights_only_and_nothing_unpickles():
    found_torch_load = 0
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for owner, name, node in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if owner == "torch" and name == "load":
                found_torch_load += 1
                flags = {k.arg: k.value for k in node.keywords}
                assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, where
            if owner == "torch" and name in ("jit",):
                raise AssertionError(f"{where}: torch.jit loading executes code")
            if owner in ("pickle", "dill", "cloudpickle", "joblib", "cPickle") and name in ("load", "loads", "Unpickler"):
                assert path == SAFE_UNPICKLER, f"{where}: unpickling outside the allow-list unpickler"
            if name == "load" and owner in ("np", "numpy"):
                flags = {k.arg: k.value for k in node.keywords}
                if "allow_pickle" in flags:
                    assert isinstance(flags["allow_pickle"], ast.Constant) and flags["allow_pickle"].value is False, where
        text = path.read_text()
        assert "weights_only=False" not in text.replace(" ", ""), path
    assert found_torch_load >= 1  # the DINOv2 loader; the scan is not vacuous


def test_item09_the_service_refuses_a_pickled_checkpoint_without_opening_it(tmp_path, tiny_checkpoint):
    for name in ("evil.pt", "evil.pth", "evil.bin", "evil.safetensors"):
        path, marker = _evil_pickle(tmp_path, name)
        with pytest.raises(ServeError, match="safetensors|header|invalid|not a"):
            _check_checkpoint(str(path))
        assert not marker.exists()
    assert _check_checkpoint(str(tiny_checkpoint)) == tiny_checkpoint.resolve()


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pointillist.server", "--data-dir", str(tmp_path / "data"), *args],
                          check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_item09_serve_process_exits_with_one_error_line_for_a_pickle(tmp_path):
    path, marker = _evil_pickle(tmp_path, "model.pt")
    done = _serve(tmp_path, "--checkpoint", str(path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and "safetensors" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------- item 10: FLAME pickles
def test_item10_head_models_load_only_as_pickle_free_npz(tmp_path):
    for name in ("flame.pkl", "flame.npz"):
        path, marker = _evil_pickle(tmp_path, name)
        with pytest.raises(ServeError, match="head-model"):
            _check_head(str(path))
        assert not marker.exists()
    path, _ = _evil_pickle(tmp_path, "FLAME2020.pkl")
    with pytest.raises(ServeError, match="import-flame"):
        _check_head(str(path))
    assert _check_head(str(ROOT / "blender_assets" / "head_template.npz")) is not None


def test_item10_serve_refuses_a_flame_pickle_as_head(tmp_path):
    path, marker = _evil_pickle(tmp_path, "generic_model.pkl")
    done = _serve(tmp_path, "--head", str(path))
    assert done.returncode == 2 and "import-flame" in done.stderr and not marker.exists()


def test_item10_the_allow_list_unpickler_runs_nothing(tmp_path):
    from pointillist.head.safe_unpickle import RefusedGlobal, safe_load

    marker = tmp_path / "ran"
    with pytest.raises(RefusedGlobal):
        safe_load(pickle.dumps(_Marker(marker)))
    import os

    with pytest.raises(RefusedGlobal):
        safe_load(pickle.dumps(os.system))
    assert not marker.exists()


# ------------------------------------------------------------------------------- item 25: versions
#: minimum safe versions and why (each pin in pyproject.toml must be >= its floor, and installed)
FLOORS = {
    "torch": ("2.6.0", "CVE-2025-32434: torch.load(weights_only=True) could still run code before 2.6"),
    "pillow": ("10.3.0", "CVE-2023-50447 (ImageMath eval), CVE-2024-28219 (buffer overflow in _imagingcms)"),
    "starlette": ("0.49.1", "CVE-2024-47874 / CVE-2025-54121 (multipart DoS), CVE-2025-62727 (Range DoS)"),
    "fastapi": ("0.109.1", "CVE-2024-24762 (multipart ReDoS via python-multipart)"),
    "python-multipart": ("0.0.30", "CVE-2024-53981, CVE-2026-24486, CVE-2026-42561, CVE-2026-53537..53539"),
    "h11": ("0.16.0", "CVE-2025-43859 (request smuggling through chunked bodies)"),
    "uvicorn": ("0.11.7", "CVE-2020-7694 (log injection)"),
    "safetensors": ("0.4.0", "the safe weights format; older releases lacked metadata checks"),
}


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    extras = [spec for group in project["optional-dependencies"].values() for spec in group]
    for spec in [*project["dependencies"], *extras]:
        if "==" in spec:
            name, version = spec.split("==")
            pins[name.strip().lower()] = version.split(";")[0].strip()
    return pins


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_item25_minimum_safe_versions_are_pinned_and_installed(package):
    floor, why = FLOORS[package]
    pins = _pins()
    assert package in pins, f"{package} must be pinned exactly in pyproject.toml ({why})"
    assert Version(pins[package]) >= Version(floor), f"{package} {pins[package]} < {floor}: {why}"
    installed = metadata.version(package)
    assert Version(installed.split("+")[0]) == Version(pins[package]), f"installed {package} {installed} != pin"


def test_item25_test_tools_are_pinned():
    pins = _pins()
    for tool in ("pytest", "schemathesis", "hypothesis", "httpx"):
        assert tool in pins and Version(metadata.version(tool)) == Version(pins[tool])
