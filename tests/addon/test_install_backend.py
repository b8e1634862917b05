"""Install Backend: a real venv + pip install of the backend wheel build_addon.py bundles.

CI runs the install with `--no-deps --no-index` (offline, seconds): venv creation, pip, the import check
and the atomic swap are real; resolving the backend's dependencies (torch and the rest, gigabytes from
PyPI) is what an artist's install adds and is not exercised here.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from addon.backend_process import venv_python
from addon.install_backend import (
    InstallError,
    find_base_python,
    install,
    install_commands,
)

from .conftest import HERE

ROOT = HERE.parents[1]


def test_offline_blender_refuses_a_network_install(tmp_path):
    with pytest.raises(InstallError, match="Allow Online Access"):
        install(sys.executable, tmp_path / "venv", tmp_path / "x.whl", online_access=False)
    with pytest.raises(InstallError, match="wheel .* is missing"):  # a wheelhouse install needs no network
        install(sys.executable, tmp_path / "venv", tmp_path / "x.whl", pip_args=["--no-index"], online_access=False)
    assert not (tmp_path / "venv").exists()


def test_commands_use_the_venvs_own_pip(tmp_path):
    steps = install_commands("/usr/bin/python3.11", tmp_path / "v", tmp_path / "p.whl", ["--no-index"])
    assert steps[0][1] == ["/usr/bin/python3.11", "-m", "venv", str(tmp_path / "v")]
    assert steps[1][1][:4] == [str(venv_python(tmp_path / "v")), "-m", "pip", "install"]
    assert steps[1][1][-2:] == ["--no-index", str(tmp_path / "p.whl")]


@pytest.mark.slow
def test_install_the_bundled_wheel_into_a_private_venv(tmp_path):
    sys.path.insert(0, str(ROOT))
    import build_addon

    wheel = build_addon.build_backend_wheel(tmp_path / "wheels")
    base = find_base_python([sys.executable])
    assert base, "no Python 3.11 found"
    target = tmp_path / "backend-venv"
    seen = []
    python = install(base, target, wheel, pip_args=["--no-deps", "--no-index"], report=seen.append)
    assert python == str(venv_python(target)) and seen[-1].state == "done"
    assert [p.progress for p in seen] == sorted(p.progress for p in seen)
    where = subprocess.run([python, "-c", "import pointillist; print(pointillist.__file__, pointillist.__version__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(target)) and where[1] == "0.1.0"  # the wheel's copy, not the checkout
    assert not target.with_name("backend-venv.partial").exists()

    # a second install that fails (cancelled) keeps the working one
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InstallError, match="cancelled"):
        install(base, target, wheel, pip_args=["--no-deps", "--no-index"], cancel=cancel)
    assert venv_python(target).is_file() and not target.with_name("backend-venv.partial").exists()
