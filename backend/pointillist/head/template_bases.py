"""Rig data of the procedural head: regions, LBS weights, joint regressor, identity and expression bases.

Every basis is a displacement field built from a few anchor landmarks (MediaPipe indices, so the same
recipe works on any face mask with that topology): the anchors' displacements are interpolated by
normalised Gaussian weights and multiplied by an envelope that decays with the distance to the moving
anchors, so each shape is smooth and local. Eyeballs and teeth stay rigid: they take the mean
displacement of the skin around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import mediapipe_topology as mpt
from .data import JOINT_NAMES
from .mesh_ops import anchor_field
from .template_geometry import TemplateGeometry

REGION_NAMES = ["left_eye", "right_eye", "brows", "nose", "mouth", "cheeks", "jaw", "forehead", "scalp",
                "ears", "neck", "left_eyeball", "right_eyeball", "teeth_upper", "teeth_lower", "mouth_cavity"]

#: Regions an expression may legitimately move, by the region it is named after (locality checks).
REGION_GROUPS: dict[str, tuple[str, ...]] = {
    "left_eye": ("left_eye",), "right_eye": ("right_eye",), "brows": ("brows",), "nose": ("nose",),
    "cheeks": ("cheeks",), "mouth": ("mouth", "mouth_cavity"), "jaw": ("jaw", "teeth_lower", "mouth", "mouth_cavity"),
}

REGION_SEEDS: dict[str, tuple[int, ...]] = {
    "left_eye": tuple(mpt.closed_loop(mpt.LEFT_EYE_UPPER, mpt.LEFT_EYE_LOWER)) + (467, 260, 259, 257, 258, 286, 414),
    "right_eye": tuple(mpt.closed_loop(mpt.RIGHT_EYE_UPPER, mpt.RIGHT_EYE_LOWER)) + (247, 30, 29, 27, 28, 56, 190),
    "brows": mpt.LEFT_BROW + mpt.RIGHT_BROW,
    "nose": mpt.NOSE,
    "mouth": mpt.OUTER_LIPS_UPPER + mpt.OUTER_LIPS_LOWER + mpt.INNER_LIPS_UPPER + mpt.INNER_LIPS_LOWER
    + (164, 167, 393, 165, 391, 92, 322, 186, 410, 216, 436, 57, 287, 43, 273, 106, 335, 182, 406, 83, 313, 18,
       202, 422, 212, 432, 204, 424, 194, 418, 201, 421, 200, 39, 37, 72, 302, 73, 303, 11, 12, 15, 16),
    "cheeks": (50, 101, 36, 205, 187, 123, 116, 117, 118, 119, 100, 280, 330, 266, 425, 411, 352, 345, 346, 347, 348, 329,
               207, 427, 192, 416, 147, 376, 213, 433, 261, 448, 449, 450, 451, 452, 453, 31, 228, 229, 230, 231, 232, 233),
    "jaw": (152, 148, 176, 149, 150, 136, 172, 58, 377, 400, 378, 379, 365, 397, 288, 175, 199, 200, 171, 140, 170,
            169, 135, 138, 396, 369, 395, 394, 364, 367, 32, 262, 208, 428, 211, 431),
    "forehead": (10, 151, 9, 108, 337, 69, 299, 104, 333, 67, 297, 109, 338, 103, 332, 54, 284),
}


@dataclass
class RigData:
    vertex_regions: np.ndarray  # (V,) index into REGION_NAMES
    lbs_weights: np.ndarray  # (V, 5)
    joint_regressor: np.ndarray  # (5, V)
    shape_dirs: np.ndarray  # (V, 3, S)
    shape_names: list[str]
    expr_dirs: np.ndarray  # (V, 3, E)
    expr_names: list[str]


def smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class TemplateRigBuilder:
    """Computes `RigData` for a `TemplateGeometry`."""

    def __init__(self, geometry: TemplateGeometry):
        self.g = geometry
        self.v = geometry.vertices
        self.lm = geometry.vertices[: mpt.NUM_MESH_LANDMARKS]  # face vertex i is landmark i
        self.mouth_y = 0.5 * (self.lm[13, 1] + self.lm[14, 1])
        self.corner_x = abs(self.lm[mpt.LEFT_MOUTH_CORNER, 0])

    # ------------------------------------------------------------------ regions and weights
    def regions(self, jaw_weight: np.ndarray) -> np.ndarray:
        g, v = self.g, self.v
        region = np.full(len(v), REGION_NAMES.index("scalp"))
        skin = g.part("face") | g.part("head")
        seed_names = list(REGION_SEEDS)
        mirror = self._mirror_index()
        seeds = {n: list(REGION_SEEDS[n]) if n.endswith("_eye") else sorted(set(REGION_SEEDS[n]) | {int(mirror[i]) for i in REGION_SEEDS[n]})
                 for n in seed_names}
        dist = np.stack([np.linalg.norm(v[:, None] - self.lm[seeds[n]][None], axis=-1).min(1) for n in seed_names], 1)
        nearest = dist.argmin(1)
        near_face = skin & (dist.min(1) < 0.016)
        region[near_face] = [REGION_NAMES.index(seed_names[i]) for i in nearest[near_face]]
        region[g.part("face") & ~near_face] = REGION_NAMES.index("forehead")
        ear = skin & (np.abs(v[:, 0]) > 0.070) & (np.abs(v[:, 1] - 0.005) < 0.040) & (v[:, 2] < 0.015) & (v[:, 2] > -0.040)
        region[ear & ~near_face] = REGION_NAMES.index("ears")
        neck = skin & ~near_face & (v[:, 1] < -0.06) & (jaw_weight == 0)
        region[neck] = REGION_NAMES.index("neck")
        # the jaw owns every skin vertex it moves, except the lips and the skin around them
        lower_lip = self._lower_lip_mask()
        perioral = region == REGION_NAMES.index("mouth")
        region[skin & (jaw_weight > 0) & ~lower_lip & ~perioral] = REGION_NAMES.index("jaw")
        region[lower_lip] = REGION_NAMES.index("mouth")
        for part in ("left_eyeball", "right_eyeball", "teeth_upper", "teeth_lower", "mouth_cavity"):
            region[g.part(part)] = REGION_NAMES.index(part)
        return region

    def _lower_lip_mask(self) -> np.ndarray:
        v = self.v
        lips = self.lm[list(mpt.OUTER_LIPS_LOWER + mpt.INNER_LIPS_LOWER)]
        d = np.linalg.norm(v[:, None] - lips[None], axis=-1).min(1)
        return (self.g.part("face") | self.g.part("head")) & (d < 0.004) & (v[:, 1] < self.mouth_y)

    def jaw_weight(self) -> np.ndarray:
        """Smooth jaw influence: the lower lip, chin and jaw line, fading toward cheeks, ears and neck."""
        v, g = self.v, self.g
        lateral = np.abs(v[:, 0])
        # below the mouth slit; the ramp widens away from the lips so cheeks bend smoothly
        ramp_height = 0.0025 + 0.030 * smoothstep(lateral, self.corner_x * 0.8, self.corner_x * 1.8)
        w = smoothstep(self.mouth_y - v[:, 1], -0.0005, ramp_height)
        w *= 1.0 - smoothstep(-v[:, 2], -0.005, 0.035)  # fade behind the jaw angle
        w *= smoothstep(v[:, 1], -0.125, -0.085)  # fade into the neck under the chin
        skin = g.part("face") | g.part("head") | g.part("mouth_cavity")
        w = np.where(skin, w, 0.0)
        w[g.part("teeth_lower")] = 1.0
        w[w < 1e-3] = 0.0
        return w

    def lbs_weights(self, jaw: np.ndarray) -> np.ndarray:
        v, g = self.v, self.g
        W = np.zeros((len(v), len(JOINT_NAMES)))
        neck_share = smoothstep(v[:, 1], -0.145, -0.065)  # head rotation fades down the neck
        rest = 1.0 - jaw
        W[:, JOINT_NAMES.index("jaw")] = jaw
        W[:, JOINT_NAMES.index("neck")] = rest * neck_share
        W[:, JOINT_NAMES.index("root")] = rest * (1 - neck_share)
        for part, joint in (("left_eyeball", "left_eye"), ("right_eyeball", "right_eye"), ("teeth_upper", "neck"), ("teeth_lower", "jaw")):
            sel = g.part(part)
            W[sel] = 0.0
            W[sel, JOINT_NAMES.index(joint)] = 1.0
        return W

    def joint_regressor(self) -> np.ndarray:
        """Minimum-norm vertex weights reproducing each joint's rest location (rows sum to 1)."""
        v, g = self.v, self.g
        J = np.zeros((len(JOINT_NAMES), len(v)))
        targets = {
            "root": (np.array([0.0, -0.125, -0.018]), (v[:, 1] < -0.10) & g.part("head")),
            "neck": (np.array([0.0, -0.040, -0.025]), (np.abs(v[:, 1] + 0.05) < 0.02) & g.part("head")),
            "jaw": (np.array([0.0, -0.012, 0.002]), (np.abs(v[:, 1] + 0.01) < 0.02) & (np.abs(v[:, 2]) < 0.03) & g.part("head")),
        }
        for name, (target, sel) in targets.items():
            idx = np.flatnonzero(sel)
            X = v[idx]
            A = np.vstack([X.T, np.ones(len(idx))])
            b = np.concatenate([target, [1.0]])
            J[JOINT_NAMES.index(name), idx] = A.T @ np.linalg.solve(A @ A.T, b)
        for part, joint in (("left_eyeball", "left_eye"), ("right_eyeball", "right_eye")):
            sel = g.part(part)
            J[JOINT_NAMES.index(joint), sel] = 1.0 / sel.sum()
        return J

    # ------------------------------------------------------------------ bases
    def _rigidify(self, d: np.ndarray) -> np.ndarray:
        """Eyeballs, teeth: move rigidly with the mean displacement of the skin that holds them."""
        g = self.g
        holders = {
            "left_eyeball": mpt.closed_loop(mpt.LEFT_EYE_UPPER, mpt.LEFT_EYE_LOWER),
            "right_eyeball": mpt.closed_loop(mpt.RIGHT_EYE_UPPER, mpt.RIGHT_EYE_LOWER),
            "teeth_upper": list(mpt.INNER_LIPS_UPPER),
            "teeth_lower": list(mpt.INNER_LIPS_LOWER),
        }
        d = d.copy()
        for part, lms in holders.items():
            d[g.part(part)] = d[list(lms)].mean(0)
        return d

    def shape_basis(self) -> tuple[np.ndarray, list[str]]:
        v, lm = self.v, self.lm
        x, y, z = v.T
        face = np.exp(-(((z - 0.10) / 0.06) ** 2).clip(0, None)) * (z > 0)
        lower_face = smoothstep(lm[mpt.NOSE_TIP, 1] - y, 0.0, 0.03) * smoothstep(z, -0.03, 0.02)
        def local(centre, radius):
            return np.exp(-(((v - centre) / radius) ** 2).sum(1))[:, None]
        mirror = np.array([-1.0, 1.0, 1.0])
        def sym(centre, radius, disp):
            c = np.asarray(centre, float)
            d = np.asarray(disp, float)
            return local(c, radius) * d + local(c * mirror, radius) * (d * mirror)
        fields: dict[str, np.ndarray] = {}
        s = 0.006  # about one standard deviation of adult variation per unit coefficient
        fields["head_width"] = np.stack([x * s / 0.08, 0 * x, 0 * x], 1) * smoothstep(y, -0.08, -0.02)[:, None]
        fields["head_length"] = np.stack([0 * x, 0 * x, np.minimum(z, 0) * s / 0.1], 1) * smoothstep(y, -0.09, -0.03)[:, None]
        fields["head_height"] = np.stack([0 * x, np.maximum(y - 0.03, 0) * s / 0.09, 0 * x], 1)
        fields["face_width"] = np.stack([x * s / 0.07, 0 * x, 0 * x], 1) * face[:, None]
        fields["face_length"] = np.stack([0 * x, -lower_face * s, 0 * x], 1)
        jaw_corner = np.array([0.060, -0.055, 0.010])
        fields["jaw_width"] = sym(jaw_corner, np.array([0.03, 0.035, 0.04]), [s, 0, 0])
        chin = lm[mpt.CHIN]
        fields["chin_length"] = local(chin, np.array([0.025, 0.02, 0.03])) * np.array([0, -s, 0])
        fields["chin_protrusion"] = local(chin + [0, 0.01, 0], np.array([0.025, 0.02, 0.03])) * np.array([0, 0, s])
        fields["cheek_fullness"] = sym(lm[425], np.array([0.02, 0.02, 0.02]), [0.7 * s, 0, 0.4 * s])
        fields["cheekbone_height"] = sym(lm[mpt.LEFT_CHEEKBONE], np.array([0.02, 0.015, 0.02]), [0.3 * s, 0.4 * s, 0.4 * s])
        nose_tip = lm[mpt.NOSE_TIP]
        fields["nose_length"] = local(nose_tip, np.array([0.012, 0.015, 0.02])) * np.array([0, -0.6 * s, 0.6 * s])
        fields["nose_width"] = sym(lm[mpt.LEFT_ALAR], np.array([0.008, 0.008, 0.01]), [0.5 * s, 0, 0])
        fields["nose_bridge"] = local(lm[6], np.array([0.008, 0.02, 0.012])) * np.array([0, 0, 0.5 * s])
        fields["brow_ridge"] = sym(lm[334], np.array([0.025, 0.01, 0.015]), [0, 0, 0.5 * s])
        forehead = lm[151]
        fields["forehead_slope"] = local(forehead + [0, 0.02, 0], np.array([0.05, 0.03, 0.03])) * np.array([0, 0, -0.8 * s])
        eye_c = 0.5 * (lm[mpt.LEFT_EYE_OUTER] + lm[mpt.LEFT_EYE_INNER])
        fields["eye_spacing"] = sym(eye_c, np.array([0.018, 0.014, 0.02]), [0.35 * s, 0, 0])
        lid_up = lm[386]
        lid_dn = lm[374]
        fields["eye_size"] = sym(lid_up, np.array([0.012, 0.004, 0.01]), [0, 0.25 * s, 0]) + sym(lid_dn, np.array([0.012, 0.003, 0.01]), [0, -0.15 * s, 0])
        fields["mouth_width"] = sym(lm[mpt.LEFT_MOUTH_CORNER], np.array([0.01, 0.01, 0.01]), [0.5 * s, 0, 0])
        fields["lip_fullness"] = (local(lm[0], np.array([0.02, 0.005, 0.01])) * np.array([0, 0.2 * s, 0.3 * s])
                                  + local(lm[17], np.array([0.02, 0.006, 0.01])) * np.array([0, -0.25 * s, 0.3 * s]))
        ear = np.array([0.079, 0.005, -0.012])
        fields["ear_size"] = self._ear_scale(ear, s)
        fields["ear_protrusion"] = sym(ear + [0.01, 0, -0.005], np.array([0.012, 0.03, 0.02]), [0.6 * s, 0, -0.3 * s])
        neck = smoothstep(-y, 0.07, 0.11)[:, None]
        fields["neck_thickness"] = neck * np.stack([x, 0 * x, z + 0.018], 1) * (s / 0.055)
        fields["neck_length"] = np.stack([0 * x, -smoothstep(-y, 0.09, 0.15) * s, 0 * x], 1)
        fields["occiput"] = local(np.array([0, 0.0, -0.11]), np.array([0.05, 0.04, 0.03])) * np.array([0, 0, -0.8 * s])
        fields["face_depth"] = local(np.array([0, -0.01, 0.11]), np.array([0.04, 0.06, 0.04])) * np.array([0, 0, 0.6 * s])
        fields["cranium_roundness"] = local(np.array([0, 0.10, -0.02]), np.array([0.06, 0.03, 0.06])) * np.array([0, 0.6 * s, 0])
        names = list(fields)
        dirs = np.stack([self._rigidify(fields[n]) for n in names], axis=2)
        return dirs, names

    def _ear_scale(self, ear_centre: np.ndarray, s: float) -> np.ndarray:
        """Scale each ear about its centre (mirrored for the right ear)."""
        v = self.v
        out = np.zeros_like(v)
        for sign in (1.0, -1.0):
            c = ear_centre * np.array([sign, 1.0, 1.0])
            w = np.exp(-(((v - c) / np.array([0.02, 0.04, 0.025])) ** 2).sum(1))
            out += w[:, None] * (v - c) * (s / 0.03)
        return out

    def expression_basis(self, jaw: np.ndarray) -> tuple[np.ndarray, list[str]]:
        lm, v = self.lm, self.v
        fields: dict[str, np.ndarray] = {}
        skin = (self.g.part("face") | self.g.part("head") | self.g.part("mouth_cavity"))[:, None]

        def shape(moving: dict[int, tuple[float, float, float]] | list, pinned: tuple[int, ...] = (), sigma=0.004, reach=0.010):
            idx = [k for k, _ in moving]
            disp = np.array([d for _, d in moving], dtype=float)
            pins = lm[list(pinned)] if pinned else None
            return anchor_field(v, lm[idx], disp, pins, sigma, reach) * skin

        def mirrored(moving, pinned=(), **kw):
            """Build Left (subject's left, +X) and Right versions from the left-side recipe."""
            left = shape(moving, pinned, **kw)
            partner = self._mirror_index()
            mov_r = [(partner[k], (-d[0], d[1], d[2])) for k, d in moving]
            right = shape(mov_r, tuple(partner[p] for p in pinned), **kw)
            return left, right

        def lr(name, moving, pinned=(), **kw):
            left, right = mirrored(moving, pinned, **kw)
            fields[name + "Left"] = left
            fields[name + "Right"] = right

        up_l = mpt.LEFT_EYE_UPPER[1:-1]
        lo_l = mpt.LEFT_EYE_LOWER[1:-1]
        brow_pins = mpt.LEFT_BROW
        blink = [(u, tuple((lm[d] - lm[u]) * 0.97 + np.array([0, 0, 0.0012]))) for u, d in zip(up_l, lo_l)]
        lr("eyeBlink", blink, pinned=lo_l + brow_pins + (mpt.LEFT_EYE_OUTER, mpt.LEFT_EYE_INNER), sigma=0.003, reach=0.007)
        lr("eyeWide", [(u, (0, 0.0035, 0.0005)) for u in up_l] + [(d, (0, -0.001, 0)) for d in lo_l], pinned=brow_pins, sigma=0.003, reach=0.006)
        lr("eyeSquint", [(d, (0, 0.0025, 0.0005)) for d in lo_l] + [(u, (0, -0.001, 0)) for u in up_l], pinned=brow_pins, sigma=0.0025, reach=0.0045)
        inner_l, outer_l = (285, 295, 282, 336, 296), (276, 283, 300, 293, 334)
        crease_l = (467, 260, 259, 257, 258, 286, 414)
        lr("browDown", [(b, (-0.0015, -0.0045, 0.001)) for b in inner_l] + [(b, (-0.0005, -0.003, 0)) for b in outer_l], pinned=up_l + crease_l, sigma=0.0045, reach=0.0055)
        lr("browOuterUp", [(b, (0, 0.0065, 0)) for b in outer_l], pinned=up_l + crease_l + inner_l, sigma=0.0045, reach=0.0055)
        inner_r = tuple(self._mirror_index()[b] for b in inner_l)
        crease_r = tuple(self._mirror_index()[b] for b in crease_l + up_l)
        fields["browInnerUp"] = shape([(b, (0, 0.0065, 0)) for b in inner_l + inner_r], pinned=up_l + crease_l + crease_r, sigma=0.0045, reach=0.0055)
        cheek_l = (425, 411, 280, 427, 416, 352)
        cheek_r = tuple(self._mirror_index()[b] for b in cheek_l)
        normals = self._normals()
        fields["cheekPuff"] = shape([(c, tuple(normals[c] * 0.008)) for c in cheek_l + cheek_r], pinned=mpt.OUTER_LIPS_UPPER + mpt.OUTER_LIPS_LOWER + lo_l, sigma=0.007, reach=0.0085)
        lr("cheekSquint", [(c, (0, 0.004, 0.001)) for c in (347, 348, 330, 266, 280)], pinned=lo_l + (253, 254, 339, 255), sigma=0.005, reach=0.0065)
        lr("noseSneer", [(n, (0.0005, 0.0035, 0.0)) for n in (327, 326, 294, 278, 344, 440, 279, 360)], pinned=(1, 4, 5), sigma=0.004, reach=0.006)
        corner = mpt.LEFT_MOUTH_CORNER
        near_corner = (409, 375, 308, 415, 324, 270, 321)
        mid_lips = (0, 17, 13, 14)
        lr("mouthSmile", [(corner, (0.005, 0.007, -0.004))] + [(k, (0.003, 0.004, -0.002)) for k in near_corner], pinned=mid_lips, sigma=0.0055, reach=0.0095)
        lr("mouthFrown", [(corner, (0.002, -0.006, 0.0))] + [(k, (0.001, -0.003, 0)) for k in near_corner], pinned=mid_lips, sigma=0.006, reach=0.010)
        lr("mouthUpperUp", [(k, (0, 0.004, 0.0005)) for k in (267, 269, 270, 312, 311, 310)], pinned=(corner, 0, 13), sigma=0.004, reach=0.008)
        lr("mouthLowerDown", [(k, (0, -0.0045, 0.0005)) for k in (314, 405, 321, 317, 402, 318)], pinned=(corner, 17, 14), sigma=0.004, reach=0.008)
        lr("mouthDimple", [(corner, (0.002, 0.0, -0.004))], pinned=mid_lips, sigma=0.005, reach=0.010)
        lr("mouthStretch", [(corner, (0.005, -0.003, -0.001))] + [(k, (0.002, -0.002, 0)) for k in near_corner], pinned=mid_lips, sigma=0.006, reach=0.010)
        lr("mouthPress", [(k, (0.0005, -0.0008, -0.0018)) for k in (312, 311, 310, 267, 269, 270)] + [(k, (0.0005, 0.0008, -0.0018)) for k in (317, 402, 318, 314, 405, 321)], pinned=(corner,), sigma=0.004, reach=0.007)
        all_lips = mpt.OUTER_LIPS_UPPER + mpt.OUTER_LIPS_LOWER + mpt.INNER_LIPS_UPPER + mpt.INNER_LIPS_LOWER
        mc = self.g.anchors["mouth_centre"]
        pucker = [(k, tuple((mc - lm[k]) * np.array([0.45, 0.25, 0]) + np.array([0, 0, 0.007]))) for k in set(all_lips)]
        fields["mouthPucker"] = shape(pucker, sigma=0.005, reach=0.008)
        funnel = [(k, tuple((lm[k] - mc) * np.array([-0.25, 0.6, 0]) + np.array([0, 0, 0.006]))) for k in set(all_lips)]
        fields["mouthFunnel"] = shape(funnel, sigma=0.005, reach=0.008)
        fields["mouthClose"] = shape([(k, (0, -0.003, 0)) for k in mpt.INNER_LIPS_UPPER[1:-1]] + [(k, (0, 0.003, 0)) for k in mpt.INNER_LIPS_LOWER[1:-1]], sigma=0.003, reach=0.006)
        fields["mouthLeft"] = shape([(k, (0.007, 0, 0)) for k in set(all_lips)], sigma=0.005, reach=0.008)
        fields["mouthRight"] = shape([(k, (-0.007, 0, 0)) for k in set(all_lips)], sigma=0.005, reach=0.008)
        fields["mouthRollLower"] = shape([(k, (0, 0.002, -0.004)) for k in mpt.OUTER_LIPS_LOWER[1:-1]], pinned=(corner, 61), sigma=0.004, reach=0.008)
        fields["mouthRollUpper"] = shape([(k, (0, -0.002, -0.004)) for k in mpt.OUTER_LIPS_UPPER[1:-1]], pinned=(corner, 61), sigma=0.004, reach=0.008)
        fields["mouthShrugLower"] = shape([(k, (0, 0.004, 0.002)) for k in mpt.OUTER_LIPS_LOWER[1:-1]], pinned=(corner, 61), sigma=0.0045, reach=0.008)
        fields["mouthShrugUpper"] = shape([(k, (0, 0.003, 0.001)) for k in mpt.OUTER_LIPS_UPPER[1:-1]], pinned=(corner, 61), sigma=0.0045, reach=0.008)
        jw = jaw[:, None]
        fields["jawForward"] = jw * np.array([0, 0, 0.006])
        fields["jawLeft"] = jw * np.array([0.006, 0, 0])
        fields["jawRight"] = jw * np.array([-0.006, 0, 0])
        names = list(fields)
        dirs = np.stack([self._rigidify_expression(fields[n]) for n in names], axis=2)
        return dirs, names

    def _rigidify_expression(self, d: np.ndarray) -> np.ndarray:
        """Expressions never move eyeballs or upper teeth; lower teeth follow jaw shapes only."""
        g = self.g
        d = d.copy()
        for part in ("left_eyeball", "right_eyeball", "teeth_upper"):
            d[g.part(part)] = 0.0
        sel = g.part("teeth_lower")
        d[sel] = d[sel].mean(0) if np.abs(d[sel]).max() > 0 else 0.0
        return d

    def _normals(self) -> np.ndarray:
        from .mesh_ops import vertex_normals

        return vertex_normals(self.v, self.g.faces)

    def _mirror_index(self) -> np.ndarray:
        if not hasattr(self, "_mirror"):
            mirrored = self.lm * np.array([-1.0, 1.0, 1.0])
            d = np.linalg.norm(self.lm[:, None] - mirrored[None], axis=-1)
            self._mirror = d.argmin(1)
        return self._mirror

    def build(self) -> RigData:
        jaw = self.jaw_weight()
        lbs = self.lbs_weights(jaw)
        shape_dirs, shape_names = self.shape_basis()
        expr_dirs, expr_names = self.expression_basis(jaw)
        return RigData(
            vertex_regions=self.regions(jaw), lbs_weights=lbs, joint_regressor=self.joint_regressor(),
            shape_dirs=shape_dirs, shape_names=shape_names, expr_dirs=expr_dirs, expr_names=expr_names,
        )
