"""A tiny z-buffered, flat-lit triangle renderer (numpy) for judging head meshes by eye.

Used for the expression contact sheet and the template overview; Gaussians go through
`pointillist.render` instead. Cameras follow the project convention (OpenCV viewmat + K).
"""

from __future__ import annotations

import numpy as np

from .mesh_ops import face_normals


def render_mesh(
    vertices: np.ndarray,  # (V, 3) world
    faces: np.ndarray,  # (F, 3)
    viewmat: np.ndarray,  # (4, 4) world -> camera (OpenCV)
    K: np.ndarray,  # (3, 3)
    width: int,
    height: int,
    face_colors: np.ndarray | None = None,  # (F, 3) in [0, 1]
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    wireframe: bool = False,
) -> np.ndarray:
    """Render to an (H, W, 3) uint8 image with a headlight and a key light."""
    v = vertices @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = v[:, 2]
    uv = (v @ K.T)[:, :2] / np.maximum(z[:, None], 1e-6)
    n = face_normals(v, faces)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    centre = v[faces].mean(1)
    view = -centre / np.linalg.norm(centre, axis=1, keepdims=True)
    facing = (n * view).sum(1)
    key = np.array([-0.4, -0.6, -0.7])
    key /= np.linalg.norm(key)
    shade = 0.35 + 0.45 * np.abs(facing) + 0.3 * np.clip(n @ key * np.sign(facing), 0, 1)
    base = np.full((len(faces), 3), 0.8) if face_colors is None else face_colors
    colors = np.clip(base * shade[:, None], 0, 1)

    image = np.empty((height, width, 3))
    image[:] = background
    zbuf = np.full((height, width), np.inf)
    ys, xs = np.mgrid[0:height, 0:width]
    order = np.argsort(-centre[:, 2])
    for fi in order:
        tri = faces[fi]
        if np.any(z[tri] <= 1e-4):
            continue
        p = uv[tri]
        x0, y0 = np.floor(p.min(0)).astype(int)
        x1, y1 = np.ceil(p.max(0)).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, width - 1), min(y1, height - 1)
        if x0 > x1 or y0 > y1:
            continue
        px = xs[y0 : y1 + 1, x0 : x1 + 1] + 0.5
        py = ys[y0 : y1 + 1, x0 : x1 + 1] + 0.5
        (ax, ay), (bx, by), (cx, cy) = p
        det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
        if abs(det) < 1e-12:
            continue
        w0 = ((by - cy) * (px - cx) + (cx - bx) * (py - cy)) / det
        w1 = ((cy - ay) * (px - cx) + (ax - cx) * (py - cy)) / det
        w2 = 1 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        depth = w0 * z[tri[0]] + w1 * z[tri[1]] + w2 * z[tri[2]]
        sub = zbuf[y0 : y1 + 1, x0 : x1 + 1]
        win = inside & (depth < sub)
        sub[win] = depth[win]
        color = colors[fi]
        if wireframe:
            edge = np.minimum(np.minimum(w0, w1), w2) < 0.06
            color_px = np.where(edge[..., None], color * 0.45, color)
            image[y0 : y1 + 1, x0 : x1 + 1][win] = color_px[win]
        else:
            image[y0 : y1 + 1, x0 : x1 + 1][win] = color
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)
