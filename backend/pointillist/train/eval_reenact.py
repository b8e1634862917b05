"""Reenactment for evaluation: pose two avatars with the same driving controls, render, compare landmarks (AKD).

The ground truth is the subject's own canonical Gaussians from the dataset record, animated with the same
head model as the generated avatar, so the two differ only by what the generator got wrong. Both are
posed with the same fixed, named driving frames (expressions, jaw, neck), rendered at ``size``² from the
subject's portrait camera (view 0, whose K is rescaled from the stored image size), and MediaPipe's face
mesh (``preprocess.landmarks``, the project's detector) reads 478 landmarks from each render. The AKD is
the mean landmark distance in pixels at that size over frames where both were detected; a frame where the
detector finds no face on the generated render counts as a failure (reported as a rate, never silently
dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..avatar.animate import AvatarAnimator
from ..avatar.binding import closest_point_barycentrics
from ..avatar.controls import FaceControls
from ..avatar.gaussians import Avatar, Binding, Gaussians, HeadIdentity
from ..head.model import HeadModel
from ..render.rasterize import rasterize
from ..render.sh import SH_C0
from .metrics import keypoint_distance

#: The driving frames, fixed so every checkpoint and subject is driven identically: a talking mouth, a
#: smile while turning, raised brows with a nod, a pucker while tilting, and a sideways jaw.
DRIVING_FRAMES: tuple[tuple[str, FaceControls], ...] = (
    ("jaw open", FaceControls(jaw_deg=16.0)),
    ("smile, turn left", FaceControls(expressions={"mouthSmileLeft": 0.8, "mouthSmileRight": 0.8}, neck_yaw_deg=15.0)),
    ("brows up, nod", FaceControls(expressions={"browInnerUp": 0.8, "browOuterUpLeft": 0.6, "browOuterUpRight": 0.6},
                                   jaw_deg=6.0, neck_pitch_deg=8.0)),
    ("pucker, tilt", FaceControls(expressions={"mouthPucker": 0.8}, neck_roll_deg=-8.0, neck_yaw_deg=-10.0)),
    ("jaw sideways", FaceControls(expressions={"jawLeft": 0.7, "mouthStretchLeft": 0.5}, jaw_deg=10.0)),
)


@dataclass
class GaussianArrays:
    """Canonical Gaussians bound to head triangles, as numpy arrays (a record's, or a decoder's output)."""

    means: np.ndarray  # (N, 3)
    log_scales: np.ndarray  # (N, 3)
    quats: np.ndarray  # (N, 4)
    opacity_logits: np.ndarray  # (N,)
    sh_dc: np.ndarray  # (N, 3)
    triangles: np.ndarray  # (N,)

    @classmethod
    def from_record(cls, record) -> GaussianArrays:
        return cls(record.means, record.log_scales, record.quats, record.opacity_logits, record.sh_dc, record.binding)

    @classmethod
    def from_decoder(cls, out, binding: np.ndarray, k: int) -> GaussianArrays:
        """The decoder's output for one subject; each generated point's k children share its triangle."""
        arr = lambda t: t[0].detach().cpu().float().numpy()
        return cls(arr(out.means), arr(out.log_scales), arr(out.quats), arr(out.opacity_logits), arr(out.sh_dc),
                   np.repeat(np.asarray(binding), k))


def make_avatar(g: GaussianArrays, head: HeadModel, shape: np.ndarray) -> Avatar:
    """An animatable avatar: barycentrics are the closest points on the bound triangles of the identity mesh
    (as ``pipeline.create_avatar`` does for a generated avatar)."""
    with torch.no_grad():
        verts = head.identity_vertices(torch.as_tensor(np.asarray(shape, np.float32))[None])[0].double().numpy()
    tri = np.asarray(g.triangles, dtype=np.int64)
    bary = closest_point_barycentrics(g.means, verts[head.data.faces[tri]]).astype(np.float32)
    gaussians = Gaussians(means=np.asarray(g.means, np.float32), log_scales=np.asarray(g.log_scales, np.float32),
                          quats=np.asarray(g.quats, np.float32), opacity_logits=np.asarray(g.opacity_logits, np.float32),
                          sh_dc=np.asarray(g.sh_dc, np.float32), sh_rest=np.zeros((len(g.means), 0, 3), np.float32))
    return Avatar(gaussians=gaussians, binding=Binding(triangles=tri, barycentrics=bary),
                  identity=HeadIdentity(model_id=head.model_id, shape=np.asarray(shape, np.float32)))


def scaled_K(K: np.ndarray, from_size: int, to_size: int) -> torch.Tensor:
    """Intrinsics of the same camera at another square image size (pixel edges at integers, so exact)."""
    out = torch.as_tensor(np.asarray(K), dtype=torch.float32).clone()
    out[:2] *= to_size / from_size
    return out


def render_white(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor, opacity_logits: torch.Tensor,
                 sh_dc: torch.Tensor, viewmat, K: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size, 3) float in [0, 1] over a white background (DC colour only, like the dataset's renders)."""
    out = rasterize(means, quats, log_scales.exp(), torch.sigmoid(opacity_logits),
                    (0.5 + SH_C0 * sh_dc).clamp_min(0), viewmat=torch.as_tensor(np.asarray(viewmat), dtype=torch.float32),
                    K=K, width=size, height=size, background=torch.ones(3))
    return out.rgb.clamp(0, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().cpu().numpy() * 255 + 0.5).astype(np.uint8)


