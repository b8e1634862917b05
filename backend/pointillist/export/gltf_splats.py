"""Gaussians as a glTF point primitive with the `KHR_gaussian_splatting` extension.

Followed: the extension as ratified by Khronos (KhronosGroup/glTF `extensions/2.0/Khronos/
KHR_gaussian_splatting/README.md`, status "Complete, Ratified"; same semantics as its Release Candidate):

- `mode` POINTS; extension object `{"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}` (projection and
  sorting method left at their defaults, "perspective" and "cameraDistance");
- `POSITION` (float VEC3, with min/max), `KHR_gaussian_splatting:ROTATION` (float VEC4 unit quaternion in
  glTF's x, y, z, w order; ours are w-first), `KHR_gaussian_splatting:SCALE` (float VEC3, linear: exp of our
  log scales), `KHR_gaussian_splatting:OPACITY` (float SCALAR in [0, 1]: sigmoid of our logits);
- `KHR_gaussian_splatting:SH_DEGREE_0_COEF_0` = f_dc, and `SH_DEGREE_l_COEF_n` for every coefficient of
  bands 1..degree, n from the lowest order m upward, which is exactly the Inria/gsplat coefficient order
  (`render.sh.sh_bases`: band 1 is m = -1, 0, 1 as -y, z, -x), so `sh_rest[:, k]` maps one-to-one;
- `COLOR_0` for viewers without the extension: the diffuse colour clamp(0.5 + C0 * f_dc) decoded from sRGB
  to linear (glTF vertex colours are linear), alpha = opacity, as the spec's fallback section says.

Colour space: our splat colours are display sRGB (the portrait's), hence `srgb_rec709_display`.
"""

from __future__ import annotations

import numpy as np

from ..avatar.gaussians import SH_C0, Gaussians
from ..render.colour import srgb_to_linear
from .gltf_document import ARRAY_BUFFER, FLOAT, POINTS, GltfDocument

EXTENSION = "KHR_gaussian_splatting"
COLOR_SPACE = "srgb_rec709_display"
#: Coefficients per SH band beyond DC: band l has 2l + 1.
_BAND_SIZES = (3, 5, 7)


def sh_attribute_names(num_rest: int) -> list[str]:
    """Attribute semantics for the f_dc band and `num_rest` (0, 3, 8 or 15) higher coefficients, in order."""
    names = [f"{EXTENSION}:SH_DEGREE_0_COEF_0"]
    remaining = num_rest
    for degree, size in enumerate(_BAND_SIZES, start=1):
        if remaining <= 0:
            break
        if remaining < size:
            raise ValueError(f"{num_rest} higher SH coefficients do not fill whole bands (3, 8 or 15 expected)")
        names += [f"{EXTENSION}:SH_DEGREE_{degree}_COEF_{n}" for n in range(size)]
        remaining -= size
    return names


def glb_quaternions(quats_wxyz: np.ndarray) -> np.ndarray:
    """Unit x, y, z, w quaternions; a zero quaternion (no rotation defined) becomes the identity."""
    q = np.asarray(quats_wxyz, dtype=np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 1e-12, q / np.maximum(norm, 1e-12), np.array([1.0, 0.0, 0.0, 0.0]))
    return q[:, [1, 2, 3, 0]].astype(np.float32)


def add_splat_mesh(doc: GltfDocument, gaussians: Gaussians, name: str = "splats") -> int:
    """Add one mesh holding the Gaussians as a KHR_gaussian_splatting point primitive; return the mesh index."""
    g = gaussians
    diffuse = np.clip(0.5 + SH_C0 * g.sh_dc.astype(np.float64), 0.0, 1.0)
    color = np.concatenate([srgb_to_linear(diffuse), g.opacities().astype(np.float64)[:, None]], axis=1)
    attributes = {
        "POSITION": doc.add_accessor(g.means, FLOAT, target=ARRAY_BUFFER, min_max=True),
        "COLOR_0": doc.add_accessor(color, FLOAT, target=ARRAY_BUFFER),
        f"{EXTENSION}:SCALE": doc.add_accessor(g.scales(), FLOAT, target=ARRAY_BUFFER),
        f"{EXTENSION}:ROTATION": doc.add_accessor(glb_quaternions(g.quats), FLOAT, target=ARRAY_BUFFER),
        f"{EXTENSION}:OPACITY": doc.add_accessor(g.opacities(), FLOAT, target=ARRAY_BUFFER),
    }
    coefficients = [g.sh_dc] + [g.sh_rest[:, k] for k in range(g.sh_rest.shape[1])]
    for semantic, values in zip(sh_attribute_names(g.sh_rest.shape[1]), coefficients, strict=True):
        attributes[semantic] = doc.add_accessor(values, FLOAT, target=ARRAY_BUFFER)
    primitive = {"attributes": attributes, "mode": POINTS,
                 "extensions": {EXTENSION: {"kernel": "ellipse", "colorSpace": COLOR_SPACE}}}
    doc.use_extension(EXTENSION)
    return doc.add("meshes", {"name": name, "primitives": [primitive]})
