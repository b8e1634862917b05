"""Anchor a decoded avatar to its portrait: the fitted face's surface, the photo's colours, their mirror.

Cheap, deterministic steps between the Gaussian decoder and the (optional) photometric refinement:

1. **Geometry from the fit** (`face_layer.py`): the face, eyelids, eyeballs, ears, teeth and mouth cavity
   become a layer of flat Gaussians on the fitted head; the decoder's Gaussians that sat on that surface
   (within `DROP_FRONT_M` in front of it, `DROP_BEHIND_M` behind it) are dropped, those standing further out
   (hair over the forehead, a fringe, glasses) stay. Border cells (forehead, jaw, ears) that neither the
   photo nor their mirror colours give their place back to the decoder's Gaussians.
2. **Colours from the photo** (`projection.py`): every Gaussian the portrait camera sees, at its own depth
   and through whatever covers it, takes the photo's colour under it, weighted by how much of it is seen
   and, for the layer, how squarely its disc faces the camera (grazing cells smear the photo).
3. **The hidden side from the seen side** (`mirror.py`): what the photo does not see takes its mirror
   partner's photo colour; what neither sees takes the colour of its nearest Gaussians that the photo does
   colour (the back of the head, hair the photo hides), or, on the layer, the median colour the photo gives
   that region (the mouth's interior has its own); the decoder's colour is the last resort.
4. **A shape prior** (`priors.py`): the decoder's needles are pulled toward their mean scale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..avatar.animate import AvatarAnimator
from ..avatar.gaussians import SH_C0, Avatar, Binding
from ..completeness import photo_pixels
from ..head.model import HeadModel
from ..render.camera import camera_center
from .face_layer import COARSE_M, INTERIOR_COLOURS, FaceLayer, face_layer
from .mirror import mirror_partners, mirrored_colours, photo_share
from .priors import bounded_log_scales
from .projection import photo_colours

#: a decoder Gaussian up to this far in front of the layer's surface, or this far behind it, duplicates it
DROP_FRONT_M = 0.006
DROP_BEHIND_M = 0.04
#: regions whose unseen cells take the skin's colour rather than their own seen cells' (hair covers ears)
SKIN_FALLBACK_REGIONS = ("ears",)
#: layer regions that border the hair: their cells the photo shows neither directly nor mirrored are dropped
BORDER_REGIONS = ("forehead", "jaw", "ears")
KNOWN_MIN = 0.5
#: `spread_colours`: neighbours, their search radius, and how much of a source's colour must be the photo's
SPREAD_K, SPREAD_RADIUS_M, SPREAD_SOURCE = 8, 0.05, 0.8
#: a disc seen at less than this cosine to the camera takes (part of) its colour from its mirror partner
GRAZING_COS = (0.08, 0.35)


@dataclass(frozen=True)
class AnchorOptions:
    """What `anchor_to_photo` does; each switch is one row of the benchmark's ablation."""

    face_layer: bool = True
    photo_colours: bool = True
    mirror: bool = True
    spread: bool = True  # what neither the photo nor its mirror shows takes its seen neighbours' colour
    shape_prior: bool = True  # bound the decoder's Gaussians' anisotropy and size (`priors.py`)


def anchor_to_photo(avatar: Avatar, head: HeadModel, *, photo: np.ndarray | None = None,
                    hands: np.ndarray | None = None, options: AnchorOptions = AnchorOptions()) -> Avatar:
    """The avatar with its face surface from the fit and its colours from its source portrait. `photo` and
    `hands` ((S, S) bool, the crop's pixels that come from the photo and its hands) keep fill and hands
    from colouring the head.

    Layer cells on the face's border with the hair (forehead, jaw, ears) that neither the photo nor their
    mirror shows give their place back to the decoder's Gaussians: under long hair the fitted ears and the
    back of the jaw are guesses, and a skin-coloured guess reads as a flap on the side of the head."""
    src = avatar.source
    if src is None or src.image is None or src.camera is None:
        raise ValueError("anchoring needs the avatar's source portrait and fitted camera")
    g = avatar.gaussians
    if options.shape_prior:
        g = replace(g, log_scales=bounded_log_scales(g.log_scales))
    decoder = replace(avatar, gaussians=g)
    if not options.face_layer:
        return _anchored(decoder, None, head, photo, hands, options)[0]
    verts = head.identity_vertices(torch.as_tensor(avatar.identity.shape)[None])[0].numpy().astype(np.float64)
    layer = face_layer(head, verts)
    anchored, known = _anchored(decoder, layer, head, photo, hands, options)
    if options.photo_colours:
        border = np.isin(layer.regions, [layer.region_names.index(n) for n in BORDER_REGIONS])
        unknown = border & (known < KNOWN_MIN)
        if unknown.any():
            anchored, _ = _anchored(decoder, layer.subset(~unknown), head, photo, hands, options)
            anchored.meta["anchor"]["unknown_border_cells"] = int(unknown.sum())
    return anchored


