"""The export formats by name, and one function that runs any of them on a loaded avatar.

The CLI, the service and the add-on share this dispatch so a format means the same thing everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..avatar.animate import AvatarAnimator
from ..avatar.gaussians import Avatar
from ..head.model import HeadModel
from .errors import ExportError
from .motion import FrameRange, Motion
from .names import FORMATS
from .posing import FramePose


@dataclass
class ExportRequest:
    """What to export: a format, where, and the pose (one frame) or motion (a frame range)."""

    format: str
    output: Path
    frame: FramePose | None = None  # a still pose (ply, glb)
    motion: Motion | None = None  # ply-seq frames; glb animation clip
    frames: FrameRange | None = None


def export_avatar(avatar: Avatar, head: HeadModel, request: ExportRequest,
                  progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Run one export; returns the files written."""
    fmt = request.format
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    posed = request.frame is not None and not request.frame.is_rest
    needs_rig = posed or request.motion is not None
    animator = AvatarAnimator(avatar, head) if needs_rig else None
    if fmt == "ply":
        from .inria_ply import export_ply

        return [export_ply(avatar, request.output, animator, request.frame)]
    if fmt == "ply-seq":
        from .inria_ply import export_ply_sequence

        if request.motion is None:
            raise ExportError("ply-seq needs a motion (e.g. the built-in 'talk')")
        frames = request.frames or request.motion.default_range()
        return export_ply_sequence(animator, request.output, request.motion, frames, progress)
    if fmt == "glb":
        from .glb import export_glb

        animation = None
        if request.motion is not None:
            animation = (request.motion, request.frames or request.motion.default_range())
        return [export_glb(avatar, head, request.output, request.frame, animation, animator)]
    from .gaussian_avatars_export import export_gaussian_avatars

    if posed or request.motion is not None:
        raise ExportError("gaussianavatars exports the avatar at rest (its flame_param.npz holds one neutral timestep)")
    return list(export_gaussian_avatars(avatar, head, request.output))


def check_output(path: os.PathLike, fmt: str, overwrite: bool) -> None:
    """Refuse to replace an existing file or a non-empty folder unless asked; refuse the wrong kind of path."""
    out = Path(path)
    folder = fmt in ("ply-seq", "gaussianavatars")
    if folder and out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: {fmt} writes a folder, and a file is in the way")
    if not folder and out.is_dir():
        raise IsADirectoryError(f"{out}: {fmt} writes a file; this is a folder")
    if overwrite:
        return
    if (folder and out.is_dir() and any(out.iterdir())) or (not folder and out.exists()):
        raise FileExistsError(f"{out}: exists; pass --overwrite to replace it")
