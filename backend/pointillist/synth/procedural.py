"""Procedural avatars: plausible, bound, animatable Gaussian heads without a trained generator.

Every later stage needs real data before the generator exists: tests, the Blender add-on, the render
bridge, and the generator's own training set. An avatar here is built on the head model with a random
identity: skin splats on the surface (a procedural skin tone with redder cheeks, nose and lips), brows,
eyes with sclera / iris / pupil, teeth and a dark mouth, hair grown as strands in several styles, and an
optional beard. Every Gaussian is bound to a triangle, so it moves with the rig.

Point counts follow complexity, which is the adaptive-length property the generator must learn. Measured
at density 1.0 without beard (mean over seeds 0-4 per style): bald ≈ 9.2k, short ≈ 17.8k, bun ≈ 22.5k,
curly ≈ 27.2k, long ≈ 43.2k; a beard adds ≈ 2-3k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..avatar.binding import bind_to_nearest_triangles, closest_point_barycentrics
from ..avatar.gaussians import SH_C0, Avatar, Binding, Gaussians, HeadIdentity
from ..head import mediapipe_topology as mpt
from ..head.mesh_ops import vertex_normals
from ..head.model import HeadModel

SYNTH_STYLES = ("bald", "short", "long", "bun", "curly")

SKIN_TONES = np.array([  # display sRGB, very light -> very dark
    (0.96, 0.84, 0.76), (0.90, 0.74, 0.63), (0.80, 0.62, 0.49), (0.66, 0.47, 0.34), (0.49, 0.33, 0.23), (0.33, 0.22, 0.15),
])
HAIR_COLORS = {
    "black": (0.045, 0.040, 0.038), "dark_brown": (0.15, 0.09, 0.055), "brown": (0.32, 0.20, 0.11),
    "auburn": (0.45, 0.18, 0.08), "blonde": (0.80, 0.64, 0.40), "grey": (0.62, 0.61, 0.60),
    "dyed_rose": (0.62, 0.22, 0.42), "dyed_teal": (0.12, 0.40, 0.45),
}
HAIR_WEIGHTS = np.array([0.26, 0.24, 0.16, 0.09, 0.12, 0.07, 0.03, 0.03])
EYE_COLORS = {"brown": (0.30, 0.17, 0.08), "dark_brown": (0.14, 0.08, 0.04), "blue": (0.28, 0.45, 0.66),
              "green": (0.30, 0.45, 0.28), "hazel": (0.45, 0.35, 0.16), "grey": (0.48, 0.52, 0.55)}
EYE_WEIGHTS = np.array([0.35, 0.2, 0.15, 0.1, 0.12, 0.08])


@dataclass
class Splats:
    """Gaussians in activated form while building: positions, scales (metres), rotations, colours, opacity."""

    means: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray  # (N, 3, 3) columns = local axes
    colors: np.ndarray  # (N, 3) sRGB in [0, 1]
    opacity: np.ndarray  # (N,)
    binding: Binding

    @staticmethod
    def empty() -> "Splats":
        return Splats(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0),
                      Binding(np.zeros(0, np.int64), np.zeros((0, 3))))

    @staticmethod
    def concat(parts: list["Splats"]) -> "Splats":
        parts = [p for p in parts if len(p.means)] or [Splats.empty()]
        return Splats(
            means=np.concatenate([p.means for p in parts]), scales=np.concatenate([p.scales for p in parts]),
            rotations=np.concatenate([p.rotations for p in parts]), colors=np.concatenate([p.colors for p in parts]),
            opacity=np.concatenate([p.opacity for p in parts]),
            binding=Binding(np.concatenate([p.binding.triangles for p in parts]), np.concatenate([p.binding.barycentrics for p in parts])),
        )


class HeadSurface:
    """The identity-shaped head with per-vertex masks the synthesiser paints with."""

    def __init__(self, head: HeadModel, shape: np.ndarray):
        with torch.no_grad():
            self.verts = head.identity_vertices(torch.as_tensor(shape, dtype=torch.float32)[None])[0].double().numpy()
        d = head.data
        self.data = d
        self.faces = d.faces
        self.normals = vertex_normals(self.verts, self.faces)
        v0, v1, v2 = (self.verts[self.faces[:, i]] for i in range(3))
        cross = np.cross(v1 - v0, v2 - v0)
        self.areas = 0.5 * np.linalg.norm(cross, axis=1)
        self.face_normals = cross / np.maximum(2 * self.areas[:, None], 1e-20)
        self.part = {name: d.part_mask(name) for name in d.part_names}
        self.region = d.vertex_regions
        self.lm = self.verts[: mpt.NUM_MESH_LANDMARKS]

    def region_faces(self, *names: str) -> np.ndarray:  # faces whose three vertices are all in these regions
        ids = [self.data.region_names.index(n) for n in names]
        return np.isin(self.region[self.faces], ids).all(1)

    def sample(self, face_mask: np.ndarray, spacing: float, rng: np.random.Generator, weight: np.ndarray | None = None):
        """Area-weighted stratified samples: (triangle ids, barycentrics, positions, normals)."""
        ids = np.flatnonzero(face_mask)
        expected = self.areas[ids] / spacing**2 * (1.0 if weight is None else weight[ids])
        counts = np.floor(expected + rng.random(len(ids))).astype(int)
        tri = np.repeat(ids, counts)
        r1 = np.sqrt(rng.random(len(tri)))
        r2 = rng.random(len(tri))
        bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1)
        pos = (self.verts[self.faces[tri]] * bary[..., None]).sum(1)
        nrm = (self.normals[self.faces[tri]] * bary[..., None]).sum(1)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        return tri, bary, pos, nrm

    def vertex_field(self, values: np.ndarray, tri: np.ndarray, bary: np.ndarray) -> np.ndarray:
        return (values[self.faces[tri]] * bary).sum(1)


def _frames(normals: np.ndarray, tangent_hint: np.ndarray) -> np.ndarray:
    """Rotation matrices whose third column is the normal and first follows the hint."""
    t1 = tangent_hint - normals * (tangent_hint * normals).sum(1, keepdims=True)
    bad = np.linalg.norm(t1, axis=1) < 1e-8
    t1[bad] = np.cross(normals[bad], np.array([0.0, 1.0, 0.0]) + 1e-3)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(normals, t1)
    return np.stack([t1, t2, normals], axis=2)


def _axis_frames(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation matrices whose first column is `direction` (elongated splats along strands)."""
    d = direction / np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    ref = rng.normal(size=d.shape)
    t = ref - d * (ref * d).sum(1, keepdims=True)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return np.stack([d, t, np.cross(d, t)], axis=2)