def posed_renders(avatar: Avatar, head: HeadModel, frames: list[FaceControls], viewmat, K: torch.Tensor,
                  size: int) -> list[np.ndarray]:
    """uint8 (size, size, 3) renders of the avatar under each driving frame."""
    animator = AvatarAnimator(avatar, head)
    g = avatar.gaussians
    opacity = torch.as_tensor(g.opacity_logits)
    sh_dc = torch.as_tensor(g.sh_dc)
    images = []
    with torch.no_grad():
        for controls in frames:
            expr, pose = controls.to_model(head.expr_names)
            posed = animator(expr, pose)
            images.append(to_uint8(render_white(posed.means[0], posed.quats[0], posed.log_scales[0], opacity, sh_dc,
                                                viewmat, K, size)))
    return images


def target_view(record, v: int, size: int) -> torch.Tensor:
    """View v of the record over white (as `render_view` renders), resampled to size² with antialiasing."""
    import torch.nn.functional as F

    img = torch.as_tensor(record.images[v]).float().permute(2, 0, 1)[None] / 255
    mask = torch.as_tensor(record.masks[v]).float()[None, None] / 255
    return F.interpolate(img * mask + (1 - mask), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0].permute(1, 2, 0)


def render_view(g: GaussianArrays, record, v: int, size: int, head: HeadModel | None = None) -> torch.Tensor:
    """(size, size, 3) render on white of bound Gaussians through a record's view v, posed like that view when
    it was rendered away from the rest pose (engine v2's portraits, every view of a real capture: the record's
    stored controls); without `head`, at rest."""
    t = lambda x: torch.as_tensor(np.array(x, dtype=np.float32))
    means, quats = t(g.means), t(g.quats)
    if head is not None and record.is_posed(v):
        expression = record.expressions[v] if record.expressions.shape[1] else None
        posed = AvatarAnimator(make_avatar(g, head, record.shape), head)(expression, record.poses[v])
        means, quats = posed.means[0], posed.quats[0]
    return render_white(means, quats, t(g.log_scales), t(g.opacity_logits), t(g.sh_dc), record.viewmats[v],
                        scaled_K(record.Ks[v], record.images.shape[1], size), size)


def detect(image: np.ndarray) -> np.ndarray | None:
    """MediaPipe's 478 landmarks (x, y pixels) of the largest face, or None when no face is found."""
    from ..preprocess.decode import PortraitError
    from ..preprocess.landmarks import detect_landmarks

    try:
        return detect_landmarks(image, check=False).points[:, :2].astype(np.float64)
    except PortraitError:
        return None


def reenactment_akd(truth: list[np.ndarray | None], generated: list[np.ndarray | None]) -> dict:
    """AKD over frames where both landmark sets exist, and how often detection failed on either side."""
    per_frame = [keypoint_distance(t, g) if t is not None and g is not None else None for t, g in zip(truth, generated)]
    pairs = [d for d in per_frame if d is not None]
    n = len(truth)
    return {"akd_px": round(float(np.mean(pairs)), 3) if pairs else None,
            "akd_frames": len(pairs), "frames": n, "akd_per_frame_px": [None if d is None else round(d, 3) for d in per_frame],
            "detection_failures": sum(g is None for g in generated),
            "truth_detection_failures": sum(t is None for t in truth)}
