"""Small mesh operations the procedural template is assembled with (numpy only)."""

from __future__ import annotations

import collections

import numpy as np


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unnormalised face normals (F, 3) (length = twice the area)."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    return np.cross(v1 - v0, v2 - v0)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3)."""
    fn = face_normals(vertices, faces)
    vn = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(vn, faces[:, i], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def orient_consistently(faces: np.ndarray) -> np.ndarray:
    """Flip faces so neighbours agree on winding (breadth-first over shared edges).

    Each connected component keeps the winding of its lowest-index face; the caller fixes the
    global sign (e.g. outward normals) per component.
    """
    faces = faces.copy()
    edge_faces: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for fi, f in enumerate(faces):
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            edge_faces[(min(a, b), max(a, b))].append(fi)
    seen = np.zeros(len(faces), dtype=bool)
    for seed in range(len(faces)):
        if seen[seed]:
            continue
        seen[seed] = True
        queue = collections.deque([seed])
        while queue:
            fi = queue.popleft()
            f = faces[fi]
            for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
                for nj in edge_faces[(min(a, b), max(a, b))]:
                    if seen[nj]:
                        continue
                    g = faces[nj]
                    # consistent neighbours traverse the shared edge in opposite directions
                    directed = {(g[0], g[1]), (g[1], g[2]), (g[2], g[0])}
                    if (a, b) in directed:
                        faces[nj] = g[::-1]
                    seen[nj] = True
                    queue.append(nj)
    return faces


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """Directed edges used by exactly one face, (B, 2)."""
    count = collections.Counter()
    directed = []
    for f in faces:
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            count[(min(a, b), max(a, b))] += 1
            directed.append((a, b))
    return np.array([(a, b) for a, b in directed if count[(min(a, b), max(a, b))] == 1], dtype=np.int64).reshape(-1, 2)


def zip_loops(inner: np.ndarray, inner_angle: np.ndarray, outer: np.ndarray, outer_angle: np.ndarray) -> np.ndarray:
    """Triangulate the band between two closed loops whose vertices are sorted by a shared angle.

    inner/outer: vertex indices; *_angle: increasing angles in [-pi, pi). Advances along whichever
    loop has the nearer next vertex, so loops of different lengths meet without slivers. Triangles are
    (inner_i, outer_j, inner_i+1) / (outer_j, outer_j+1, inner_i): outward when angles increase
    counter-clockwise seen from outside and `outer` lies further from the loops' centre.
    """
    n, m = len(inner), len(outer)
    a = np.concatenate([inner_angle, inner_angle[:1] + 2 * np.pi])
    b = np.concatenate([outer_angle, outer_angle[:1] + 2 * np.pi])
    # start both loops at the vertex with the smallest angle (already sorted) and align
    if b[0] > a[0]:
        b = b - 2 * np.pi * (b[0] - a[0] > np.pi)
    faces = []
    i = j = 0
    while i < n or j < m:
        next_a = a[i + 1] if i < n else np.inf
        next_b = b[j + 1] if j < m else np.inf
        if next_a <= next_b:
            faces.append((inner[i % n], outer[j % m], inner[(i + 1) % n]))
            i += 1
        else:
            faces.append((outer[j % m], outer[(j + 1) % m], inner[i % n]))
            j += 1
    return np.array(faces, dtype=np.int64)


def fan(loop: np.ndarray, centre: int) -> np.ndarray:
    """Close a loop with a fan of triangles around a centre vertex."""
    k = len(loop)
    return np.array([(loop[i], loop[(i + 1) % k], centre) for i in range(k)], dtype=np.int64)


def uv_sphere(radius: float, rings: int, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Sphere with its poles on ±Z (front pole first): vertices (V, 3), outward faces (F, 3)."""
    verts = [(0.0, 0.0, radius)]
    for r in range(1, rings):
        theta = np.pi * r / rings
        for s in range(segments):
            phi = 2 * np.pi * s / segments
            verts.append((radius * np.sin(theta) * np.cos(phi), radius * np.sin(theta) * np.sin(phi), radius * np.cos(theta)))
    verts.append((0.0, 0.0, -radius))
    faces = []
    for s in range(segments):
        faces.append((0, 1 + s, 1 + (s + 1) % segments))
    for r in range(rings - 2):
        base = 1 + r * segments
        for s in range(segments):
            a, b = base + s, base + (s + 1) % segments
            faces.append((a, a + segments, b))
            faces.append((b, a + segments, b + segments))
    last = len(verts) - 1
    base = 1 + (rings - 2) * segments
    for s in range(segments):
        faces.append((base + s, last, base + (s + 1) % segments))
    return np.array(verts, dtype=np.float64), np.array(faces, dtype=np.int64)


def anchor_field(points: np.ndarray, anchors: np.ndarray, disps: np.ndarray, pinned: np.ndarray | None,
                 sigma: float, reach: float) -> np.ndarray:
    """Smooth, local interpolation of anchor displacements (Shepard weights × distance envelope).

    `pinned` anchors have zero displacement and hold the skin in place near them.
    """
    if pinned is not None and len(pinned):
        all_anchors = np.concatenate([anchors, pinned])
        all_disps = np.concatenate([disps, np.zeros_like(pinned)])
    else:
        all_anchors, all_disps = anchors, disps
    d2 = ((points[:, None, :] - all_anchors[None]) ** 2).sum(-1)
    w = np.exp(-d2 / (2 * sigma**2)) + 1e-30
    field = (w @ all_disps) / w.sum(1, keepdims=True)
    near = np.sqrt(((points[:, None, :] - anchors[None]) ** 2).sum(-1)).min(1)
    return field * np.exp(-((near / reach) ** 2))[:, None]