def _inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test of 2D points (N, 2) against a closed polygon (M, 2)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[None, :, 0], polygon[None, :, 1]
    x1, y1 = np.roll(polygon[:, 0], -1)[None], np.roll(polygon[:, 1], -1)[None]
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / np.where(y1 == y0, 1e-12, y1 - y0) + x0)
    return crosses.sum(1) % 2 == 1


class ProceduralAvatarBuilder:
    def __init__(self, seed: int, head: HeadModel, hair_style: str | None, beard: bool | None, density: float):
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.head = head
        self.density = float(density)
        rng = self.rng
        self.shape = np.clip(rng.normal(0, 0.8, head.num_shape), -2.5, 2.5).astype(np.float32)
        self.surface = HeadSurface(head, self.shape)
        self.style = hair_style or str(rng.choice(SYNTH_STYLES, p=[0.14, 0.30, 0.28, 0.12, 0.16]))
        if self.style not in SYNTH_STYLES:
            raise ValueError(f"unknown hair style {self.style!r}; choose from {', '.join(SYNTH_STYLES)}")
        self.beard = bool(rng.random() < 0.3) if beard is None else bool(beard)
        tone = rng.random() * (len(SKIN_TONES) - 1)
        lo = int(np.floor(tone))
        self.skin_tone = float(tone)
        self.skin = SKIN_TONES[lo] + (SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[lo]) * (tone - lo)
        self.hair_name = str(rng.choice(list(HAIR_COLORS), p=HAIR_WEIGHTS / HAIR_WEIGHTS.sum()))
        self.hair = np.array(HAIR_COLORS[self.hair_name]) * rng.uniform(0.85, 1.15)
        self.eye_name = str(rng.choice(list(EYE_COLORS), p=EYE_WEIGHTS / EYE_WEIGHTS.sum()))
        self.eye = np.array(EYE_COLORS[self.eye_name])

    def spacing(self, base: float) -> float:
        return base / np.sqrt(self.density)

    # ------------------------------------------------------------------ skin
    def skin_splats(self) -> Splats:
        s, rng = self.surface, self.rng
        skin_faces = s.part["face"] | s.part["head"]
        lm = s.lm
        openings = lm[mpt.closed_loop(mpt.LEFT_EYE_UPPER, mpt.LEFT_EYE_LOWER) + mpt.closed_loop(mpt.RIGHT_EYE_UPPER, mpt.RIGHT_EYE_LOWER)
                      + mpt.closed_loop(mpt.INNER_LIPS_UPPER, mpt.INNER_LIPS_LOWER)]
        near_opening = np.exp(-(cKDTree(openings).query(s.verts[s.faces].mean(1))[0] / 0.004) ** 2)
        outer = lm[list(mpt.closed_loop(mpt.OUTER_LIPS_UPPER, mpt.OUTER_LIPS_LOWER))][:, :2]
        centroids = s.verts[s.faces].mean(1)
        on_lips = _inside_polygon(centroids[:, :2], outer * 1.08 - outer.mean(0) * 0.08) & (centroids[:, 2] > lm[mpt.LEFT_MOUTH_CORNER, 2] - 0.01)
        # small splats where lids and lips end and on the lips, so their colours stay crisp
        weight = np.where(s.part["face"], 2.2, 1.0) * (1.0 + 3.0 * near_opening) * np.where(on_lips, 3.0, 1.0)
        spacing = self.spacing(0.0062)
        tri, bary, pos, nrm = s.sample(skin_faces, spacing, rng, weight)
        color = np.repeat(self.skin[None], len(pos), 0)
        # low-frequency mottling
        waves = rng.normal(size=(4, 3)) * 25
        phase = rng.random(4) * 6.28
        color *= (1 + 0.035 * np.sin(pos @ waves.T + phase).sum(1) / 2)[:, None]
        blush = np.exp(-(np.minimum(np.linalg.norm(pos - lm[mpt.LEFT_CHEEK], axis=1), np.linalg.norm(pos - lm[mpt.RIGHT_CHEEK], axis=1)) / 0.022) ** 2)
        nose = np.exp(-(np.linalg.norm(pos - lm[mpt.NOSE_TIP], axis=1) / 0.010) ** 2)
        redness = 0.08 * blush + 0.06 * nose
        color += redness[:, None] * np.array([0.9, -0.35, -0.25]) * color.mean()
        # lips: inside the outer lip contour, seen from the front
        lips = _inside_polygon(pos[:, :2], outer) & (pos[:, 2] > lm[mpt.LEFT_MOUTH_CORNER, 2] - 0.01)
        lip_color = self.skin * np.array([0.78, 0.52, 0.52]) + np.array([0.10, 0.0, 0.02])
        color[lips] = lip_color * rng.uniform(0.97, 1.03, (lips.sum(), 1))
        # soft baked key light, as in photographed skin: the nose, brows and jaw line read from the front
        light = np.array([0.25, 0.55, 0.80])
        color *= (0.80 + 0.22 * np.clip(nrm @ (light / np.linalg.norm(light)), 0.0, 1.0))[:, None]
        # eyelid line: darken the lid margins a little so the eyes read
        for upper in (mpt.LEFT_EYE_UPPER, mpt.RIGHT_EYE_UPPER):
            d = np.min(np.linalg.norm(pos[:, None] - lm[list(upper)][None], axis=2), axis=1)
            color *= (1 - 0.45 * np.exp(-(d / 0.0018) ** 2))[:, None]
        if self.style != "bald":  # scalp under hair takes the hair colour so gaps do not show skin
            scalp = self._hair_root_mask(pos) & (s.vertex_field(np.isin(s.region, [s.data.region_names.index("scalp")]).astype(float), tri, bary) > 0.5)
            color[scalp] = 0.35 * color[scalp] + 0.65 * self.hair
        local_spacing = spacing / np.sqrt(weight[tri])
        r = 0.85 * local_spacing  # random (not blue-noise) samples need generous footprints to close every gap
        # ...but never spill over the eye openings: shrink footprints near the lid margins
        lids = lm[mpt.closed_loop(mpt.LEFT_EYE_UPPER, mpt.LEFT_EYE_LOWER) + mpt.closed_loop(mpt.RIGHT_EYE_UPPER, mpt.RIGHT_EYE_LOWER)]
        inner_lips = lm[mpt.closed_loop(mpt.INNER_LIPS_UPPER, mpt.INNER_LIPS_LOWER)]
        r = np.minimum(r, np.maximum(0.45 * cKDTree(lids).query(pos)[0], 0.0004))
        r = np.minimum(r, np.maximum(0.45 * cKDTree(inner_lips).query(pos)[0], 0.0009))  # lips meet at rest
        scales = np.stack([r, r, r * 0.25], 1) * rng.uniform(0.85, 1.15, (len(pos), 1))
        rot = _frames(nrm, rng.normal(size=nrm.shape))
        return Splats(pos, scales, rot, np.clip(color, 0, 1), np.full(len(pos), 0.99), Binding(tri, bary))

    def inner_splats(self) -> Splats:
        """Mouth cavity, teeth and eyeballs (sclera, iris, pupil)."""
        s, rng = self.surface, self.rng
        out = []
        for part, spacing, color in (("mouth_cavity", 0.003, (0.28, 0.07, 0.08)), ("teeth_upper", 0.0021, (0.86, 0.83, 0.75)),
                                     ("teeth_lower", 0.0021, (0.82, 0.79, 0.71))):
            tri, bary, pos, nrm = s.sample(s.part[part], self.spacing(spacing), rng)
            r = self.spacing(spacing) * 0.8
            out.append(Splats(pos, np.tile([r, r, r * 0.3], (len(pos), 1)), _frames(nrm, rng.normal(size=nrm.shape)),
                              np.tile(color, (len(pos), 1)) * rng.uniform(0.93, 1.05, (len(pos), 1)), np.full(len(pos), 0.98), Binding(tri, bary)))
        for part in ("left_eyeball", "right_eyeball"):
            verts = s.verts[np.flatnonzero(s.region == s.data.region_names.index(part))]
            centre = verts.mean(0)
            radius = np.linalg.norm(verts - centre, axis=1).mean()
            faces = s.part[part] & (s.verts[s.faces].mean(1)[:, 2] > centre[2] + 0.2 * radius)  # the visible front
            tri, bary, pos, nrm = s.sample(faces, self.spacing(0.0011), rng)
            cos = (pos - centre)[:, 2] / np.linalg.norm(pos - centre, axis=1)
            angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
            color = np.tile([0.94, 0.92, 0.89], (len(pos), 1)) * (1 - 0.15 * np.clip((angle - 40) / 40, 0, 1))[:, None]
            iris = angle < 27
            ring = 0.75 + 0.5 * rng.random(iris.sum())
            color[iris] = self.eye * ring[:, None] * (1 - 0.4 * np.clip((angle[iris] - 20) / 7, 0, 1))[:, None]
            color[angle < 10.5] = (0.02, 0.02, 0.025)
            r = self.spacing(0.0011) * 0.75
            out.append(Splats(pos, np.tile([r, r, r * 0.3], (len(pos), 1)), _frames(nrm, rng.normal(size=nrm.shape)),
                              color, np.full(len(pos), 0.99), Binding(tri, bary)))
        return Splats.concat(out)

    def brow_splats(self) -> Splats:
        s, rng = self.surface, self.rng
        out = []
        for brow, side in ((mpt.LEFT_BROW, 1.0), (mpt.RIGHT_BROW, -1.0)):
            pts = s.lm[list(brow)]
            centre = pts.mean(0)
            order = np.argsort(np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0]))
            polygon = pts[order][:, :2]
            face_ids = s.part["face"] & (np.linalg.norm(s.verts[s.faces].mean(1) - centre, axis=1) < 0.035)
            tri, bary, pos, nrm = s.sample(face_ids, self.spacing(0.0012), rng)
            keep = _inside_polygon(pos[:, :2], polygon)
            tri, bary, pos, nrm = tri[keep], bary[keep], pos[keep], nrm[keep]
            outward = np.abs(pos[:, 0] - s.lm[mpt.NOSE_TIP, 0]) / 0.06
            direction = np.stack([np.full(len(pos), side), 0.35 - 0.6 * outward, np.zeros(len(pos))], 1)
            direction -= nrm * (direction * nrm).sum(1, keepdims=True)
            pos = pos + nrm * 0.0006
            rot = _axis_frames(direction, rng)
            scales = np.stack([np.full(len(pos), 0.0024), np.full(len(pos), 0.0005), np.full(len(pos), 0.0004)], 1)
            tint = 0.8 if self.hair_name not in ("grey", "blonde") else 0.6  # light hair still gets visible brows
            color = self.hair * tint * rng.uniform(0.8, 1.1, (len(pos), 1))
            out.append(Splats(pos, scales, rot, color, np.full(len(pos), 0.85), Binding(tri, bary)))
        return Splats.concat(out)

    # ------------------------------------------------------------------ hair
    def _hair_root_mask(self, pos: np.ndarray) -> np.ndarray:
        """Where hair grows: above a hairline that runs over the forehead, over the ears, to the nape."""
        x, y, z = pos.T
        brow_top = max(self.surface.lm[list(mpt.LEFT_BROW), 1].max(), self.surface.lm[list(mpt.RIGHT_BROW), 1].max())
        front_line = brow_top + 0.050 + 0.012 * (np.abs(x) / 0.05) ** 2  # receding a little at the temples
        side_line = 0.030
        back_line = -0.065
        line = np.interp(z, [-0.12, -0.05, -0.01, 0.03, 0.07], [back_line, back_line + 0.01, side_line, side_line + 0.015, front_line.mean() if np.ndim(front_line) else front_line])
        line = np.where(z > 0.045, np.maximum(line, front_line), line)
        return y > line

    def hair_splats(self) -> Splats:
        if self.style == "bald":
            return Splats.empty()
        s, rng = self.surface, self.rng
        allowed = (s.part["head"] | s.part["face"]) & ~s.region_faces("ears") & ~s.region_faces("neck") & ~s.region_faces("jaw")
        centres = s.verts[s.faces].mean(1)
        allowed &= self._hair_root_mask(centres)
        params = {  # root spacing, segments, segment length, gravity, lift off scalp, curl
            "short": (0.0050, 4, 0.0032, 0.15, 0.0025, 0.0),
            "bun": (0.0050, 5, 0.0034, 0.10, 0.0025, 0.0),
            "curly": (0.0052, 9, 0.0032, 0.05, 0.0040, 0.0045),
            "long": (0.0052, 17, 0.0100, 0.75, 0.0030, 0.0),
        }[self.style]
        spacing, n_seg, seg_len, gravity, lift, curl = params
        tri, bary, root, nrm = s.sample(allowed, self.spacing(spacing), rng)
        n = len(root)
        crown = np.array([0.0, 0.125, -0.035])
        comb = root - crown
        comb[:, 1] = 0.0  # comb outward from the crown in plan view...
        flat = np.linalg.norm(comb, axis=1) < 0.01  # ...and give roots right at the crown a direction of their own
        angle = rng.random(flat.sum()) * 2 * np.pi
        comb[flat] = np.stack([np.cos(angle), np.zeros_like(angle), np.sin(angle)], 1)
        comb = comb / np.linalg.norm(comb, axis=1, keepdims=True) + np.array([0.0, -0.35, 0.0])
        skin_vertices = np.flatnonzero(np.isin(np.arange(len(s.verts)), s.faces[s.part["face"] | s.part["head"]]))
        tree = cKDTree(s.verts[skin_vertices])
        points = [root + nrm * lift]
        direction = comb / np.maximum(np.linalg.norm(comb, axis=1, keepdims=True), 1e-9)
        direction = direction - nrm * (direction * nrm).sum(1, keepdims=True) * 0.9 + nrm * 0.25
        phase = rng.random(n) * 6.28
        length = seg_len * rng.uniform(0.7, 1.3, n)
        if self.style == "long":
            length *= np.where(root[:, 2] > 0.05, 0.55, 1.0)  # shorter at the front: a fringe, not a veil
        p = points[0]
        for k in range(n_seg):
            d = direction + gravity * (k / max(n_seg - 1, 1)) * np.array([0.0, -1.0, 0.0])
            if curl:
                d = d + curl / seg_len * 0.5 * np.stack([np.cos(phase + k * 1.3), np.sin(phase + k * 1.3), np.cos(phase * 0.7 + k)], 1)
            d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
            if self.style in ("short", "long"):  # no strand stands straight up off the crown
                d[:, 1] = np.minimum(d[:, 1], 0.35)
                d /= np.linalg.norm(d, axis=1, keepdims=True)
            p = p + d * length[:, None]
            # keep strands outside the head: push away from the nearest surface point
            _, nearest = tree.query(p)
            idx = skin_vertices[nearest]
            out = p - s.verts[idx]
            below = (out * s.normals[idx]).sum(1) < lift
            p[below] += s.normals[idx[below]] * (lift - (out[below] * s.normals[idx[below]]).sum(1))[:, None]
            if self.style == "long":  # keep the face clear: strands in front of the face slide to the sides
                front = (p[:, 2] > 0.0) & (np.abs(p[:, 0]) < 0.082) & (p[:, 1] < 0.075)
                p[front, 0] += np.sign(p[front, 0] + 1e-6) * 0.012
                p[front, 2] -= 0.006
                p[:, 1] = np.maximum(p[:, 1], -0.19)
            points.append(p.copy())
            direction = d
        pts = np.stack(points, 1)  # (n, n_seg + 1, 3)
        mids = 0.5 * (pts[:, 1:] + pts[:, :-1]).reshape(-1, 3)
        dirs = (pts[:, 1:] - pts[:, :-1]).reshape(-1, 3)
        seg = np.linalg.norm(dirs, axis=1)
        strand_shade = rng.uniform(0.8, 1.2, n)
        along = np.tile(np.arange(n_seg) / max(n_seg - 1, 1), n)
        color = self.hair[None] * np.repeat(strand_shade, n_seg)[:, None] * (0.75 + 0.35 * along)[:, None]
        thickness = {"curly": 0.0017, "long": 0.0012, "short": 0.0013, "bun": 0.0013}[self.style]
        scales = np.stack([np.maximum(seg * 0.55, 0.0008), np.full(len(mids), thickness), np.full(len(mids), thickness * 0.8)], 1)
        splats = [self._bound(mids, scales, _axis_frames(dirs, rng), color, 0.9, allowed)]
        if self.style == "bun":
            splats.append(self._bun(allowed))
        return Splats.concat(splats)

    def _bun(self, allowed: np.ndarray) -> Splats:
        rng = self.rng
        centre = np.array([0.0, 0.105, -0.085])
        radius = 0.032
        n = int(2500 * self.density)
        u = rng.normal(size=(n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        pos = centre + u * radius * rng.uniform(0.8, 1.0, (n, 1)) ** 0.5
        swirl = np.cross(u, np.array([0.2, 1.0, 0.3]))
        color = self.hair[None] * rng.uniform(0.75, 1.15, (n, 1))
        scales = np.stack([np.full(n, 0.0040), np.full(n, 0.0013), np.full(n, 0.0010)], 1)
        return self._bound(pos, scales, _axis_frames(swirl, rng), color, 0.92, allowed)

    def beard_splats(self) -> Splats:
        if not self.beard:
            return Splats.empty()
        s, rng = self.surface, self.rng
        lm = s.lm
        nose_base = lm[2, 1]
        faces = (s.part["face"] | s.part["head"]) & (s.region_faces("jaw") | s.region_faces("mouth") | s.region_faces("cheeks") | s.region_faces("neck"))
        tri, bary, pos, nrm = s.sample(faces, self.spacing(0.0022), rng)
        outer = lm[list(mpt.closed_loop(mpt.OUTER_LIPS_UPPER, mpt.OUTER_LIPS_LOWER))][:, :2]
        keep = (pos[:, 1] < nose_base - 0.004) & ~_inside_polygon(pos[:, :2], outer * 1.0)
        keep &= (pos[:, 1] > -0.10) & (pos[:, 2] > -0.03)
        cheek_line = lm[mpt.LEFT_CHEEKBONE, 1] - 0.028
        keep &= (pos[:, 1] < cheek_line) | (np.abs(pos[:, 0]) < 0.03)
        tri, bary, pos, nrm = tri[keep], bary[keep], pos[keep], nrm[keep]
        direction = nrm * 0.6 + np.array([0.0, -1.0, 0.0])
        length = rng.uniform(0.0018, 0.0035, len(pos))
        mids = pos + nrm * (0.0008 + length[:, None] * 0.3)
        scales = np.stack([length, np.full(len(pos), 0.0009), np.full(len(pos), 0.0007)], 1)
        color = self.hair * 0.75 * rng.uniform(0.8, 1.15, (len(pos), 1))
        return Splats(mids, scales, _axis_frames(direction, rng), color, np.full(len(pos), 0.88), Binding(tri, bary))

    def _bound(self, pos, scales, rot, color, opacity, allowed_faces) -> Splats:
        binding = bind_to_nearest_triangles(pos, self.surface.verts, self.surface.faces, allowed=allowed_faces)
        return Splats(pos, scales, rot, color, np.full(len(pos), opacity) * self.rng.uniform(0.85, 1.0, len(pos)), binding)

    # ------------------------------------------------------------------ assembly
    def build(self) -> Avatar:
        splats = Splats.concat([self.skin_splats(), self.inner_splats(), self.brow_splats(), self.hair_splats(), self.beard_splats()])
        s = self.surface
        corners = s.verts[s.faces[splats.binding.triangles]]
        bary = closest_point_barycentrics(splats.means, corners).astype(np.float32)
        quats = _matrix_to_quat(splats.rotations)
        colors = np.clip(splats.colors, 0.0, 1.0)
        opacity = np.clip(splats.opacity, 0.02, 0.995)
        gaussians = Gaussians(
            means=splats.means.astype(np.float32),
            log_scales=np.log(np.maximum(splats.scales, 1e-5)).astype(np.float32),
            quats=quats.astype(np.float32),
            opacity_logits=np.log(opacity / (1 - opacity)).astype(np.float32),
            sh_dc=((colors - 0.5) / SH_C0).astype(np.float32),
            sh_rest=np.zeros((len(splats.means), 0, 3), np.float32),
        )
        return Avatar(
            gaussians=gaussians,
            binding=Binding(splats.binding.triangles.astype(np.int64), bary),
            identity=HeadIdentity(model_id=self.head.model_id, shape=self.shape, vertex_offsets=None),
            meta={"generator": "procedural", "seed": self.seed, "hair_style": self.style, "beard": self.beard,
                  "skin_tone": round(self.skin_tone, 3), "hair_color": self.hair_name, "eye_color": self.eye_name,
                  "density": self.density},
        )


def _matrix_to_quat(R: np.ndarray) -> np.ndarray:
    from ..head.lbs import matrix_to_quaternion

    return matrix_to_quaternion(torch.as_tensor(R)).numpy()


def make_procedural_avatar(seed: int, head: HeadModel | None = None, *, hair_style: str | None = None,
                           beard: bool | None = None, density: float = 1.0) -> Avatar:
    """A random, fully bound avatar; deterministic for a given seed and options."""
    if density <= 0 or not np.isfinite(density):
        raise ValueError("density must be a positive number")
    head = head or HeadModel.load()
    return ProceduralAvatarBuilder(seed, head, hair_style, beard, density).build()
