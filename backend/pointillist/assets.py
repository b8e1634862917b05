"""Where the data the project ships (head template, default generator) is found.

A checkout keeps it in `blender_assets/`; an installed backend (the wheel the Blender extension carries and
Install Backend puts in a private environment) does not contain it, so `POINTILLIST_ASSETS` names a folder
holding the same files (the extension sets it to its own `assets/`). Checked first, so it also overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout's asset folder (absent in an installed wheel).
REPO_ASSETS = Path(__file__).resolve().parents[2] / "blender_assets"
ENV_VAR = "POINTILLIST_ASSETS"


def asset_dirs() -> list[Path]:
    env = os.environ.get(ENV_VAR)
    return ([Path(env)] if env else []) + [REPO_ASSETS]


def asset_path(name: str) -> Path:
    """The first `name` found in `asset_dirs()`; FileNotFoundError says where it looked and what to set."""
    for folder in asset_dirs():
        if (folder / name).is_file():
            return folder / name
    looked = ", ".join(str(d) for d in asset_dirs())
    raise FileNotFoundError(f"{name} not found (looked in {looked}); set {ENV_VAR} to a folder holding it, "
                            f"e.g. the Blender extension's assets/ folder, or pass the file explicitly")
