"""Inria 3DGS PLY exports: one file at rest or posed, or a numbered sequence over a frame range.

These are the files splat viewers open, so they hold exactly Inria's properties in Inria's order and no
binding (the bundle's own `avatar.ply` keeps the binding for re-import). The layout is `avatar.ply`'s one
definition (`write_gaussian_ply` with no binding); coordinates stay in head space (metres, +Y up, +Z out of
the face), which is also what three.js-based viewers expect.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..avatar.animate import AvatarAnimator
from ..avatar.gaussians import Avatar
from ..avatar.ply import write_gaussian_ply
from .motion import FrameRange, Motion
from .posing import FramePose, posed_gaussians, posed_gaussians_batch

#: Frames posed per animator call in a sequence (bounded memory, most of the batching gain).
SEQUENCE_BATCH = 8


def frame_file_name(number: int) -> str:
    """`frame_0001.ply`: zero-padded so an alphabetical listing is in frame order."""
    return f"frame_{number:04d}.ply"


def export_ply(avatar: Avatar, path: str | os.PathLike, animator: AvatarAnimator | None = None,
               frame: FramePose | None = None) -> Path:
    """Write the avatar at rest (no animator needed) or posed by `frame`, atomically."""
    if frame is None or frame.is_rest:
        return write_gaussian_ply(path, avatar.gaussians)
    if animator is None:
        raise ValueError("a posed export needs the avatar's AvatarAnimator")
    return write_gaussian_ply(path, posed_gaussians(animator, frame))


def export_ply_sequence(animator: AvatarAnimator, out_dir: str | os.PathLike, motion: Motion, frames: FrameRange,
                        progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """`out_dir/frame_NNNN.ply` for each frame number in `frames`; each file is written atomically."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    numbers = list(frames)
    paths: list[Path] = []
    for start in range(0, len(numbers), SEQUENCE_BATCH):
        chunk = numbers[start:start + SEQUENCE_BATCH]
        posed = posed_gaussians_batch(animator, [motion.frame(n) for n in chunk])
        for n, g in zip(chunk, posed):
            paths.append(write_gaussian_ply(out / frame_file_name(n), g))
        if progress:
            progress(len(paths), len(numbers))
    return paths
