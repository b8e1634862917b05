"""Linear blend skinning maths shared by the head model and by per-Gaussian animation.

Pure torch functions over batched tensors, differentiable, device-agnostic.
"""

from __future__ import annotations

import torch

from .data import JOINT_PARENTS


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula. aa (..., 3) -> rotation matrices (..., 3, 3).

    Uses the Taylor form near zero so gradients stay finite at the rest pose.
    """
    theta2 = (aa * aa).sum(-1, keepdim=True)  # (..., 1)
    small = theta2 < 1e-12
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    # sin(t)/t and (1-cos t)/t^2 with series fallbacks
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(Kx)
    return eye + a[..., None] * Kx + b[..., None] * (Kx @ Kx)


def kinematic_transforms(
    rotations: torch.Tensor, joints: torch.Tensor, parents: tuple[int, ...] = JOINT_PARENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain local joint rotations into skinning transforms.

    rotations (B, J, 3, 3) local rotations; joints (B, J, 3) rest joint locations.
    Returns (skinning (B, J, 4, 4) mapping rest space to posed space, posed_joints (B, J, 3)).
    """
    B, J = joints.shape[:2]
    rel = joints.clone()
    for j in range(1, J):
        rel[:, j] = joints[:, j] - joints[:, parents[j]]
    local = _rigid(rotations, rel)  # (B, J, 4, 4)
    chain = [local[:, 0]]
    for j in range(1, J):
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)  # (B, J, 4, 4)
    posed_joints = world[..., :3, 3]
    # Remove the rest joint location so the transform acts on rest-space points.
    offset = (world[..., :3, :3] @ joints[..., None])[..., 0]
    skinning = world.clone()
    skinning[..., :3, 3] = world[..., :3, 3] - offset
    return skinning, posed_joints


def _rigid(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    top = torch.cat([R, t[..., None]], dim=-1)
    bottom = torch.zeros(*R.shape[:-2], 1, 4, dtype=R.dtype, device=R.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def blend_transforms(weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Per-point blended transforms. weights (B|1, N, J), transforms (B, J, 4, 4) -> (B, N, 4, 4)."""
    return torch.einsum("bnj,bjkl->bnkl", weights.expand(transforms.shape[0], -1, -1), transforms)


def apply_transforms(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """T (B, N, 4, 4), points (B, N, 3) -> (B, N, 3)."""
    return (T[..., :3, :3] @ points[..., None])[..., 0] + T[..., :3, 3]


def orthonormalize(M: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """Closest rotation to each 3x3 matrix (the polar factor), by Newton's iteration X <- (X + X^-T) / 2.

    A blend of joint rotations is not a rotation; Gaussians need a proper one to rotate their frame.
    Blended LBS rotations are near-orthogonal with positive determinant, where the iteration converges
    quadratically; X^-T is the cofactor matrix over the determinant (cross products of the columns), so a
    step is a few elementwise ops instead of a batched SVD (about 10x faster on CPU).
    """
    X = M
    for _ in range(iterations):
        c0, c1, c2 = X[..., :, 0], X[..., :, 1], X[..., :, 2]
        cof = torch.stack([torch.cross(c1, c2, dim=-1), torch.cross(c2, c0, dim=-1), torch.cross(c0, c1, dim=-1)], dim=-1)
        det = (c0 * cof[..., :, 0]).sum(-1)[..., None, None]
        X = 0.5 * (X + cof / det)
    return X


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4), w first, w >= 0."""
    m = R
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
        ],
        dim=-2,
    )  # (..., 4, 4): row k is 4*q_k*q (unnormalised) for the k-th largest-component choice
    diag = torch.stack([1 + trace, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of w-first quaternions (..., 4)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """w-first quaternions (..., 4), any norm -> rotation matrices (..., 3, 3)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)