def _anchored(avatar: Avatar, layer: FaceLayer | None, head: HeadModel, photo: np.ndarray | None,
              hands: np.ndarray | None, options: AnchorOptions) -> tuple[Avatar, np.ndarray]:
    """(the avatar with `layer` in place of the decoder's Gaussians on it and the colours anchored,
    per layer cell how much of its colour comes from the photo, itself or its mirror)."""
    src = avatar.source
    g, binding = avatar.gaussians, avatar.binding
    is_layer = np.zeros(g.num, dtype=bool)
    normals = np.zeros((g.num, 3), np.float32)
    if layer is not None:
        keep = ~duplicates_layer(g.means, layer.gaussians.means, layer.normals)
        g = g.subset(keep).concatenate(layer.gaussians)
        binding = Binding(np.concatenate([binding.triangles[keep], layer.binding.triangles]),
                          np.concatenate([binding.barycentrics[keep], layer.binding.barycentrics]))
        is_layer = np.r_[np.zeros(int(keep.sum()), bool), np.ones(layer.gaussians.num, bool)]
        normals = np.concatenate([np.zeros((int(keep.sum()), 3), np.float32), layer.normals])
    anchored = replace(avatar, gaussians=g, binding=binding,
                       meta={**avatar.meta, "anchor": {"face_layer": int(is_layer.sum()), "photo_colours": options.photo_colours,
                                                       "mirror": options.mirror, "spread": options.spread,
                                                       "shape_prior": options.shape_prior,
                                                       "dropped_decoder_gaussians": int(avatar.gaussians.num - (~is_layer).sum())}})
    known = np.zeros(int(is_layer.sum()))
    if not options.photo_colours:
        if layer is not None:  # the layer's cells still need colours: the decoder's nearest Gaussian's
            _, near = cKDTree(avatar.gaussians.means).query(layer.gaussians.means)
            sh_dc = g.sh_dc.copy()
            sh_dc[is_layer] = np.where(_interior_cells(layer)[:, None], layer.gaussians.sh_dc, avatar.gaussians.sh_dc[near])
            anchored = replace(anchored, gaussians=replace(g, sh_dc=sh_dc))
        return anchored, known

    animator = AvatarAnimator(anchored, head)
    with torch.no_grad():
        posed = animator(torch.as_tensor(src.expression) if src.expression is not None else None,
                         torch.as_tensor(src.pose) if src.pose is not None else None)
    K = torch.as_tensor(src.camera["K"], dtype=torch.float32)
    viewmat = torch.as_tensor(src.camera["viewmat"], dtype=torch.float32)
    read = photo_colours(posed.means[0], posed.quats[0], posed.log_scales[0].exp(),
                         torch.sigmoid(torch.as_tensor(g.opacity_logits)), viewmat=viewmat, K=K,
                         image=np.asarray(src.image), valid=_valid_pixels(src, photo, hands))
    seen = read.seen.astype(np.float64)
    if layer is not None:  # grazing discs smear the photo: trust them less, their partner more
        posed_normals = torch.einsum("nij,nj->ni", posed.rotations[0], torch.as_tensor(normals)).numpy()
        centre = camera_center(viewmat.numpy())
        to_camera = centre - posed.means[0].numpy()
        cos = np.einsum("nc,nc->n", posed_normals, to_camera) / np.maximum(np.linalg.norm(to_camera, axis=1), 1e-9)
        lo, hi = GRAZING_COS
        seen = np.where(is_layer, seen * np.clip((cos - lo) / (hi - lo), 0, 1), seen)
    decoder_colours = g.colors().astype(np.float64)
    colours = decoder_colours.copy()
    for part in (~is_layer, is_layer):
        if not part.any():
            continue
        on_layer = part is is_layer
        partners = (mirror_partners(layer.template_means if on_layer else g.means[part],
                                    max_distance=COARSE_M if on_layer else 0.01)
                    if options.mirror else np.full(int(part.sum()), -1))
        photo_part = read.colours[part].astype(np.float64)
        share = photo_share(seen[part], partners)
        if on_layer:
            fallback = _layer_fallback(layer, photo_part, seen[part])
            known = share
        elif options.spread:
            own = mirrored_colours(photo_part, seen[part], partners, np.zeros(3)) / np.maximum(share, 1e-6)[:, None]
            fallback = spread_colours(g.means[part], own, share, decoder_colours[part])
        else:
            fallback = decoder_colours[part]
        colours[part] = mirrored_colours(photo_part, seen[part], partners, fallback)
    anchored = replace(anchored, gaussians=replace(g, sh_dc=((colours - 0.5) / SH_C0).astype(np.float32)))
    anchored.meta["anchor"]["seen_share"] = round(float((seen > 0.5).mean()), 4)
    return anchored, known


