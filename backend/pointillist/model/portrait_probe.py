"""What the portrait shows where each generated point lands: the Gaussian decoder's pixel-aligned input.

The paper's decoder sees the image only through the AR transformer's latents. On our CPU budget those
latents carry little of the portrait (zeroing the image moves the AR loss by 0.5 %), so the decoder painted
every face the template's beige. The probe gives it the photo directly: each point is posed like the head
in the portrait (the fitted jaw, neck and eyes), projected with the portrait's camera, and reads the colour
under it at two scales, plus whether it faces the camera (a coarse point z-buffer: points behind the face
must not take the face's colour) and how deep it lies. The decoder's set transformer carries colour from
the points the photo shows to the ones it hides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..head.lbs import apply_transforms, blend_transforms
from ..head.model import HeadModel

#: rgb (3) + blurred rgb (3) + visible + inside the frame + relative depth
PROBE_FEATURES = 9
_GRID = 40  # z-buffer cells across the portrait (a head is about 25 cells wide)
_OCCLUSION_M = 0.03  # a point this far behind the nearest point in its cell is hidden (nose to cheek is ~2.5 cm)
_DEPTH_SCALE_M = 0.1


@dataclass
class PortraitView:
    """The portrait an avatar is made from, with the camera and head pose that explain it."""

    image: Tensor  # (3, H, W) float in [0, 1]
    K: Tensor  # (3, 3) intrinsics in pixels of `image`
    viewmat: Tensor  # (4, 4) head space -> OpenCV camera
    shape: Tensor  # (S,) identity coefficients
    pose: Tensor | None = None  # (5, 3) axis-angle of root, neck, jaw, eyes in the photo; None: rest
    alpha: Tensor | None = None  # (H, W) float in [0, 1]: the person's matte; None: not known

    @classmethod
    def from_arrays(cls, image: np.ndarray, K: np.ndarray, viewmat: np.ndarray, shape: np.ndarray,
                    pose: np.ndarray | None = None, alpha: np.ndarray | None = None) -> PortraitView:
        """From an (H, W, 3) uint8 image, an optional (H, W) matte (uint8 0..255 or float 0..1) and numpy
        camera, shape and pose."""
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
        matte = None
        if alpha is not None:
            a = np.asarray(alpha)
            matte = torch.from_numpy(np.array(a, dtype=np.float32)) / (255.0 if a.dtype == np.uint8 else 1.0)
        return cls(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255, f32(K), f32(viewmat),
                   f32(shape), None if pose is None else f32(pose), matte)

    @classmethod
    def from_record(cls, record) -> PortraitView:
        """A dataset subject's conditioning view (view 0), posed as the photo was, with its matte."""
        return cls.from_arrays(record.images[0], record.Ks[0], record.viewmats[0], record.shape,
                               record.poses[0] if record.is_posed(0) else None, record.masks[0])


def triangle_transforms(view: PortraitView, head: HeadModel) -> Tensor:
    """(F, 4, 4) each triangle's skinning transform into the portrait's pose: its vertices' mean LBS weights
    blended over the posed joints (the identity at rest). A point bound to a triangle moves with it."""
    dev = head.v_template.device
    pose = view.pose if view.pose is not None else torch.zeros(head.lbs_weights.shape[1], 3)
    joints = head.rest_joints(head.identity_vertices(view.shape.to(dev)[None]))
    A, _ = head.skinning(joints, head.pose_rotations(pose.to(dev)[None], 1), None)
    return blend_transforms(head.lbs_weights[head.faces].mean(1)[None], A)[0]


def posed_points(points: Tensor, triangles: Tensor, view: PortraitView, head: HeadModel) -> Tensor:
    """(P, 3) points moved with their triangles' skinning (`triangle_transforms`) into the portrait's pose.
    Expression offsets are left out: they move points by millimetres, not pixels."""
    if view.pose is None or not bool(torch.any(view.pose != 0)):
        return points
    T = triangle_transforms(view, head).to(points.device)[triangles]
    return apply_transforms(T[None], points[None])[0]


def probe_features(points: Tensor, triangles: Tensor, view: PortraitView, head: HeadModel) -> Tensor:
    """(P, PROBE_FEATURES) for points (P, 3) bound to `triangles` (P,), in head space at rest. Computed
    where the head model lives (it stays on the CPU) and returned on the points' device; no gradient."""
    out_device, dev = points.device, head.v_template.device
    with torch.no_grad():
        return _probe(points.detach().to(dev).float(), torch.as_tensor(triangles, device=dev), view, head).to(out_device)


