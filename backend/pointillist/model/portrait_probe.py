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

    @classmethod
    def from_arrays(cls, image: np.ndarray, K: np.ndarray, viewmat: np.ndarray, shape: np.ndarray,
                    pose: np.ndarray | None = None) -> PortraitView:
        """From an (H, W, 3) uint8 image and numpy camera, shape and pose."""
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
        return cls(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255, f32(K), f32(viewmat),
                   f32(shape), None if pose is None else f32(pose))

    @classmethod
    def from_record(cls, record) -> PortraitView:
        """A dataset subject's conditioning view (view 0), posed as the photo was."""
        return cls.from_arrays(record.images[0], record.Ks[0], record.viewmats[0], record.shape,
                               record.poses[0] if record.is_posed(0) else None)


def posed_points(points: Tensor, triangles: Tensor, view: PortraitView, head: HeadModel) -> Tensor:
    """(P, 3) points moved with their triangles' skinning (the triangle's mean LBS weights) into the
    portrait's pose. Expression offsets are left out: they move points by millimetres, not pixels."""
    if view.pose is None or not bool(torch.any(view.pose != 0)):
        return points
    dev = points.device
    shape = view.shape.to(dev)[None]
    joints = head.rest_joints(head.identity_vertices(shape))
    A, _ = head.skinning(joints, head.pose_rotations(view.pose.to(dev)[None], 1), None)
    weights = head.lbs_weights[head.faces[triangles]].mean(1)  # (P, J)
    return apply_transforms(blend_transforms(weights[None], A), points[None])[0]


def probe_features(points: Tensor, triangles: Tensor, view: PortraitView, head: HeadModel) -> Tensor:
    """(P, PROBE_FEATURES) for points (P, 3) bound to `triangles` (P,), in head space at rest. Computed
    where the head model lives (it stays on the CPU) and returned on the points' device; no gradient."""
    out_device, dev = points.device, head.v_template.device
    with torch.no_grad():
        return _probe(points.detach().to(dev).float(), torch.as_tensor(triangles, device=dev), view, head).to(out_device)


def _probe(points: Tensor, triangles: Tensor, view: PortraitView, head: HeadModel) -> Tensor:
    dev = points.device
    posed = posed_points(points, triangles, view, head)
    cam = posed @ view.viewmat[:3, :3].to(dev).T + view.viewmat[:3, 3].to(dev)
    z = cam[:, 2].clamp_min(1e-3)
    K = view.K.to(dev)
    u = K[0, 0] * cam[:, 0] / z + K[0, 2]
    v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    image = view.image.to(dev)[None]
    H, W = image.shape[-2:]
    grid = torch.stack([2 * u / W - 1, 2 * v / H - 1], dim=-1)[None, None]  # pixel edges at ±1
    fine = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T
    blur = max(1, round(W / 32))
    coarse_image = F.avg_pool2d(image, blur, stride=1, padding=blur // 2, count_include_pad=False)
    coarse = F.grid_sample(coarse_image, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T
    inside = ((u >= 0) & (u < W) & (v >= 0) & (v < H)).float()
    cell_u = (u / W * _GRID).floor().clamp(0, _GRID - 1).long()
    cell_v = (v / H * _GRID).floor().clamp(0, _GRID - 1).long()
    cell = cell_v * _GRID + cell_u
    nearest = torch.full((_GRID * _GRID,), float("inf"), device=dev).scatter_reduce(0, cell, z, reduce="amin")
    visible = (z <= nearest[cell] + _OCCLUSION_M).float() * inside
    depth = (z - z.median()) / _DEPTH_SCALE_M
    return torch.cat([fine, coarse, visible[:, None], inside[:, None], depth[:, None]], dim=1)
