"""GaussianAvatars' `point_cloud.ply` + `flame_param.npz`, for research code that loads that format.

The files are written by the one GaussianAvatars writer (`avatar.gaussian_avatars.write_gaussian_avatars`,
atomic as a pair). GaussianAvatars binds Gaussians to FLAME triangles and drives them with FLAME
parameters, so the export only means something when the avatar's head model *is* FLAME; any other head
model is refused with its name rather than written as files that would load bound to the wrong mesh.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..avatar.gaussian_avatars import write_gaussian_avatars
from ..avatar.gaussians import Avatar, AvatarFormatError
from ..head.model import HeadModel


def is_flame(head: HeadModel) -> bool:
    """Head models converted from a FLAME file record it (`head.flame.convert_flame` sets meta source)."""
    return head.data.meta.get("source") == "FLAME"


def export_gaussian_avatars(avatar: Avatar, head: HeadModel, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    if not is_flame(head):
        raise AvatarFormatError(
            f"GaussianAvatars export needs a FLAME head model; this avatar uses head model {head.model_id!r}, "
            f"which is not FLAME (make the avatar with a FLAME head, --head, to export it)")
    return write_gaussian_avatars(avatar, out_dir, head)
