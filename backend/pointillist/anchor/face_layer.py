"""The face layer: flat Gaussians laid on the fitted head's face, eyes, ears and mouth, bound to its triangles.

The generator was trained on procedural heads and places face points only roughly; the fitted head model
agrees with 478 landmarks of this photo. Where that fit is reliable (the face surface, eyelids, eyeballs,
ears, teeth and mouth cavity) the avatar's surface is taken from it: a disc-shaped Gaussian per small cell
of each triangle, bound to that triangle with the cell's barycentrics, so eyes turn with the eye joints,
lids blink and the jaw opens onto a mouth interior exactly as the head model moves. Hair volume, the
scalp, neck and everything the head model does not know stay the generator's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..avatar.gaussians import SH_C0, Binding, Gaussians
from ..head.model import HeadModel

#: vertex regions whose triangles carry the layer (a triangle belongs when all three corners do)
LAYER_REGIONS: tuple[str, ...] = ("left_eye", "right_eye", "brows", "nose", "mouth", "cheeks", "jaw", "forehead",
                                  "ears", "left_eyeball", "right_eyeball", "teeth_upper", "teeth_lower", "mouth_cavity")
#: regions the portrait cannot show with the mouth closed: coloured by `INTERIOR_COLOURS` where unseen
INTERIOR_COLOURS: dict[str, tuple[float, float, float]] = {
    "teeth_upper": (0.86, 0.83, 0.76), "teeth_lower": (0.82, 0.79, 0.72), "mouth_cavity": (0.30, 0.09, 0.09)}
#: the layer's cell size (metres) per region: finest where a face's identity is (eyes, brows, nose, mouth)
FINE_M, SKIN_M, COARSE_M = 0.002, 0.003, 0.004
SPACING_M: dict[str, float] = {**dict.fromkeys(("left_eye", "right_eye", "brows", "nose", "mouth", "left_eyeball",
                                                "right_eyeball"), FINE_M),
                               **dict.fromkeys(("cheeks", "jaw", "forehead"), SKIN_M),
                               **dict.fromkeys(("ears", "teeth_upper", "teeth_lower", "mouth_cavity"), COARSE_M)}
#: disc thickness as a share of its width (the decoder's needles are what the layer replaces)
FLATNESS = 0.15
MIN_THICKNESS_M = 1e-4
OPACITY = 0.97


@dataclass
class FaceLayer:
    """The layer's Gaussians (canonical, identity-shaped), their binding and what each one is."""

    gaussians: Gaussians
    binding: Binding
    normals: np.ndarray  # (N, 3) unit outward normals, canonical
    regions: np.ndarray  # (N,) int: index into `region_names`
    region_names: list[str]
    template_means: np.ndarray  # (N, 3) the same cells on the template head (bilaterally symmetric)

    def region(self, name: str) -> np.ndarray:
        return self.regions == self.region_names.index(name)

    def subset(self, keep: np.ndarray) -> "FaceLayer":
        return FaceLayer(gaussians=self.gaussians.subset(keep),
                         binding=Binding(self.binding.triangles[keep], self.binding.barycentrics[keep]),
                         normals=self.normals[keep], regions=self.regions[keep], region_names=self.region_names,
                         template_means=self.template_means[keep])


def layer_triangles(head: HeadModel) -> tuple[np.ndarray, np.ndarray]:
    """(triangle indices, region index into LAYER_REGIONS) of the triangles the layer covers: those with at
    least two corners in layer regions (so the junctions where three regions meet are covered too), each
    labelled with the region most of its corners share (else its first corner's in the layer)."""
    data = head.data
    if data.vertex_regions is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    to_layer = np.full(len(data.region_names), -1)
    for i, name in enumerate(LAYER_REGIONS):
        if name in data.region_names:
            to_layer[data.region_names.index(name)] = i
    r = to_layer[data.vertex_regions[data.faces]]  # (F, 3) layer region per corner, -1 outside the layer
    inside = r >= 0
    tri = np.nonzero(inside.sum(1) >= 2)[0]
    a, b, c = r[tri].T
    first = np.where(a >= 0, a, np.where(b >= 0, b, c))
    label = np.where((a == b) | (a == c), a, np.where(b == c, b, first))
    label = np.where(label >= 0, label, first)
    return tri, label


