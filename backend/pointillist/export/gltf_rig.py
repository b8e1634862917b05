"""The skinned proxy that carries the avatar's rig into glTF: engines get bones, shape keys and a clip.

A splat primitive cannot be skinned in glTF (KHR_gaussian_splatting defines no skinning), so the rig rides
on the head mesh instead, built from the same numbers the backend animates with (`avatar.point_rig`):

- the head mesh at the avatar's identity (template + shape + identity offsets), triangles, normals;
- a 5-joint skin `root -> neck -> {jaw, left_eye, right_eye}` placed at the identity's rest joints, with
  inverse bind matrices that are pure translations, so joint rotations act about the joints exactly as
  `HeadModel.skinning` does (FLAME's LBS);
- one morph target per expression (`mesh.extras.targetNames` names them, the convention Blender and
  three.js read), and the per-vertex LBS weights (a second JOINTS/WEIGHTS set only if a vertex has five);
- optionally one animation clip sampling a `Motion`: joint rotations, root translation, morph weights.

FLAME pose correctives have no glTF equivalent and are left out; with our procedural head there are none.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from ..avatar.gaussians import Avatar
from ..avatar.point_rig import identity_vertices, rest_joints
from ..head.data import JOINT_NAMES, JOINT_PARENTS, HeadModelData
from .gltf_document import (
    ARRAY_BUFFER,
    ELEMENT_ARRAY_BUFFER,
    FLOAT,
    TRIANGLES,
    UNSIGNED_BYTE,
    UNSIGNED_INT,
    UNSIGNED_SHORT,
    GltfDocument,
)
from .motion import FrameRange, Motion
from .posing import FramePose

PROXY_NODE_NAME = "rig_proxy"


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3); an isolated vertex gets +Z."""
    v = vertices.astype(np.float64)
    face_n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], face_n)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(length > 1e-20, n / np.maximum(length, 1e-20), np.array([0.0, 0.0, 1.0])).astype(np.float32)


