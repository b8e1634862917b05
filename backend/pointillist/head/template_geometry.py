"""Geometry of the procedural head template: face mask + skull + neck + ears + eyes + mouth + teeth.

The face is MediaPipe's 468-vertex face mesh, shaped by MediaPipe's own landmarks on a public-domain
portrait (scikit-image's astronaut), symmetrised and scaled to adult proportions. Around it, rings of
vertices sweep back over a smooth radial "skull" (a soft union of cranium, jaw, neck and ear volumes)
to a pole at the back of the head, so the whole head is one closed surface whose face vertices are
MediaPipe's landmarks by construction. Eyeballs, a mouth cavity and two rows of teeth are separate
parts. Everything here is deterministic numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from . import mediapipe_topology as mpt
from .mesh_ops import anchor_field, fan, orient_consistently, uv_sphere, zip_loops

#: Outer eye-corner distance of an average adult (metres); sets the scale of the face mask.
OUTER_CANTHAL_WIDTH = 0.092
EYEBALL_RADIUS = 0.0120
IRIS_RADIUS = 0.0058


@dataclass
class TemplateGeometry:
    vertices: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3)
    face_parts: np.ndarray  # (F,) index into part_names
    part_names: list[str]
    vertex_parts: np.ndarray  # (V,) index into part_names
    landmark_vertices: np.ndarray  # (478,) vertex index of each MediaPipe landmark
    eyeball_centres: dict[str, np.ndarray] = field(default_factory=dict)
    anchors: dict[str, np.ndarray] = field(default_factory=dict)  # named points used by bases/joints

    def part(self, name: str) -> np.ndarray:
        return self.vertex_parts == self.part_names.index(name)


PART_NAMES = ["face", "head", "left_eyeball", "right_eyeball", "mouth_cavity", "teeth_upper", "teeth_lower"]


# ---------------------------------------------------------------------------------------- face mask
#: MediaPipe's z is only "roughly" in x units. Rendering procedural avatars of templates built with
#: factors 0.6 / 0.8 / 1.0 / 1.25 and re-detecting them with MediaPipe at five views gave mean landmark
#: disagreements of 6.7 / 5.3 / 5.3 / 7.1 px at 512²: 1.0 is as good as any, so z is taken as is.
DEPTH_SCALE = 1.0


def face_mask_from_landmarks(landmarks: np.ndarray, image_size: tuple[int, int], depth_scale: float | None = None) -> np.ndarray:
    """MediaPipe normalised landmarks (478, 3) -> symmetric face mask in head space (478, 3), metres.

    Head space: +X the subject's left, +Y up, +Z out of the face. The mouth of the source portrait is
    closed to a neutral slit.
    """
    w, h = image_size
    p = landmarks.astype(np.float64) * np.array([w, h, w * (DEPTH_SCALE if depth_scale is None else depth_scale)])
    p = p * np.array([1.0, -1.0, -1.0])  # image y down -> +Y up; MediaPipe z toward camera -> +Z
    # Frame: the midline plane gives the lateral axis; chin -> forehead gives up.
    mid = p[list(mpt.MIDLINE)]
    centre = mid.mean(0)
    _, _, vt = np.linalg.svd(mid - centre)
    lateral = vt[2] * np.sign(vt[2] @ (p[mpt.LEFT_EYE_OUTER] - p[mpt.RIGHT_EYE_OUTER]))
    up = p[mpt.FOREHEAD] - p[mpt.CHIN]
    up = up - lateral * (up @ lateral)
    up /= np.linalg.norm(up)
    forward = np.cross(lateral, up)
    R = np.stack([lateral, up, forward])
    q = (p - centre) @ R.T
    q = _symmetrise(q)
    scale = OUTER_CANTHAL_WIDTH / np.linalg.norm(q[mpt.LEFT_EYE_OUTER] - q[mpt.RIGHT_EYE_OUTER])
    q *= scale
    q = _close_mouth(q)
    q = _relax_smile(q)
    # Place in head space: eye line at y = +0.025, nose tip at z = +0.108 (FLAME-like proportions).
    eye_y = 0.5 * (q[mpt.LEFT_EYE_OUTER, 1] + q[mpt.RIGHT_EYE_OUTER, 1])
    q += np.array([0.0, 0.025 - eye_y, 0.108 - q[mpt.NOSE_TIP, 2]])
    return q


def _symmetrise(q: np.ndarray) -> np.ndarray:
    """Average each landmark with its mirror partner (partners found by optimal assignment)."""
    mirrored = q * np.array([-1.0, 1.0, 1.0])
    cost = np.linalg.norm(q[:, None, :] - mirrored[None, :, :], axis=-1)
    n = mpt.NUM_MESH_LANDMARKS
    _, partner = linear_sum_assignment(cost[:n, :n])
    iris_partner = {468 + i: 473 + i for i in range(5)} | {473 + i: 468 + i for i in range(5)}
    partner = np.concatenate([partner, [iris_partner[i] for i in range(n, len(q))]])
    sym = 0.5 * (q + mirrored[partner])
    sym[partner == np.arange(len(q)), 0] = 0.0  # self-paired points lie on the midline
    return sym


def _close_mouth(q: np.ndarray) -> np.ndarray:
    """Move the lower lip up so the lips meet with a 1.5 mm slit (the source portrait smiles)."""
    upper = q[list(mpt.INNER_LIPS_UPPER)]
    lower = q[list(mpt.INNER_LIPS_LOWER)]
    order = np.argsort(upper[:, 0])
    gap_x = upper[order, 0]
    gap = np.clip(upper[order, 1] - lower[order, 1] - 0.0015, 0.0, None)  # per position along the mouth
    mouth_y = 0.5 * (q[13, 1] + q[14, 1])
    out = q.copy()
    below = q[:, 1] < mouth_y
    depth = np.exp(-(((mouth_y - q[:, 1]) / 0.030) ** 2))
    out[:, 1] += below * depth * np.interp(q[:, 0], gap_x, gap, left=0.0, right=0.0)
    return out


def _relax_smile(q: np.ndarray) -> np.ndarray:
    """Pull the mouth corners of the smiling source portrait down and in toward a neutral mouth."""
    moving = [(mpt.LEFT_MOUTH_CORNER, (-0.003, -0.004, 0.002)), (mpt.RIGHT_MOUTH_CORNER, (0.003, -0.004, 0.002))]
    for corner, near in ((mpt.LEFT_MOUTH_CORNER, (409, 375, 308, 415, 324, 270, 321)), (mpt.RIGHT_MOUTH_CORNER, (185, 146, 78, 191, 95, 40, 91))):
        moving += [(k, tuple(0.6 * np.array(dict(moving)[corner]))) for k in near]
    idx = [k for k, _ in moving]
    disp = np.array([d for _, d in moving])
    pinned = q[[0, 17, 13, 14, mpt.NOSE_TIP, mpt.CHIN]]
    out = q.copy()
    out[: mpt.NUM_MESH_LANDMARKS] += anchor_field(q[: mpt.NUM_MESH_LANDMARKS], q[idx], disp, pinned, 0.006, 0.012)
    return out


# ---------------------------------------------------------------------------------------- skull
@dataclass(frozen=True)
class Ellipsoid:
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]

    def exit_distance(self, dirs: np.ndarray) -> np.ndarray:
        """Distance from the origin along unit `dirs` (N,3) to where each ray leaves; 0 if it misses."""
        c = np.asarray(self.centre)
        r = np.asarray(self.radii)
        d = dirs / r
        o = -c / r
        a = (d * d).sum(1)
        b = 2 * (d @ o)
        cc = o @ o - 1.0
        disc = b * b - 4 * a * cc
        t = (-b + np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
        return np.where((disc > 0) & (t > 0), t, 0.0)


@dataclass(frozen=True)
class Capsule:
    """Vertical elliptic cylinder capped by a half-ellipsoid at the bottom (the neck)."""

    axis_x: float
    axis_z: float
    radii: tuple[float, float]  # (x, z)
    bottom: float  # y of the bottom cap's start
    cap: float  # cap height
    top: float = 0.0  # y above which the cylinder does not exist

    def exit_distance(self, dirs: np.ndarray) -> np.ndarray:
        rx, rz = self.radii
        dx, dy, dz = dirs.T
        ox, oz = -self.axis_x, -self.axis_z
        a = (dx / rx) ** 2 + (dz / rz) ** 2
        b = 2 * (dx * ox / rx**2 + dz * oz / rz**2)
        c = (ox / rx) ** 2 + (oz / rz) ** 2 - 1
        disc = b * b - 4 * a * c
        t_side = np.where(disc > 0, (-b + np.sqrt(np.maximum(disc, 0))) / (2 * np.maximum(a, 1e-12)), 0.0)
        y_hit = t_side * dy
        cap = Ellipsoid((self.axis_x, self.bottom, self.axis_z), (rx, self.cap, rz))
        t_cap = cap.exit_distance(dirs)
        side = np.where(y_hit <= self.top, t_side, 0.0)  # the neck ends inside the skull
        return np.where(y_hit >= self.bottom, side, t_cap)


SKULL = (
    Ellipsoid((0.0, 0.018, -0.012), (0.077, 0.100, 0.098)),  # cranium
    Ellipsoid((0.0, -0.040, 0.020), (0.058, 0.062, 0.070)),  # jaw and cheeks
    Capsule(0.0, -0.018, (0.056, 0.058), -0.150, 0.020),  # neck
    Ellipsoid((0.079, 0.005, -0.012), (0.014, 0.031, 0.019)),  # left ear
    Ellipsoid((-0.079, 0.005, -0.012), (0.014, 0.031, 0.019)),  # right ear
)
SOFT_MAX_POWER = 14.0


def skull_radius(dirs: np.ndarray) -> np.ndarray:
    """Radial distance of the skull surface along unit directions (N, 3): a smooth max of parts."""
    r = np.stack([part.exit_distance(dirs) for part in SKULL], axis=1)
    return (r**SOFT_MAX_POWER).sum(1) ** (1.0 / SOFT_MAX_POWER)


def _direction(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Unit direction at angle `alpha` from +Z and azimuth `beta` (from +X toward +Y)."""
    return np.stack([np.sin(alpha) * np.cos(beta), np.sin(alpha) * np.sin(beta), np.cos(alpha)], axis=-1)


