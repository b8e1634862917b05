"""MediaPipe face-mesh topology: the triangles, loops and landmark groups our face region is built on.

The `mediapipe==0.10.21` wheel ships the face mesh only as edge lists (`FACEMESH_TESSELATION`);
the triangles are recovered here as the 3-cycles of that graph, minus the few 3-cycles that are not
faces (they are the only triangles whose three edges are each shared by three 3-cycles). Only the
template builder imports mediapipe; everything else reads the stored template.
"""

from __future__ import annotations

import collections

import numpy as np

NUM_MESH_LANDMARKS = 468  # the tessellated face mesh
NUM_LANDMARKS = 478  # + 2 x 5 iris landmarks with refine_landmarks=True

# Closed loops (subject's own left/right), in order. Upper lid / lower lid split at the corners.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
LEFT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
INNER_LIPS_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIPS_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
OUTER_LIPS_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LIPS_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LEFT_BROW = (276, 282, 283, 285, 293, 295, 296, 300, 334, 336)
RIGHT_BROW = (46, 52, 53, 55, 63, 65, 66, 70, 105, 107)
NOSE = (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326, 327, 344, 440)
RIGHT_IRIS = (468, 469, 470, 471, 472)  # centre first
LEFT_IRIS = (473, 474, 475, 476, 477)
MIDLINE = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 164, 0, 11, 12, 13, 14, 15, 16, 17, 18,
           200, 199, 175, 152)
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10
LEFT_MOUTH_CORNER, RIGHT_MOUTH_CORNER = 291, 61
LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 263, 33
LEFT_EYE_INNER, RIGHT_EYE_INNER = 362, 133
LEFT_CHEEK, RIGHT_CHEEK = 425, 205
LEFT_CHEEKBONE, RIGHT_CHEEKBONE = 352, 123
LEFT_ALAR, RIGHT_ALAR = 327, 98


def closed_loop(upper: tuple[int, ...], lower: tuple[int, ...]) -> list[int]:
    """One closed loop from two paths sharing their end points (upper left→right, lower back)."""
    return list(upper) + list(reversed(lower[1:-1]))


def face_mesh_edges() -> np.ndarray:
    """Undirected edges of MediaPipe's face tessellation, (E, 2) int."""
    from mediapipe.python.solutions import face_mesh_connections  # build-time only

    edges = {tuple(sorted(e)) for e in face_mesh_connections.FACEMESH_TESSELATION}
    return np.array(sorted(edges), dtype=np.int64)


def triangles_from_edges(edges: np.ndarray) -> np.ndarray:
    """Recover the faces of a triangulated surface from its edge graph, (F, 3) unoriented."""
    adjacency: dict[int, set[int]] = collections.defaultdict(set)
    for a, b in edges:
        adjacency[int(a)].add(int(b))
        adjacency[int(b)].add(int(a))
    cycles = set()
    for a, b in edges:
        for c in adjacency[int(a)] & adjacency[int(b)]:
            cycles.add(tuple(sorted((int(a), int(b), int(c)))))
    per_edge = collections.Counter()
    for t in cycles:
        for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])):
            per_edge[e] += 1
    faces = [t for t in cycles if not all(per_edge[e] > 2 for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))]
    return np.array(sorted(faces), dtype=np.int64)