def spread_colours(means: np.ndarray, colours: np.ndarray, share: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Per point, the mean colour of the `SPREAD_K` nearest points whose colour is at least `SPREAD_SOURCE`
    the photo's (within `SPREAD_RADIUS_M`), else `default`: the back of the head and the hair the photo
    hides take the colour of the hair and skin it shows, not the decoder's blotches."""
    source = share >= SPREAD_SOURCE
    if source.sum() < SPREAD_K:
        return default
    dist, idx = cKDTree(means[source]).query(means, k=SPREAD_K, distance_upper_bound=SPREAD_RADIUS_M)
    found = np.isfinite(dist)
    picked = colours[source][np.where(found, idx, 0)] * found[..., None]
    count = found.sum(1)
    return np.where(count[:, None] > 0, picked.sum(1) / np.maximum(count, 1)[:, None], default)


def duplicates_layer(means: np.ndarray, layer_means: np.ndarray, layer_normals: np.ndarray) -> np.ndarray:
    """(N,) bool: the points that lie on the layer's surface (over it, within `DROP_FRONT_M` in front, or up
    to `DROP_BEHIND_M` behind), not past its edge."""
    if not len(layer_means) or not len(means):
        return np.zeros(len(means), dtype=bool)
    dist, idx = cKDTree(layer_means).query(means)
    offset = means - layer_means[idx]
    along = np.einsum("nc,nc->n", offset, layer_normals[idx])
    across = np.linalg.norm(offset - along[:, None] * layer_normals[idx], axis=1)
    return (across < COARSE_M) & (along < DROP_FRONT_M) & (along > -DROP_BEHIND_M)


def _layer_fallback(layer: FaceLayer, colours: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Per layer cell, what it is when neither it nor its partner is seen: its region's well-seen median,
    the mouth interior's own colour, else (and always for ears, whose seen cells are mostly the hair over
    them) the well-seen skin's median."""
    well = seen > 0.7
    skin = np.median(colours[well], axis=0) if well.sum() >= 8 else np.array([0.72, 0.56, 0.47])
    out = np.broadcast_to(skin, colours.shape).copy()
    for i, name in enumerate(layer.region_names):
        mask = layer.regions == i
        if name in INTERIOR_COLOURS:
            out[mask] = INTERIOR_COLOURS[name]
        elif name in SKIN_FALLBACK_REGIONS:
            continue
        elif (mask & well).sum() >= 8:
            out[mask] = np.median(colours[mask & well], axis=0)
    return out


def _interior_cells(layer: FaceLayer) -> np.ndarray:
    return np.isin(layer.regions, [layer.region_names.index(n) for n in INTERIOR_COLOURS])


def _valid_pixels(src, photo: np.ndarray | None, hands: np.ndarray | None) -> np.ndarray:
    """(S, S) float weights: the person's matte, on photo pixels, off the hands."""
    shape = src.image.shape[:2]
    matte = np.ones(shape, np.float32) if src.matte is None else np.asarray(src.matte, np.float32) / 255
    return matte * photo_pixels(photo, hands, shape)