def _polar(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.linalg.norm(p, axis=-1)
    alpha = np.arccos(np.clip(p[..., 2] / r, -1, 1))
    beta = np.arctan2(p[..., 1], p[..., 0])
    return r, alpha, beta


# ---------------------------------------------------------------------------------------- assembly
def build_geometry(landmarks: np.ndarray, image_size: tuple[int, int], edge: float = 0.0062,
                   depth_scale: float | None = None) -> TemplateGeometry:
    """Assemble the full template from MediaPipe landmarks of a frontal neutral-ish portrait."""
    mask = face_mask_from_landmarks(landmarks, image_size, depth_scale)
    face_v = mask[: mpt.NUM_MESH_LANDMARKS]
    face_f = mpt.triangles_from_edges(mpt.face_mesh_edges())

    verts: list[np.ndarray] = [face_v]
    parts: list[np.ndarray] = [np.full(len(face_v), PART_NAMES.index("face"))]
    faces: list[np.ndarray] = [face_f]
    fparts: list[np.ndarray] = [np.full(len(face_f), PART_NAMES.index("face"))]
    n_vert = len(face_v)

    def add(v: np.ndarray, f_local: np.ndarray | None, part: str, f_global: np.ndarray | None = None) -> np.ndarray:
        nonlocal n_vert
        idx = np.arange(n_vert, n_vert + len(v))
        verts.append(v)
        parts.append(np.full(len(v), PART_NAMES.index(part)))
        n_vert += len(v)
        for f in (None if f_local is None else f_local + idx[0], f_global):
            if f is not None and len(f):
                faces.append(f)
                fparts.append(np.full(len(f), PART_NAMES.index(part)))
        return idx

    # ---- skull rings from the face oval to the back pole
    oval = np.array(mpt.FACE_OVAL)
    r_oval, a_oval, b_oval = _polar(face_v[oval])
    order = np.argsort(b_oval)
    oval, r_oval, a_oval, b_oval = oval[order], r_oval[order], a_oval[order], b_oval[order]
    delta = r_oval - skull_radius(_direction(a_oval, b_oval))

    n_cols = 720
    cols_b = np.linspace(-np.pi, np.pi, n_cols, endpoint=False)
    a0 = np.interp(cols_b, b_oval, a_oval, period=2 * np.pi)
    d0 = np.interp(cols_b, b_oval, delta, period=2 * np.pi)
    ts = np.linspace(0.0, 1.0, 400)
    alpha = a0[:, None] + (np.pi - a0[:, None]) * ts[None]  # (cols, samples)
    dirs = _direction(alpha, cols_b[:, None].repeat(len(ts), 1))
    blend = np.exp(-((ts / 0.10) ** 2))[None]  # face offsets fade out over the first rings
    radius = skull_radius(dirs.reshape(-1, 3)).reshape(alpha.shape) + d0[:, None] * blend
    surf = dirs * radius[..., None]
    arc = np.concatenate([np.zeros((n_cols, 1)), np.cumsum(np.linalg.norm(np.diff(surf, axis=1), axis=-1), axis=1)], axis=1)

    n_rings = int(np.ceil(np.median(arc[:, -1]) / edge))
    ring_idx: list[np.ndarray] = []
    ring_ang: list[np.ndarray] = []
    ring_fracs = np.linspace(0, 1, n_rings + 1)[1:-1]
    for k, frac in enumerate(ring_fracs):
        target = arc[:, -1] * frac
        pts = np.stack([np.array([np.interp(target[c], arc[c], surf[c, :, i]) for i in range(3)]) for c in range(n_cols)])
        length = np.linalg.norm(np.diff(np.vstack([pts, pts[:1]]), axis=0), axis=1).sum()
        n = max(6, int(round(length / edge)))
        cum = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(np.vstack([pts, pts[:1]]), axis=0), axis=1))])
        s = (np.arange(n) + 0.5 * (k % 2)) / n * cum[-1]
        ring = np.stack([np.interp(s, cum, np.vstack([pts, pts[:1]])[:, i]) for i in range(3)], axis=1)
        ring_b = np.interp(s, cum, np.concatenate([cols_b, [cols_b[0] + 2 * np.pi]]))
        ring_b = (ring_b + np.pi) % (2 * np.pi) - np.pi
        o = np.argsort(ring_b)
        ring_idx.append(add(ring[o], None, "head"))
        ring_ang.append(ring_b[o])
    back = np.array([[0.0, 0.0, -1.0]])
    pole = add(back * skull_radius(back)[0], None, "head")

    head_faces = [zip_loops(oval, b_oval, ring_idx[0], ring_ang[0])]
    for k in range(len(ring_idx) - 1):
        head_faces.append(zip_loops(ring_idx[k], ring_ang[k], ring_idx[k + 1], ring_ang[k + 1]))
    head_faces.append(fan(ring_idx[-1], int(pole[0]))[:, [0, 2, 1]])
    faces.append(np.concatenate(head_faces))
    fparts.append(np.full(len(faces[-1]), PART_NAMES.index("head")))

    # ---- mouth cavity: extrude the inner-lip loop backwards and close it
    lips = np.array(mpt.closed_loop(mpt.INNER_LIPS_UPPER, mpt.INNER_LIPS_LOWER))
    lip_pts = face_v[lips]
    mouth_centre = lip_pts.mean(0)
    prev = lips
    for depth, sx, sy in ((0.006, 1.0, 2.2), (0.016, 0.95, 3.2), (0.030, 0.80, 3.0), (0.042, 0.55, 2.0)):
        ring = mouth_centre + (lip_pts - mouth_centre) * np.array([sx, 1.0, 1.0])
        ring[:, 1] = mouth_centre[1] + (lip_pts[:, 1] - mouth_centre[1]) * sy
        ring[:, 2] = lip_pts[:, 2] - depth - 0.004 * (np.abs(lip_pts[:, 0] - mouth_centre[0]) / 0.025)
        idx = add(ring, None, "mouth_cavity")
        k = len(lips)
        band = [(prev[i], idx[i], prev[(i + 1) % k]) for i in range(k)] + [(idx[i], idx[(i + 1) % k], prev[(i + 1) % k]) for i in range(k)]
        faces.append(np.array(band))
        fparts.append(np.full(len(band), PART_NAMES.index("mouth_cavity")))
        prev = idx
    back = add(np.array([[mouth_centre[0], mouth_centre[1], lip_pts[:, 2].mean() - 0.048]]), None, "mouth_cavity")
    cap = fan(prev, int(back[0]))
    faces.append(cap)
    fparts.append(np.full(len(cap), PART_NAMES.index("mouth_cavity")))

    # ---- teeth: two arches behind the lips
    upper_lip_y = face_v[13, 1]
    lower_lip_y = face_v[14, 1]
    front_z = min(face_v[13, 2], face_v[14, 2]) - 0.0045
    half_w = abs(face_v[mpt.LEFT_MOUTH_CORNER, 0]) * 0.95
    add_teeth = {
        "teeth_upper": (upper_lip_y + 0.0020, upper_lip_y - 0.0085),
        "teeth_lower": (lower_lip_y + 0.0005, lower_lip_y - 0.0080),
    }
    for name, (top, bottom) in add_teeth.items():
        v, f = _teeth_arch(half_w, front_z, top, bottom)
        add(v, f, name)

    # ---- eyeballs behind the eye openings, iris centre = MediaPipe iris landmark
    landmark_vertices = np.concatenate([np.arange(mpt.NUM_MESH_LANDMARKS), np.zeros(10, dtype=np.int64)])
    eyeball_centres = {}
    sphere_v, sphere_f = uv_sphere(EYEBALL_RADIUS, 16, 24)
    iris_ring = int(np.argmin(np.abs(EYEBALL_RADIUS * np.sin(np.pi * np.arange(1, 16) / 16) - IRIS_RADIUS))) + 1
    for side, iris in (("left_eyeball", mpt.LEFT_IRIS), ("right_eyeball", mpt.RIGHT_IRIS)):
        iris_centre = mask[iris[0]]
        lids = face_v[mpt.closed_loop(*((mpt.LEFT_EYE_UPPER, mpt.LEFT_EYE_LOWER) if side.startswith("left") else (mpt.RIGHT_EYE_UPPER, mpt.RIGHT_EYE_LOWER)))]
        front = min(iris_centre[2], lids[:, 2].mean() - 0.0015)  # cornea just behind the lid line
        centre = np.array([iris_centre[0], iris_centre[1], front - EYEBALL_RADIUS])
        eyeball_centres[side] = centre
        idx = add(sphere_v + centre, sphere_f, side)
        landmark_vertices[iris[0]] = idx[0]
        ring = idx[1 + (iris_ring - 1) * 24 : 1 + iris_ring * 24]
        for lm in iris[1:]:
            off = mask[lm] - iris_centre
            ang = np.arctan2(off[1], off[0])
            landmark_vertices[lm] = ring[int(round(ang / (2 * np.pi) * 24)) % 24]

    V = np.concatenate(verts)
    F = np.concatenate(faces)
    FP = np.concatenate(fparts)
    F = _orient_outward(V, F, FP)
    return TemplateGeometry(
        vertices=V, faces=F, face_parts=FP, part_names=list(PART_NAMES), vertex_parts=np.concatenate(parts),
        landmark_vertices=landmark_vertices, eyeball_centres=eyeball_centres,
        anchors={"mouth_centre": mouth_centre},
    )