def cell_barycentrics(n: int) -> np.ndarray:
    """Barycentrics (n², 3) of the centroids of a triangle's n×n subdivision: equal-area cells that tile it."""
    up = [((i + 1 / 3) / n, (j + 1 / 3) / n) for i in range(n) for j in range(n - i)]
    down = [((i + 2 / 3) / n, (j + 2 / 3) / n) for i in range(n) for j in range(n - 1 - i)]
    uv = np.array(up + down, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([1 - uv.sum(1), uv[:, 0], uv[:, 1]])


def face_layer(head: HeadModel, identity_vertices: np.ndarray, scale: float = 1.0) -> FaceLayer:
    """Disc Gaussians tiling the layer triangles of the head with identity vertices `identity_vertices`, one
    per cell of about `SPACING_M` of its region (times `scale`)."""
    data = head.data
    tri, lab = layer_triangles(head)
    verts = np.asarray(identity_vertices, dtype=np.float64)
    corners = verts[data.faces[tri]]  # (T, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    spacing = np.array([SPACING_M[LAYER_REGIONS[i]] for i in lab]) * scale
    subdiv = np.clip(np.ceil(np.sqrt(areas / (np.sqrt(3) / 4 * spacing ** 2))), 1, 16).astype(np.int64)
    normals = _outward_normals(head, verts, tri)
    tri_out, bary_out, lab_out, normal_out, area_out = [], [], [], [], []
    for n in np.unique(subdiv):
        pick = np.nonzero(subdiv == n)[0]
        bary = cell_barycentrics(int(n))
        tri_out.append(np.repeat(tri[pick], len(bary)))
        bary_out.append(np.tile(bary, (len(pick), 1)))
        lab_out.append(np.repeat(lab[pick], len(bary)))
        normal_out.append(np.repeat(normals[pick], len(bary), axis=0))
        area_out.append(np.repeat(areas[pick] / n ** 2, len(bary)))
    triangles = np.concatenate(tri_out)
    bary = np.concatenate(bary_out)
    normal = np.concatenate(normal_out)
    cell_area = np.concatenate(area_out)
    means = np.einsum("nk,nkc->nc", bary, verts[data.faces[triangles]])
    template = np.einsum("nk,nkc->nc", bary, data.vertices.astype(np.float64)[data.faces[triangles]])
    width = np.sqrt(np.maximum(cell_area, 1e-10) * 2 / np.sqrt(3))  # the side an equilateral cell would have, / √2
    sigma = np.maximum(0.55 * width, 2e-4)
    log_scales = np.log(np.column_stack([sigma, sigma, np.maximum(FLATNESS * sigma, MIN_THICKNESS_M)]))
    labels = np.concatenate(lab_out)
    colours = np.full((len(means), 3), 0.5)
    for name, rgb in INTERIOR_COLOURS.items():
        colours[labels == LAYER_REGIONS.index(name)] = rgb
    g = Gaussians(means=means.astype(np.float32), log_scales=log_scales.astype(np.float32),
                  quats=quats_from_normals(normal).astype(np.float32),
                  opacity_logits=np.full(len(means), np.log(OPACITY / (1 - OPACITY)), np.float32),
                  sh_dc=((colours - 0.5) / SH_C0).astype(np.float32), sh_rest=np.zeros((len(means), 0, 3), np.float32))
    return FaceLayer(gaussians=g, binding=Binding(triangles.astype(np.int64), bary.astype(np.float32)),
                     normals=normal.astype(np.float32), regions=labels, region_names=list(LAYER_REGIONS),
                     template_means=template.astype(np.float32))


def quats_from_normals(normals: np.ndarray) -> np.ndarray:
    """w-first unit quaternions (N, 4) of the shortest rotations taking +Z to each unit normal."""
    n = np.asarray(normals, dtype=np.float64)
    q = np.column_stack([1.0 + n[:, 2], -n[:, 1], n[:, 0], np.zeros(len(n))])
    flipped = q[:, 0] < 1e-6  # normal = -Z: any half-turn about an axis in the XY plane
    q[flipped] = (0.0, 1.0, 0.0, 0.0)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _outward_normals(head: HeadModel, verts: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Unit normals of triangles `tri`, flipped where needed to point away from their part's centre (the
    head's for skin, each eyeball's own for the eyes), so the discs face out whatever the mesh's winding."""
    data = head.data
    c = verts[data.faces[tri]]
    n = np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    centroid = c.mean(1)
    centre = np.broadcast_to(verts.mean(0), centroid.shape).copy()
    for name in ("left_eyeball", "right_eyeball"):
        if name in data.region_names:
            mask = data.region_mask(name)
            inside = mask[data.faces[tri]].all(1)
            centre[inside] = verts[mask].mean(0)
    inward = np.einsum("nc,nc->n", n, centroid - centre) < 0
    n[inward] *= -1
    return n