def _project(points: Tensor, view: PortraitView) -> tuple[Tensor, Tensor, Tensor]:
    """(P, 3) head-space points (already posed) -> pixel u, v and camera depth z of `view`."""
    dev = points.device
    cam = points @ view.viewmat[:3, :3].to(dev).T + view.viewmat[:3, 3].to(dev)
    z = cam[:, 2].clamp_min(1e-3)
    K = view.K.to(dev)
    return K[0, 0] * cam[:, 0] / z + K[0, 2], K[1, 1] * cam[:, 1] / z + K[1, 2], z


def sample_pixels(image: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Bilinear samples (P, C) of a (C, H, W) image at pixel positions (border-clamped)."""
    H, W = image.shape[-2:]
    grid = torch.stack([2 * u / W - 1, 2 * v / H - 1], dim=-1)[None, None]  # pixel edges at ±1
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T


def _inside(u: Tensor, v: Tensor, view: PortraitView) -> Tensor:
    H, W = view.image.shape[-2:]
    return ((u >= 0) & (u < W) & (v >= 0) & (v < H)).float()


def _visible(u: Tensor, v: Tensor, z: Tensor, inside: Tensor, view: PortraitView) -> Tensor:
    """1 where no other point of the set lies clearly in front in the same coarse cell (a point z-buffer)."""
    H, W = view.image.shape[-2:]
    cell_u = (u / W * _GRID).floor().clamp(0, _GRID - 1).long()
    cell_v = (v / H * _GRID).floor().clamp(0, _GRID - 1).long()
    cell = cell_v * _GRID + cell_u
    nearest = torch.full((_GRID * _GRID,), float("inf"), device=z.device).scatter_reduce(0, cell, z, reduce="amin")
    return (z <= nearest[cell] + _OCCLUSION_M).float() * inside


def _probe(points: Tensor, triangles: Tensor, view: PortraitView, head: HeadModel) -> Tensor:
    u, v, z = _project(posed_points(points, triangles, view, head), view)
    image = view.image.to(points.device)
    W = image.shape[-1]
    fine = sample_pixels(image, u, v)
    blur = max(1, round(W / 32))
    coarse = sample_pixels(F.avg_pool2d(image[None], blur, stride=1, padding=blur // 2, count_include_pad=False)[0], u, v)
    inside = _inside(u, v, view)
    visible = _visible(u, v, z, inside, view)
    depth = (z - z.median()) / _DEPTH_SCALE_M
    return torch.cat([fine, coarse, visible[:, None], inside[:, None], depth[:, None]], dim=1)


# ---------------------------------------------------------------------- the AR model's view of the portrait
#: metres along each head sample's outward normal at which the ray probe reads the portrait: on the skin,
#: then out through where hair of growing volume would be (a buzz cut is ~1 cm, an afro ~12 cm)
RAY_DISTANCES = (0.0, 0.02, 0.05, 0.09, 0.14)
#: per distance: matte, rgb, inside the frame; plus whether the skin sample itself faces the camera
RAY_PROBE_FEATURES = 5 * len(RAY_DISTANCES) + 1


def ray_probe_features(head_points: Tensor, triangles: Tensor, view: PortraitView, head: HeadModel) -> Tensor:
    """What the portrait shows along rays out of the head: (M, RAY_PROBE_FEATURES) for head-surface samples
    (M, 6) (rest-pose positions and unit normals on `triangles` (M,)).

    Why: hair volume and length decide how many points an avatar needs and where, and a single photo shows
    them as the extent of the person's matte around the head. DINOv2's pretrained features carry that; our
    image encoder, trained from scratch on a CPU budget, barely does. Posing the head samples like the photo
    and reading the matte and colour where each one's outward ray projects hands the AR transformer that
    evidence aligned to the head-point tokens it already attends to. A view without a matte reads 0 matte.
    """
    out_device, dev = head_points.device, head.v_template.device
    with torch.no_grad():
        pts = head_points.detach().to(dev).float()
        tri = torch.as_tensor(triangles, device=dev)
        M, D = len(pts), len(RAY_DISTANCES)
        dist = torch.as_tensor(RAY_DISTANCES, device=dev, dtype=pts.dtype)
        ray = (pts[None, :, :3] + dist[:, None, None] * pts[None, :, 3:]).reshape(D * M, 3)
        u, v, z = _project(posed_points(ray, tri.repeat(D), view, head), view)
        rgb = sample_pixels(view.image.to(dev), u, v)
        matte = sample_pixels(view.alpha.to(dev)[None], u, v) if view.alpha is not None else rgb.new_zeros(D * M, 1)
        inside = _inside(u, v, view)
        per_distance = torch.cat([matte * inside[:, None], rgb, inside[:, None]], dim=1).reshape(D, M, 5)
        skin_visible = _visible(u[:M], v[:M], z[:M], inside[:M], view)
        return torch.cat([per_distance.permute(1, 0, 2).reshape(M, 5 * D), skin_visible[:, None]], dim=1).to(out_device)
