"""Procedural avatars: plausible, bound, animatable Gaussian heads without a trained generator (engine v2).

Every later stage needs real data before the generator exists: tests, the Blender add-on, the render
bridge, and the generator's own training set. An avatar here is built on the head model with a random
identity shape and a random `Appearance` (synth/appearance.py): skin splats on the surface (a continuous
Fitzpatrick-like tone with undertone, multi-scale mottling, blush, lip tint, darker lid margins, optional
freckles), brows of varying thickness / arch / darkness, eyes with sclera / iris / pupil, teeth and a dark
mouth, hair grown as strands in ``SYNTH_STYLES``, a beard in one of ``BEARD_STYLES`` and optional glasses
(rigid splats bound to expression-free head triangles, so they follow the head and never the brows).
Every Gaussian is bound to a triangle, so it moves with the rig.

The appearance's key light is baked into the Gaussian colours (albedo × (ambient + key·max(n·l, 0)·tint),
n = the bound triangle's normal): what the Gaussians store is what a render shows, in any pose.

Point counts follow complexity, which is the adaptive-length property the generator must learn
(bald ≈ 10k ... afro / long ≈ 40k+ at density 1.0; see the dataset card for measured figures).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..avatar.binding import bind_to_nearest_triangles, closest_point_barycentrics
from ..avatar.gaussians import SH_C0, Avatar, Binding, Gaussians, HeadIdentity
from ..head import mediapipe_topology as mpt
from ..head.mesh_ops import vertex_normals
from ..head.model import HeadModel
from .appearance import (
    BEARD_STYLES,
    EYE_COLORS,
    STUDIO_LIGHT,
    Appearance,
    appearance_for_seed,
)

# v1 styles first (their indices are class labels elsewhere), new ones appended.
SYNTH_STYLES = ("bald", "short", "long", "bun", "curly", "buzz", "side_part", "ponytail", "afro", "bob")
HAIR_STYLE_WEIGHTS = np.array([0.08, 0.16, 0.14, 0.07, 0.09, 0.10, 0.12, 0.08, 0.07, 0.09])


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
    def empty() -> Splats:
        return Splats(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0),
                      Binding(np.zeros(0, np.int64), np.zeros((0, 3))))

    @staticmethod
    def concat(parts: list[Splats]) -> Splats:
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


def _value_noise(pos: np.ndarray, rng: np.random.Generator, octaves: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Smooth pseudo-noise on 3D points: per octave (frequency rad/m, amplitude) a few random plane waves."""
    out = np.zeros(len(pos))
    for freq, amp in octaves:
        waves = rng.normal(size=(5, 3))
        waves *= freq / np.linalg.norm(waves, axis=1, keepdims=True)
        out += amp * np.sin(pos @ waves.T + rng.random(5) * 6.283).sum(1) / np.sqrt(5)
    return out


