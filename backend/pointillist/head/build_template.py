"""Build the procedural head template (`blender_assets/head_template.npz`) from scratch.

    pointillist head build-template -o blender_assets/head_template.npz

Runs MediaPipe's face mesh on scikit-image's public-domain astronaut portrait to shape the face,
then assembles geometry (`template_geometry`) and rig data (`template_bases`). Needs the build-time
extras (mediapipe, scikit-image); the stored `.npz` needs neither.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import mediapipe_topology as mpt
from .data import HeadModelData
from .template_bases import REGION_NAMES, TemplateRigBuilder
from .template_geometry import build_geometry

TEMPLATE_ID = "pointillist-head-v1"


def portrait_landmarks() -> tuple[np.ndarray, tuple[int, int]]:
    """MediaPipe's 478 landmarks (normalised) on the astronaut portrait, and the image size."""
    import mediapipe as mp
    import skimage.data

    image = skimage.data.astronaut()
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        result = mesh.process(image)
    if not result.multi_face_landmarks:
        raise RuntimeError("MediaPipe found no face in the template portrait")
    points = np.array([[p.x, p.y, p.z] for p in result.multi_face_landmarks[0].landmark])
    return points, (image.shape[1], image.shape[0])


def build_template(landmarks: np.ndarray | None = None, image_size: tuple[int, int] = (512, 512),
                   depth_scale: float | None = None) -> HeadModelData:
    if landmarks is None:
        landmarks, image_size = portrait_landmarks()
    geometry = build_geometry(landmarks, image_size, depth_scale=depth_scale)
    rig = TemplateRigBuilder(geometry).build()
    faces = geometry.faces
    # landmark -> (a face holding that vertex, one-hot barycentrics)
    first_face = np.full(len(geometry.vertices), -1)
    slot = np.zeros(len(geometry.vertices), dtype=int)
    for fi in range(len(faces) - 1, -1, -1):
        for k in range(3):
            first_face[faces[fi, k]] = fi
            slot[faces[fi, k]] = k
    lv = geometry.landmark_vertices
    bary = np.zeros((len(lv), 3), dtype=np.float32)
    bary[np.arange(len(lv)), slot[lv]] = 1.0
    data = HeadModelData(
        model_id=TEMPLATE_ID,
        vertices=geometry.vertices.astype(np.float32),
        faces=faces.astype(np.int64),
        joint_regressor=rig.joint_regressor.astype(np.float32),
        lbs_weights=rig.lbs_weights.astype(np.float32),
        shape_dirs=rig.shape_dirs.astype(np.float32),
        shape_names=rig.shape_names,
        expr_dirs=rig.expr_dirs.astype(np.float32),
        expr_names=rig.expr_names,
        vertex_regions=rig.vertex_regions.astype(np.int16),
        region_names=list(REGION_NAMES),
        face_parts=geometry.face_parts.astype(np.int16),
        part_names=list(geometry.part_names),
        landmark_faces=first_face[lv].astype(np.int64),
        landmark_barycentrics=bary,
        meta={
            "source": "procedural; face shaped by MediaPipe 0.10.21 landmarks on skimage.data.astronaut()",
            "landmarks_sha256": hashlib.sha256(np.round(landmarks, 6).tobytes()).hexdigest(),
            "num_landmarks": int(mpt.NUM_LANDMARKS),
        },
    )
    data.validate()
    return data


def main(out: str | Path) -> HeadModelData:
    data = build_template()
    data.save(out)
    return data
