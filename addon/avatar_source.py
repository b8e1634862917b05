"""Read what the importer builds from: a bundle (folder or .zip) or a plain 3DGS PLY, checked, as numpy arrays.

No bpy here, and nothing heavier than numpy (+ plyfile): the same `pointillist` modules the backend uses
read the bundle, and `build_point_rig` blends the rig from the same numbers `animate()` poses with. Every
problem becomes a `RuntimeError` whose message an artist can act on, raised before any Blender data exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import rig_build

#: Head-model files the add-on carries (the procedural template; converted FLAME files may be added here).
ASSETS = Path(__file__).absolute().parent / "assets"  # not resolve(): the dev extension links files one by one

_HEAD_CACHE: dict[tuple, object] = {}  # (path, mtime, size) -> HeadModelData


@dataclass
class LoadedAvatar:
    name: str
    source: str  # the path imported
    splats: rig_build.SplatArrays
    rig: rig_build.RigArrays | None  # None: a static splat object (plain PLY, or an unbound bundle)
    model_id: str | None = None
    identity_shape: list[float] | None = None
    meta: dict | None = None


def head_model_paths(extra: tuple[str | os.PathLike, ...] = ()) -> list[Path]:
    """The artist's head-model files first (preferences), then the ones the add-on carries."""
    own = sorted(ASSETS.glob("*.npz")) if ASSETS.is_dir() else []
    return [Path(p) for p in extra if p and Path(p).is_file()] + own


def find_head_model(model_id: str, extra: tuple[str | os.PathLike, ...] = ()):
    """The `HeadModelData` with this id among `extra` and the add-on's assets (cached), or a RuntimeError
    naming the known ones and saying where a FLAME head is set."""
    from pointillist.head.data import HeadModelData, HeadModelError

    known = []
    for path in head_model_paths(extra):
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)  # a file replaced on disk is read again
        if key not in _HEAD_CACHE:
            try:
                _HEAD_CACHE[key] = HeadModelData.load(path)
            except HeadModelError:
                continue
        data = _HEAD_CACHE[key]
        known.append(data.model_id)
        if data.model_id == model_id:
            return data
    raise RuntimeError(f"unknown head model {model_id!r}: this add-on has {', '.join(known) or 'no head models'}; "
                       f"for a FLAME avatar set Preferences > Add-ons > Pointillist > Head Model to the .npz "
                       f"made by `pointillist head import-flame`")


def load_avatar(filepath: str | os.PathLike, name: str | None = None,
                head_models: tuple[str | os.PathLike, ...] = ()) -> LoadedAvatar:
    """Bundle folder, bundle .zip or .ply -> arrays to build; RuntimeError on anything unusable."""
    from pointillist.avatar.gaussians import AvatarFormatError

    path = Path(filepath)
    label = name or _default_name(path)
    try:
        if path.suffix.lower() == ".ply" and not path.is_dir():
            from pointillist.avatar.ply import read_gaussian_ply

            gaussians, _binding = read_gaussian_ply(path)
            return LoadedAvatar(label, str(path), rig_build.splat_arrays(gaussians), None)
        if not path.exists():
            raise RuntimeError(f"{path}: no such bundle (expected a folder, a .zip or a .ply)")
        from pointillist.avatar.bundle import read_bundle
        from pointillist.avatar.point_rig import build_point_rig

        avatar = read_bundle(path, read_source=False)
        splats = rig_build.splat_arrays(avatar.gaussians)
        if avatar.binding is None:
            return LoadedAvatar(label, str(path), splats, None, meta=dict(avatar.meta))
        if avatar.identity is None:
            raise RuntimeError(f"{path}: the bundle is bound to a head but names no head model (avatar.json 'head')")
        data = find_head_model(avatar.identity.model_id, head_models)
        rig = rig_build.rig_arrays(build_point_rig(avatar, data))
        return LoadedAvatar(label, str(path), splats, rig, model_id=avatar.identity.model_id,
                            identity_shape=[float(v) for v in avatar.identity.shape], meta=dict(avatar.meta))
    except AvatarFormatError as exc:
        raise RuntimeError(f"cannot import {path.name}: {exc}") from None
    except (OSError, MemoryError) as exc:
        raise RuntimeError(f"cannot import {path.name}: {exc}") from None


def _default_name(path: Path) -> str:
    stem = path.name[: -len(path.suffix)] if path.suffix.lower() in (".zip", ".ply") else path.name
    return stem or "Avatar"
