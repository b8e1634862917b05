"""One .glb with the avatar's splats (KHR_gaussian_splatting) and its skinned proxy (rig, shape keys, clip).

Coordinates need no conversion. glTF is right-handed, +Y up, +Z forward (an asset's front faces +Z, so
+X is the asset's own left) and in metres. Head space (DESIGN §3) is FLAME's: metres, +Y up, +Z out of the
face, and +X the subject's own left (`eyeBlinkLeft` closes the eye at +X). The axes coincide, so positions,
quaternions, scales and SH coefficients are written as they are, with no node transform; the spec's advice
to keep splats in glTF's own frame (so viewers need not rotate SH) holds by construction.

Node layout: `splats` (the point primitive), `rig_proxy` (skinned mesh) and the joint hierarchy under
`root`. Splats are not skinned (glTF defines no splat skinning); with a pose given, both the splats and the
proxy's joints and morph weights show that pose.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import __version__
from ..avatar.animate import AvatarAnimator
from ..avatar.gaussians import Avatar
from ..head.model import HeadModel
from .errors import ExportError
from .gltf_document import GltfDocument
from .gltf_rig import add_rig_proxy
from .gltf_splats import add_splat_mesh
from .motion import FrameRange, Motion
from .posing import FramePose, posed_gaussians


def build_glb(avatar: Avatar, head: HeadModel | None, frame: FramePose | None = None,
              animation: tuple[Motion, FrameRange] | None = None, animator: AvatarAnimator | None = None) -> GltfDocument:
    """The glTF document; an avatar with no binding or no head gets the splats only (nothing to rig)."""
    doc = GltfDocument(generator=f"Pointillist {__version__}")
    rigged = avatar.binding is not None and head is not None
    if not rigged and (animation is not None or (frame is not None and not frame.is_rest)):
        raise ExportError("this avatar has no binding to a head model, so it cannot be posed or animated")
    gaussians = avatar.gaussians
    if frame is not None and not frame.is_rest:
        gaussians = posed_gaussians(animator or AvatarAnimator(avatar, head), frame)
    splats = doc.add("nodes", {"name": "splats", "mesh": add_splat_mesh(doc, gaussians)})
    roots = [splats]
    if rigged:
        roots += add_rig_proxy(doc, avatar, head.data, frame, animation)
        doc.json["asset"]["extras"] = {"pointillist": {"head_model": head.model_id, "joints": list(head.joint_names)}}
    doc.json["scenes"][0]["nodes"] = roots
    return doc


def export_glb(avatar: Avatar, head: HeadModel | None, path: str | os.PathLike, frame: FramePose | None = None,
               animation: tuple[Motion, FrameRange] | None = None, animator: AvatarAnimator | None = None) -> Path:
    """Write the .glb atomically (temp file, then rename)."""
    return build_glb(avatar, head, frame, animation, animator).write_glb(path)