def influence_sets(weights: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(JOINTS_k, WEIGHTS_k) sets of four, strongest first; unused slots are joint 0 with weight 0."""
    order = np.argsort(-weights, axis=1, kind="stable")
    sorted_w = np.take_along_axis(weights, order, axis=1)
    used = int((sorted_w > 0).sum(axis=1).max()) if len(weights) else 1
    sets = []
    for start in range(0, max(used, 1), 4):
        j = np.zeros((len(weights), 4), np.uint8)
        w = np.zeros((len(weights), 4), np.float32)
        width = min(4, weights.shape[1] - start)
        j[:, :width] = order[:, start:start + width]
        w[:, :width] = sorted_w[:, start:start + width]
        j[w == 0] = 0
        sets.append((j, w))
    return sets


def _quats_xyzw(axis_angle: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(axis_angle, np.float64).reshape(-1, 3)).as_quat().astype(np.float32)


def add_rig_proxy(doc: GltfDocument, avatar: Avatar, data: HeadModelData, frame: FramePose | None = None,
                  animation: tuple[Motion, FrameRange] | None = None) -> list[int]:
    """Add the proxy mesh node and the joint hierarchy (posed by `frame`); return the new root node indices."""
    verts = identity_vertices(avatar, data)
    joints = rest_joints(avatar, data).astype(np.float64)
    faces = np.asarray(data.faces, dtype=np.int64)
    frame = frame or FramePose.rest(data.num_expr)

    attributes = {
        "POSITION": doc.add_accessor(verts, FLOAT, target=ARRAY_BUFFER, min_max=True),
        "NORMAL": doc.add_accessor(vertex_normals(verts, faces), FLOAT, target=ARRAY_BUFFER),
    }
    for k, (j, w) in enumerate(influence_sets(np.asarray(data.lbs_weights, np.float32))):
        attributes[f"JOINTS_{k}"] = doc.add_accessor(j, UNSIGNED_BYTE, target=ARRAY_BUFFER)
        attributes[f"WEIGHTS_{k}"] = doc.add_accessor(w, FLOAT, target=ARRAY_BUFFER)
    targets = [{"POSITION": doc.add_accessor(data.expr_dirs[:, :, e], FLOAT, target=ARRAY_BUFFER, min_max=True)}
               for e in range(data.num_expr)]
    index_type = UNSIGNED_SHORT if len(verts) < 65535 else UNSIGNED_INT
    material = doc.add("materials", {"name": "rig_proxy", "pbrMetallicRoughness": {
        "baseColorFactor": [0.8, 0.8, 0.8, 1.0], "metallicFactor": 0.0, "roughnessFactor": 0.9}})
    primitive = {"attributes": attributes, "indices": doc.add_accessor(faces.reshape(-1), index_type, target=ELEMENT_ARRAY_BUFFER),
                 "mode": TRIANGLES, "material": material, "targets": targets}
    mesh = doc.add("meshes", {"name": PROXY_NODE_NAME, "primitives": [primitive],
                              "weights": [float(x) for x in frame.expression],
                              "extras": {"targetNames": list(data.expr_names)}})

    # Joints: local translation = offset from the parent joint; the root also carries the frame's translation.
    rotations = _quats_xyzw(frame.pose)
    first_joint = len(doc.json["nodes"])
    for j, name in enumerate(JOINT_NAMES):
        parent = JOINT_PARENTS[j]
        offset = joints[j] - (joints[parent] if parent >= 0 else -frame.translation.astype(np.float64))
        doc.add("nodes", {"name": name, "translation": [float(x) for x in offset],
                          "rotation": [float(x) for x in rotations[j]]})
    for j, parent in enumerate(JOINT_PARENTS):
        if parent >= 0:
            doc.json["nodes"][first_joint + parent].setdefault("children", []).append(first_joint + j)
    inverse_bind = np.tile(np.eye(4), (len(JOINT_NAMES), 1, 1))
    inverse_bind[:, :3, 3] = -joints
    ibm = doc.add_accessor(inverse_bind.transpose(0, 2, 1).reshape(len(JOINT_NAMES), 16), FLOAT)  # column-major
    skin = doc.add("skins", {"name": "head_rig", "joints": list(range(first_joint, first_joint + len(JOINT_NAMES))),
                             "inverseBindMatrices": ibm, "skeleton": first_joint})
    proxy = doc.add("nodes", {"name": PROXY_NODE_NAME, "mesh": mesh, "skin": skin})
    if animation is not None:
        _add_clip(doc, animation[0], animation[1], joints, first_joint, proxy, data.num_expr)
    return [proxy, first_joint]


def _add_clip(doc: GltfDocument, motion: Motion, frames: FrameRange, joints: np.ndarray, first_joint: int,
              proxy: int, num_expr: int) -> None:
    """One clip, LINEAR keys at every frame: joint rotations, root translation (when it moves), morph weights."""
    poses = [motion.frame(n) for n in frames]
    times = doc.add_accessor(np.arange(len(poses), dtype=np.float32) / np.float32(motion.fps), FLOAT, min_max=True)
    samplers, channels = [], []

    def channel(node: int, path: str, values: np.ndarray) -> None:
        samplers.append({"input": times, "output": doc.add_accessor(values, FLOAT), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})

    for j in range(len(JOINT_NAMES)):
        q = _quats_xyzw(np.stack([p.pose[j] for p in poses]))
        for t in range(1, len(q)):  # keep neighbouring keys in one hemisphere so interpolation takes the short way
            if np.dot(q[t], q[t - 1]) < 0:
                q[t] = -q[t]
        channel(first_joint + j, "rotation", q)
    translation = np.stack([p.translation for p in poses]).astype(np.float64)
    if translation.any():
        channel(first_joint, "translation", (joints[0] + translation).astype(np.float32))
    if num_expr:
        channel(proxy, "weights", np.stack([p.expression for p in poses]).astype(np.float32).reshape(-1))
    doc.add("animations", {"name": motion.name, "samplers": samplers, "channels": channels})