class ProceduralAvatarBuilder:
    def __init__(self, seed: int, head: HeadModel, hair_style: str | None, beard: bool | None, density: float,
                 appearance: Appearance | None = None, beard_style: str | None = None, glasses: bool | None = None):
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.head = head
        self.density = float(density)
        rng = self.rng
        spread = np.array([0.6 if n.startswith("ear_") else 1.0 for n in head.data.shape_names])  # big ears read as a cartoon
        self.shape = np.clip(rng.normal(0, 0.8, head.num_shape) * spread, -2.5, 2.5).astype(np.float32)
        self.surface = HeadSurface(head, self.shape)
        self.style = hair_style or str(rng.choice(SYNTH_STYLES, p=HAIR_STYLE_WEIGHTS / HAIR_STYLE_WEIGHTS.sum()))
        if self.style not in SYNTH_STYLES:
            raise ValueError(f"unknown hair style {self.style!r}; choose from {', '.join(SYNTH_STYLES)}")
        self.beard = bool(rng.random() < 0.3) if beard is None else bool(beard)
        # a lone avatar (Blender, demos, tests) gets the soft frontal studio light; datasets pass their random one
        self.look = appearance or dataclasses.replace(appearance_for_seed(seed), lighting=STUDIO_LIGHT)
        self.beard_style = (beard_style or self.look.beard_style) if self.beard else "none"
        if self.beard and self.beard_style not in BEARD_STYLES:
            raise ValueError(f"unknown beard style {self.beard_style!r}; choose from {', '.join(BEARD_STYLES)}")
        self.glasses = bool(np.random.default_rng([int(seed), 8]).random() < 0.15) if glasses is None else bool(glasses)
        look = self.look
        self.skin_tone = look.skin_tone
        from .appearance import skin_color

        self.skin = skin_color(look.skin_tone, look.undertone)
        self.hair_name = look.hair_color
        self.hair = np.array(look.hair_rgb)
        self.natural_hair = np.array(look.natural_hair_rgb)
        self.eye_name = look.eye_color
        self.eye = np.array(EYE_COLORS[look.eye_color])
        self.shading_normals: list[np.ndarray] = []

    def spacing(self, base: float) -> float:
        return base / np.sqrt(self.density)

    # ------------------------------------------------------------------ skin
    def skin_splats(self) -> Splats:
        s, rng, look = self.surface, self.rng, self.look
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
        # multi-scale mottling: broad tone drift, blotches, fine pores; a little hue drift too
        mott = _value_noise(pos, rng, ((18.0, 0.030), (70.0, 0.022), (260.0, 0.018)))
        color *= (1 + mott)[:, None]
        color += _value_noise(pos, rng, ((40.0, 0.012),))[:, None] * np.array([1.0, -0.4, -0.6]) * color.mean()
        blush = np.exp(-(np.minimum(np.linalg.norm(pos - lm[mpt.LEFT_CHEEK], axis=1), np.linalg.norm(pos - lm[mpt.RIGHT_CHEEK], axis=1)) / 0.024) ** 2)
        nose = np.exp(-(np.linalg.norm(pos - lm[mpt.NOSE_TIP], axis=1) / 0.011) ** 2)
        redness = look.blush * blush + 0.7 * look.blush * nose
        color += redness[:, None] * np.array([0.9, -0.35, -0.25]) * color.mean()
        # darker, cooler skin under the eyes and in the lid creases
        eyes = [lm[list(mpt.LEFT_EYE_LOWER)].mean(0), lm[list(mpt.RIGHT_EYE_LOWER)].mean(0)]
        under = np.maximum(*(np.exp(-(((pos[:, 0] - e[0]) / 0.014) ** 2 + ((pos[:, 1] - e[1] + 0.006) / 0.005) ** 2)) for e in eyes))
        color *= (1 - 0.10 * under)[:, None] * (1 - 0.03 * under[:, None] * np.array([-1.0, 0.0, -0.5]))
        # lips: inside the outer lip contour, seen from the front; tint from pale to rosy
        lips = _inside_polygon(pos[:, :2], outer) & (pos[:, 2] > lm[mpt.LEFT_MOUTH_CORNER, 2] - 0.01)
        rosy = 0.5 + 0.5 * look.lip_tint
        lip_color = self.skin * np.array([0.80 + 0.06 * rosy, 0.58 - 0.10 * rosy, 0.58 - 0.06 * rosy]) + np.array([0.06 + 0.06 * rosy, 0.0, 0.02])
        edge = np.exp(-(cKDTree(outer).query(pos[lips][:, :2])[0] / 0.0025) ** 2)  # lip edges blend into skin
        color[lips] = (lip_color * (1 - 0.35 * edge[:, None]) + color[lips] * 0.35 * edge[:, None]) * rng.uniform(0.96, 1.04, (lips.sum(), 1))
        # eyelid line: darken the lid margins a little so the eyes read
        for upper in (mpt.LEFT_EYE_UPPER, mpt.RIGHT_EYE_UPPER):
            d = np.min(np.linalg.norm(pos[:, None] - lm[list(upper)][None], axis=2), axis=1)
            color *= (1 - 0.45 * np.exp(-(d / 0.0018) ** 2))[:, None]
        if self.style != "bald":  # scalp under hair takes the hair colour so gaps do not show skin
            scalp = self._hair_root_mask(pos) & (s.vertex_field(np.isin(s.region, [s.data.region_names.index("scalp")]).astype(float), tri, bary) > 0.5)
            share = 0.45 if self.style == "buzz" else 0.65
            color[scalp] = (1 - share) * color[scalp] + share * self.hair
        if self.beard and self.beard_style in ("stubble", "full", "goatee"):  # shaved shadow under the beard
            shadow = self._beard_mask(pos) * (0.22 if self.beard_style == "stubble" else 0.25)
            color = color * (1 - shadow[:, None]) + shadow[:, None] * self.natural_hair * 0.8
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

    def freckle_splats(self) -> Splats:
        """Small darker spots over the nose and cheeks (and a few moles on anyone)."""
        s, rng, look = self.surface, self.rng, self.look
        lm = s.lm
        n = look.freckles + int(rng.integers(0, 4))
        if n == 0:
            return Splats.empty()
        faces = s.part["face"] & (s.region_faces("cheeks") | s.region_faces("nose") | s.region_faces("forehead"))
        tri, bary, pos, nrm = s.sample(faces, 0.0012, rng)
        # freckles cluster on the nose bridge and upper cheeks
        centre = lm[mpt.NOSE_TIP] + np.array([0.0, 0.012, -0.01])
        w = np.exp(-(np.linalg.norm((pos - centre) * np.array([0.8, 1.6, 1.0]), axis=1) / 0.04) ** 2)
        pick = rng.choice(len(pos), size=min(n, len(pos)), replace=False, p=w / w.sum())
        tri, bary, pos, nrm = tri[pick], bary[pick], pos[pick], nrm[pick]
        r = rng.uniform(0.0006, 0.0015, len(pos))
        darker = rng.uniform(0.62, 0.85, (len(pos), 1))
        color = self.skin * darker * np.array([1.0, 0.9, 0.82])
        return Splats(pos + nrm * 0.0002, np.stack([r, r, r * 0.3], 1), _frames(nrm, rng.normal(size=nrm.shape)),
                      color, rng.uniform(0.35, 0.8, len(pos)), Binding(tri, bary))

    def inner_splats(self) -> Splats:
        """Mouth cavity, teeth and eyeballs (sclera, iris, pupil)."""
        s, rng = self.surface, self.rng
        out = []
        for part, spacing, color in (("mouth_cavity", 0.003, (0.28, 0.07, 0.08)), ("teeth_upper", 0.0021, (0.78, 0.74, 0.65)),
                                     ("teeth_lower", 0.0021, (0.72, 0.68, 0.60))):
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
        s, rng, look = self.surface, self.rng, self.look
        out = []
        for brow, side in ((mpt.LEFT_BROW, 1.0), (mpt.RIGHT_BROW, -1.0)):
            pts = s.lm[list(brow)]
            centre = pts.mean(0)
            order = np.argsort(np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0]))
            polygon = pts[order][:, :2].copy()
            # thickness: scale the band about its centre line; arch: raise the middle third
            half = np.abs(pts[:, 0] - centre[0]).max()
            polygon[:, 1] = centre[1] + (polygon[:, 1] - centre[1]) * look.brow_thickness
            polygon[:, 1] += look.brow_arch * np.clip(1 - ((polygon[:, 0] - centre[0] + side * 0.2 * half) / half) ** 2, 0, 1)
            face_ids = s.part["face"] & (np.linalg.norm(s.verts[s.faces].mean(1) - centre, axis=1) < 0.04)
            tri, bary, pos, nrm = s.sample(face_ids, self.spacing(0.0012), rng)
            keep = _inside_polygon(pos[:, :2], polygon)
            tri, bary, pos, nrm = tri[keep], bary[keep], pos[keep], nrm[keep]
            outward = np.abs(pos[:, 0] - s.lm[mpt.NOSE_TIP, 0]) / 0.06
            direction = np.stack([np.full(len(pos), side), 0.35 - 0.6 * outward, np.zeros(len(pos))], 1)
            direction -= nrm * (direction * nrm).sum(1, keepdims=True)
            pos = pos + nrm * 0.0006
            rot = _axis_frames(direction, rng)
            scales = np.stack([np.full(len(pos), 0.0024), np.full(len(pos), 0.0005), np.full(len(pos), 0.0004)], 1)
            # brows keep the natural colour under dye and stay visible on blonde / grey heads
            base = self.natural_hair if self.hair_name != "grey" else 0.5 * (self.natural_hair + self.hair)
            tint = look.brow_darkness * (0.75 if base.mean() > 0.35 else 1.0)
            color = np.minimum(base, self.skin * 0.55) * tint * rng.uniform(0.8, 1.1, (len(pos), 1))
            # sparser at the tail, denser at the head: opacity falls off outward
            opacity = np.clip(0.95 - 0.35 * outward, 0.45, 0.95)
            out.append(Splats(pos, scales, rot, color, opacity, Binding(tri, bary)))
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

    # root spacing, segments, segment length, gravity, lift off scalp, curl, strand thickness
    _HAIR_PARAMS: ClassVar[dict[str, tuple[float, int, float, float, float, float, float]]] = {
        "buzz": (0.0036, 2, 0.0016, 0.10, 0.0010, 0.0, 0.0010),
        "short": (0.0050, 4, 0.0032, 0.15, 0.0025, 0.0, 0.0013),
        "side_part": (0.0048, 7, 0.0050, 0.40, 0.0026, 0.0, 0.0013),
        "ponytail": (0.0050, 6, 0.0050, 0.05, 0.0020, 0.0, 0.0013),
        "bun": (0.0050, 5, 0.0034, 0.10, 0.0025, 0.0, 0.0013),
        "curly": (0.0052, 9, 0.0032, 0.05, 0.0040, 0.0045, 0.0017),
        "afro": (0.0056, 9, 0.0048, -0.10, 0.0060, 0.0060, 0.0024),
        "bob": (0.0052, 10, 0.0088, 0.80, 0.0030, 0.0, 0.0012),
        "long": (0.0052, 17, 0.0100, 0.75, 0.0030, 0.0, 0.0012),
    }

    def hair_splats(self) -> Splats:
        if self.style == "bald":
            return Splats.empty()
        s, rng = self.surface, self.rng
        allowed = (s.part["head"] | s.part["face"]) & ~s.region_faces("ears") & ~s.region_faces("neck") & ~s.region_faces("jaw")
        centres = s.verts[s.faces].mean(1)
        allowed &= self._hair_root_mask(centres)
        spacing, n_seg, seg_len, gravity, lift, curl, thickness = self._HAIR_PARAMS[self.style]
        if self.style not in ("buzz",):
            seg_len *= self.look.hair_length
        _, _, root, nrm = s.sample(allowed, self.spacing(spacing), rng)
        n = len(root)
        crown = np.array([0.0, 0.125, -0.035])
        comb = root - crown
        comb[:, 1] = 0.0  # comb outward from the crown in plan view...
        flat = np.linalg.norm(comb, axis=1) < 0.01  # ...and give roots right at the crown a direction of their own
        angle = rng.random(flat.sum()) * 2 * np.pi
        comb[flat] = np.stack([np.cos(angle), np.zeros_like(angle), np.sin(angle)], 1)
        comb = comb / np.linalg.norm(comb, axis=1, keepdims=True) + np.array([0.0, -0.35, 0.0])
        if self.style == "side_part":  # a part line off-centre; hair combed away from it, the fringe swept across
            part_x = (1 if rng.random() < 0.5 else -1) * rng.uniform(0.015, 0.035)
            side = np.sign(root[:, 0] - part_x + 1e-6)
            front = root[:, 2] > 0.03
            comb[:, 0] += 1.4 * side * ~front - 1.2 * np.sign(part_x) * front
            comb[:, 2] -= 0.3 * ~front
        elif self.style == "ponytail":  # pulled back toward a tie at the back of the head
            tie = np.array([0.0, 0.07, -0.105])
            comb = tie - root
        elif self.style == "afro":  # out from the head centre
            comb = root - np.array([0.0, 0.04, -0.03])
        skin_vertices = np.flatnonzero(np.isin(np.arange(len(s.verts)), s.faces[s.part["face"] | s.part["head"]]))
        tree = cKDTree(s.verts[skin_vertices])
        points = [root + nrm * lift]
        direction = comb / np.maximum(np.linalg.norm(comb, axis=1, keepdims=True), 1e-9)
        if self.style == "afro":
            direction = 0.5 * direction + 0.6 * nrm
        else:
            direction = direction - nrm * (direction * nrm).sum(1, keepdims=True) * 0.9 + nrm * (0.1 if self.style == "ponytail" else 0.25)
        phase = rng.random(n) * 6.28
        length = seg_len * rng.uniform(0.7, 1.3, n)
        if self.style in ("long", "bob"):
            length *= np.where(root[:, 2] > 0.05, 0.55, 1.0)  # shorter at the front: a fringe, not a veil
        p = points[0]
        for k in range(n_seg):
            d = direction + gravity * (k / max(n_seg - 1, 1)) * np.array([0.0, -1.0, 0.0])
            if curl:
                d = d + curl / seg_len * 0.5 * np.stack([np.cos(phase + k * 1.3), np.sin(phase + k * 1.3), np.cos(phase * 0.7 + k)], 1)
            d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
            if self.style in ("short", "long", "side_part", "bob"):  # no strand stands straight up off the crown
                d[:, 1] = np.minimum(d[:, 1], 0.35)
                d /= np.linalg.norm(d, axis=1, keepdims=True)
            p = p + d * length[:, None]
            # keep strands outside the head: push away from the nearest surface point
            _, nearest = tree.query(p)
            idx = skin_vertices[nearest]
            out = p - s.verts[idx]
            below = (out * s.normals[idx]).sum(1) < lift
            p[below] += s.normals[idx[below]] * (lift - (out[below] * s.normals[idx[below]]).sum(1))[:, None]
            if self.style in ("long", "bob", "side_part"):  # keep the face clear: strands in front of the face slide to the sides
                front = (p[:, 2] > 0.0) & (np.abs(p[:, 0]) < 0.082) & (p[:, 1] < (0.075 if self.style != "side_part" else 0.085))
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
        if self.hair_name == "grey":  # salt and pepper: individual strands keep the natural colour
            dark = np.repeat(rng.random(n) < 0.3, n_seg)
            color[dark] = self.natural_hair * np.repeat(strand_shade, n_seg)[dark, None]
        scales = np.stack([np.maximum(seg * 0.55, 0.0008), np.full(len(mids), thickness), np.full(len(mids), thickness * 0.8)], 1)
        splats = [self._bound(mids, scales, _axis_frames(dirs, rng), color, 0.9, allowed)]
        if self.style == "bun":
            splats.append(self._bun(allowed))
        if self.style == "ponytail":
            splats.append(self._ponytail(allowed))
        return Splats.concat(splats)

    def _ponytail(self, allowed: np.ndarray) -> Splats:
        """A tail hanging from the tie at the back of the head: strands in a narrow cone, with gravity."""
        rng = self.rng
        tie = np.array([0.0, 0.07, -0.112])
        n = int(700 * self.density)
        n_seg = 12
        seg = 0.011 * self.look.hair_length * rng.uniform(0.75, 1.2, n)
        start = tie + rng.normal(0, 0.006, (n, 3))
        d = np.array([0.0, -0.2, -1.0]) + rng.normal(0, 0.25, (n, 3))
        pts = [start]
        p = start
        for k in range(n_seg):
            d = d + np.array([0.0, -0.45, 0.0])
            d = d / np.linalg.norm(d, axis=1, keepdims=True)
            p = p + d * seg[:, None]
            p[:, 2] = np.minimum(p[:, 2], -0.105 - 0.01 * np.abs(np.sin(k)))  # hang behind the nape
            pts.append(p.copy())
        pts = np.stack(pts, 1)
        mids = 0.5 * (pts[:, 1:] + pts[:, :-1]).reshape(-1, 3)
        dirs = (pts[:, 1:] - pts[:, :-1]).reshape(-1, 3)
        along = np.tile(np.arange(n_seg) / (n_seg - 1), n)
        color = self.hair[None] * np.repeat(rng.uniform(0.8, 1.2, n), n_seg)[:, None] * (0.85 + 0.25 * along)[:, None]
        width = 0.0016 * (1 - 0.4 * along)
        scales = np.stack([np.maximum(np.linalg.norm(dirs, axis=1) * 0.55, 0.0008), width, width * 0.8], 1)
        band = np.repeat(np.arange(n_seg)[None] == 0, n, 0).reshape(-1)  # the hair tie
        color[band] = self.look.glasses_rgb
        return self._bound(mids, scales, _axis_frames(dirs, rng), color, 0.92, allowed)

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

    def _beard_mask(self, pos: np.ndarray) -> np.ndarray:
        """(N,) float: where this subject's beard style grows (1) on points near the lower face."""
        lm = self.surface.lm
        x, y, z = pos.T
        nose_base = lm[2, 1]
        outer = lm[list(mpt.closed_loop(mpt.OUTER_LIPS_UPPER, mpt.OUTER_LIPS_LOWER))][:, :2]
        not_lips = ~_inside_polygon(pos[:, :2], outer)
        upper_lip_top = lm[list(mpt.OUTER_LIPS_UPPER), 1].max()
        lower_lip_bottom = lm[list(mpt.OUTER_LIPS_LOWER), 1].min()
        mouth_half = abs(lm[mpt.LEFT_MOUTH_CORNER, 0] - lm[mpt.RIGHT_MOUTH_CORNER, 0]) / 2
        moustache = (y < nose_base - 0.003) & (y > upper_lip_top - 0.002) & (np.abs(x) < mouth_half + 0.004) & (z > lm[mpt.LEFT_MOUTH_CORNER, 2] - 0.012)
        style = self.beard_style
        if style == "moustache":
            keep = moustache
        elif style == "goatee":
            chin = (np.abs(x) < mouth_half * 0.75 + 0.003) & (y < lower_lip_bottom + 0.002) & (y > lm[mpt.CHIN, 1] - 0.012) & (z > -0.0)
            keep = moustache | chin | ((np.abs(x) < mouth_half + 0.004) & (np.abs(y - lm[mpt.LEFT_MOUTH_CORNER, 1]) < 0.012) & (np.abs(x) > mouth_half - 0.004))
        else:  # full / stubble: the v1 beard area
            cheek_line = lm[mpt.LEFT_CHEEKBONE, 1] - 0.028
            keep = (y < nose_base - 0.004) & (y > -0.10) & (z > -0.03) & ((y < cheek_line) | (np.abs(x) < 0.03))
        return (keep & not_lips).astype(float)

    def beard_splats(self) -> Splats:
        if not self.beard:
            return Splats.empty()
        s, rng = self.surface, self.rng
        faces = (s.part["face"] | s.part["head"]) & (s.region_faces("jaw") | s.region_faces("mouth") | s.region_faces("cheeks") | s.region_faces("neck"))
        stubble = self.beard_style == "stubble"
        tri, bary, pos, nrm = s.sample(faces, self.spacing(0.0017 if stubble else 0.0022), rng)
        keep = self._beard_mask(pos) > 0.5
        tri, bary, pos, nrm = tri[keep], bary[keep], pos[keep], nrm[keep]
        grow = self.look.beard_length * (1.0 if self.beard_style == "full" else 0.8)
        if stubble:
            length = rng.uniform(0.0005, 0.0010, len(pos))
            direction = np.array([0.0, -1.0, 0.0]) + 0.1 * nrm
            mids = pos + nrm * 0.0004
            width, opacity = 0.00045, rng.uniform(0.2, 0.45, len(pos))
        else:
            length = rng.uniform(0.0018, 0.0035, len(pos)) * grow
            direction = nrm * 0.6 + np.array([0.0, -1.0, 0.0])
            mids = pos + nrm * (0.0008 + length[:, None] * 0.3)
            width, opacity = 0.0009, np.full(len(pos), 0.88)
        scales = np.stack([length, np.full(len(pos), width), np.full(len(pos), width * 0.78)], 1)
        base = self.natural_hair if self.hair_name != "grey" else self.hair
        color = base * 0.75 * rng.uniform(0.8, 1.15, (len(pos), 1))
        return Splats(mids, scales, _axis_frames(direction, rng), color, opacity, Binding(tri, bary))

    def glasses_splats(self) -> Splats:
        """Frames (two rims, a bridge, two temples) as thin elongated splats, bound rigidly to the head.

        Bound only to triangles without expression displacement that follow the neck joint fully
        (forehead, scalp, ears, upper nose), so blinks, brow raises and the jaw never bend the frame.
        """
        if not self.glasses:
            return Splats.empty()
        s, rng, look = self.surface, self.rng, self.look
        data = s.data
        rigid_v = (np.abs(data.expr_dirs).max(axis=(1, 2)) < 1e-7) & (data.lbs_weights[:, 1] > 0.999)
        rigid = rigid_v[s.faces].all(1)
        style = look.glasses
        p = {"round": 2.0, "rectangular": 4.5, "browline": 3.5}[style]
        w = rng.uniform(0.022, 0.028) * (1.05 if style == "rectangular" else 1.0)
        h = w * (1.0 if style == "round" else rng.uniform(0.62, 0.78))
        thick = rng.uniform(0.0009, 0.0016) * (1.3 if style == "browline" else 1.0)
        curves: list[np.ndarray] = []
        hinges = []
        for part, side in (("left_eyeball", 1.0), ("right_eyeball", -1.0)):
            ev = s.verts[s.region == s.data.region_names.index(part)]
            c = ev.mean(0)
            z_lens = ev[:, 2].max() + 0.011
            cx = c[0] + side * 0.002
            cy = c[1] + 0.001
            def rim(t0: float, t1: float, cx=cx, cy=cy, z_lens=z_lens, side=side) -> np.ndarray:  # the superellipse from angle t0 to t1 (an open polyline)
                t = np.linspace(t0, t1, max(8, int(80 * (t1 - t0) / np.pi * np.sqrt(self.density))))
                ct, st = np.cos(t), np.sin(t)
                x = cx + w * np.sign(ct) * np.abs(ct) ** (2 / p)
                y = cy + h * np.sign(st) * np.abs(st) ** (2 / p)
                z = z_lens - 0.006 * ((x - cx) * side / w).clip(0) ** 2  # wrap a little toward the temples
                return np.stack([x, y, z], 1)

            if style == "browline":  # a heavy upper rim, a thin lower wire
                upper = rim(-0.1, np.pi + 0.1)
                curves += [upper, upper + np.array([0.0, -0.0012, 0.0]), rim(np.pi + 0.1, 2 * np.pi - 0.1)]
            else:
                curves.append(rim(0.0, 2 * np.pi))
            hinges.append((np.array([cx + side * w, cy + 0.35 * h, z_lens - 0.006]), side))
        # bridge between the inner rims, arching over the nose
        left_in = min((c for c in curves), key=lambda c: np.abs(c[:, 0]).min())
        y_b = left_in[:, 1].mean() + 0.35 * h
        xs = np.linspace(-1, 1, 20)
        half_gap = np.abs(left_in[:, 0]).min() + 0.001
        bridge = np.stack([xs * half_gap, y_b + 0.003 * (1 - xs ** 2), np.full(20, left_in[:, 2].max()) + 0.001], 1)
        curves.append(bridge)
        # temples: from the hinges back above the ears, pushed out of the head
        skin_vertices = np.flatnonzero(np.isin(np.arange(len(s.verts)), s.faces[s.part["face"] | s.part["head"]]))
        tree = cKDTree(s.verts[skin_vertices])
        for hinge, side in hinges:
            ears = s.verts[(s.region == s.data.region_names.index("ears")) & (np.sign(s.verts[:, 0]) == side)]
            end = np.array([ears[:, 0].mean() - side * 0.004, ears[:, 1].max() - 0.012, ears[:, 2].mean() - 0.006])
            line = hinge + np.linspace(0, 1, 40)[:, None] * (end - hinge)
            for _ in range(3):
                _, nearest = tree.query(line)
                idx = skin_vertices[nearest]
                d = ((line - s.verts[idx]) * s.normals[idx]).sum(1)
                line = line + s.normals[idx] * np.maximum(0.003 - d, 0)[:, None]
            curves.append(line)
        mids, dirs = [], []
        for c in curves:
            mids.append(0.5 * (c[1:] + c[:-1]))
            dirs.append(c[1:] - c[:-1])
        mids, dirs = np.concatenate(mids), np.concatenate(dirs)
        seg = np.linalg.norm(dirs, axis=1)
        scales = np.stack([np.maximum(seg * 0.7, 0.0006), np.full(len(mids), thick), np.full(len(mids), thick)], 1)
        color = np.array(look.glasses_rgb)[None] * rng.uniform(0.9, 1.1, (len(mids), 1))
        frame = self._bound(mids, scales, _axis_frames(dirs, rng), color, 0.97, rigid)
        frame.opacity[:] = 0.97
        # faint lenses: a little tint and sheen over the eyes
        lens_pts = []
        for part, side in (("left_eyeball", 1.0), ("right_eyeball", -1.0)):
            ev = s.verts[s.region == s.data.region_names.index(part)]
            cx, cy, z_lens = ev.mean(0)[0] + side * 0.002, ev.mean(0)[1] + 0.001, ev[:, 2].max() + 0.011
            g = np.stack(np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 10)), -1).reshape(-1, 2)
            g = g[(np.abs(g[:, 0]) ** p + np.abs(g[:, 1]) ** p) < 0.85]
            lens_pts.append(np.stack([cx + g[:, 0] * w, cy + g[:, 1] * h, np.full(len(g), z_lens) - 0.006 * (g[:, 0] * side).clip(0) ** 2], 1))
        lens = np.concatenate(lens_pts)
        r = 1.3 * w / 6
        lens_splats = self._bound(lens, np.tile([r, r, 0.0002], (len(lens), 1)), _frames(np.tile([0.0, 0.0, 1.0], (len(lens), 1)), np.tile([1.0, 0, 0], (len(lens), 1))),
                                  np.tile([0.80, 0.86, 0.92], (len(lens), 1)), 0.04, rigid)
        lens_splats.opacity[:] = 0.04
        return Splats.concat([frame, lens_splats])

    def _bound(self, pos, scales, rot, color, opacity, allowed_faces) -> Splats:
        binding = bind_to_nearest_triangles(pos, self.surface.verts, self.surface.faces, allowed=allowed_faces)
        return Splats(pos, scales, rot, color, np.full(len(pos), opacity) * self.rng.uniform(0.85, 1.0, len(pos)), binding)

    # ------------------------------------------------------------------ assembly
    def build(self) -> Avatar:
        splats = Splats.concat([self.skin_splats(), self.freckle_splats(), self.inner_splats(), self.brow_splats(),
                                self.hair_splats(), self.beard_splats(), self.glasses_splats()])
        s = self.surface
        corners = s.verts[s.faces[splats.binding.triangles]]
        bary = closest_point_barycentrics(splats.means, corners).astype(np.float32)
        quats = _matrix_to_quat(splats.rotations)
        # the key light, baked: shade by the bound triangle's normal (hair by its scalp triangle's)
        shading = self.look.lighting.shade(s.face_normals[splats.binding.triangles])
        colors = np.clip(splats.colors * shading, 0.0, 1.0)
        opacity = np.clip(splats.opacity, 0.02, 0.995)
        gaussians = Gaussians(
            means=splats.means.astype(np.float32),
            log_scales=np.log(np.maximum(splats.scales, 1e-5)).astype(np.float32),
            quats=quats.astype(np.float32),
            opacity_logits=np.log(opacity / (1 - opacity)).astype(np.float32),
            sh_dc=((colors - 0.5) / SH_C0).astype(np.float32),
            sh_rest=np.zeros((len(splats.means), 0, 3), np.float32),
        )
        look = self.look
        return Avatar(
            gaussians=gaussians,
            binding=Binding(splats.binding.triangles.astype(np.int64), bary),
            identity=HeadIdentity(model_id=self.head.model_id, shape=self.shape, vertex_offsets=None),
            meta={"generator": "procedural", "engine": 2, "seed": self.seed, "hair_style": self.style, "beard": self.beard,
                  "beard_style": self.beard_style, "glasses": look.glasses if self.glasses else "",
                  "skin_tone": round(self.skin_tone, 3), "fitzpatrick": look.fitzpatrick, "hair_color": self.hair_name,
                  "eye_color": self.eye_name, "density": self.density, "appearance": look.to_json()},
        )


def _matrix_to_quat(R: np.ndarray) -> np.ndarray:
    from ..head.lbs import matrix_to_quaternion

    return matrix_to_quaternion(torch.as_tensor(R)).numpy()


def make_procedural_avatar(seed: int, head: HeadModel | None = None, *, hair_style: str | None = None,
                           beard: bool | None = None, density: float = 1.0, beard_style: str | None = None,
                           glasses: bool | None = None, appearance: Appearance | None = None) -> Avatar:
    """A random, fully bound avatar; deterministic for a given seed and options.

    Unset options are drawn from the seed: the appearance from `appearance_for_seed(seed)` but lit by
    the soft frontal ``STUDIO_LIGHT`` (a lone asset should not carry a random baked side light; the
    dataset passes its plan's appearance, random light included), the beard style from it when ``beard``
    is true, glasses with probability 0.15.
    """
    if density <= 0 or not np.isfinite(density):
        raise ValueError("density must be a positive number")
    head = head or HeadModel.load()
    return ProceduralAvatarBuilder(seed, head, hair_style, beard, density, appearance, beard_style, glasses).build()