def _teeth_arch(half_width: float, front_z: float, top: float, bottom: float, segments: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A closed horseshoe band (teeth row): a rounded-rectangle section swept along a parabola."""
    depth = 0.030
    u = np.linspace(-1, 1, segments + 1)
    x = half_width * np.sin(u * np.pi / 2.2) / np.sin(np.pi / 2.2)
    z = front_z - depth * (x / half_width) ** 2
    thickness = 0.0065
    section = [(0.0, top), (0.0, bottom), (-thickness, bottom + 0.001), (-thickness, top - 0.001)]
    tangent = np.stack([np.gradient(x), np.zeros_like(x), np.gradient(z)], 1)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    inward = np.cross(tangent, np.array([0.0, 1.0, 0.0]))  # points toward the arch centre
    verts = []
    for i in range(len(u)):
        for off, y in section:
            p = np.array([x[i], y, z[i]]) - inward[i] * off
            verts.append(p)
    verts = np.array(verts)
    faces = []
    for i in range(segments):
        for j in range(4):
            a, b = i * 4 + j, i * 4 + (j + 1) % 4
            c, d = a + 4, b + 4
            faces += [(a, c, b), (b, c, d)]
    faces += [(0, 1, 2), (0, 2, 3)]
    e = segments * 4
    faces += [(e, e + 2, e + 1), (e, e + 3, e + 2)]
    return verts, np.array(faces, dtype=np.int64)


def _orient_outward(V: np.ndarray, F: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Consistent winding everywhere, then flip components whose normals point inward."""
    F = orient_consistently(F)
    # connected components by shared vertices
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(V)
    rows = np.concatenate([F[:, 0], F[:, 1], F[:, 2]])
    cols = np.concatenate([F[:, 1], F[:, 2], F[:, 0]])
    _, label = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)), directed=False)
    face_label = label[F[:, 0]]
    v0, v1, v2 = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    normal = np.cross(v1 - v0, v2 - v0)
    for comp in np.unique(face_label):
        sel = face_label == comp
        centroid = V[np.unique(F[sel])].mean(0)
        is_cavity = (parts[sel] == PART_NAMES.index("mouth_cavity")).mean() > 0.5
        centre = (v0[sel] + v1[sel] + v2[sel]) / 3
        score = np.sum(normal[sel] * (centre - centroid))
        if is_cavity:
            score = -score
        if score < 0:
            F[sel] = F[sel][:, ::-1]
    return F
