"""Fitting the head model to a portrait's face landmarks: identity, expression, jaw, gaze and camera.

The paper's generator is conditioned on a head mesh fitted to the input portrait, and the avatar is placed
in the portrait's camera. We fit our head model to MediaPipe's 478 landmarks (which are template vertices
by construction, or a fixed barycentric mapping for FLAME):

1. a rigid start from `cv2.solvePnP` on the neutral head, tried at a few focal lengths;
2. joint optimisation (Adam, batched torch) of identity shape, expression, jaw, eye rotations, head rotation,
   translation and focal length against the 2D landmarks (robust, normalised by the inter-ocular distance)
   and MediaPipe's relative depths, with priors on shape, expression and focal length.

The camera carries the head's rotation: the fitted head stays at the origin of head space with zero root and
neck rotation, and `viewmat` (world→camera, OpenCV) sees it as the portrait does. So the avatar renders in
the portrait's view with `viewmat` and `K`, and animates in its own canonical space.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import mediapipe_topology as mpt
from .data import JOINT_NAMES
from .lbs import axis_angle_to_matrix
from .model import HeadModel

FLIP = np.diag([1.0, -1.0, -1.0])  # head space (y up, z toward the viewer) -> OpenCV camera (y down, z forward)


@dataclass
class FitConfig:
    iterations: int = 250
    lr: float = 0.02
    depth_weight: float = 0.1  # MediaPipe's z is relative and only roughly metric
    contour_weight: float = 0.3  # the face oval slides along the cheeks: trust it less
    feature_weight: float = 1.5  # eyes, brows, lips, nose
    shape_prior: float = 2e-4
    expression_prior: float = 5e-4
    focal_prior: float = 0.02  # on log focal, around `focal_guess`
    focal_guess: float = 2.2  # focal length in units of the image height (a ~26° portrait crop)
    fit_focal: bool = True
    robust_scale: float = 0.02  # Charbonnier scale, in inter-ocular distances


@dataclass
class FitResult:
    shape: np.ndarray  # (S,)
    expression: np.ndarray  # (E,)
    pose: np.ndarray  # (5, 3) axis-angle: root and neck zero, jaw and eyes fitted
    viewmat: np.ndarray  # (4, 4) head space -> OpenCV camera
    K: np.ndarray  # (3, 3)
    width: int
    height: int
    landmarks_2d: np.ndarray  # (478, 2) the fitted model's landmarks projected into the image
    error_px: float  # mean 2D distance to the detected mesh landmarks (468)
    error_iod: float  # the same, as a fraction of the inter-ocular distance
    head_angles_deg: tuple[float, float, float]  # yaw (toward the subject's left), pitch (up), roll
    seconds: float
    model_id: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, np.ndarray):
                out[k] = v.tolist()
        out["head_angles_deg"] = list(self.head_angles_deg)
        return out


def landmark_weights(num: int = mpt.NUM_LANDMARKS, config: FitConfig = FitConfig()) -> np.ndarray:
    """Per-landmark weight for the 2D term: irises carry gaze, the oval is less reliable."""
    w = np.ones(num)
    w[list(mpt.FACE_OVAL)] = config.contour_weight
    features = set(mpt.NOSE) | set(mpt.LEFT_BROW) | set(mpt.RIGHT_BROW)
    for loop in (mpt.LEFT_EYE_UPPER, mpt.LEFT_EYE_LOWER, mpt.RIGHT_EYE_UPPER, mpt.RIGHT_EYE_LOWER,
                 mpt.OUTER_LIPS_UPPER, mpt.OUTER_LIPS_LOWER, mpt.INNER_LIPS_UPPER, mpt.INNER_LIPS_LOWER):
        features |= set(loop)
    w[sorted(features)] = config.feature_weight
    w[mpt.NUM_MESH_LANDMARKS:] = 0.0
    w[[mpt.LEFT_IRIS[0], mpt.RIGHT_IRIS[0]]] = 1.0
    return w


def model_landmarks(head: HeadModel, vertices: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) vertices -> (B, L, 3) landmark points via the head model's barycentric mapping."""
    data = head.data
    if data.landmark_faces is None:
        raise ValueError(f"head model {head.model_id!r} has no landmark correspondence (landmark_faces)")
    faces = head.faces[torch.as_tensor(data.landmark_faces)]
    bary = torch.as_tensor(data.landmark_barycentrics, dtype=vertices.dtype)
    return (vertices[:, faces] * bary[None, :, :, None]).sum(2)


def _rigid_start(points3d: np.ndarray, points2d: np.ndarray, width: int, height: int, focal: float) -> tuple[np.ndarray, np.ndarray, float]:
    """cv2.solvePnP on the neutral head: (axis-angle of the head rotation, translation, reprojection error)."""
    import cv2

    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    ok, rvec, tvec = cv2.solvePnP(points3d.astype(np.float64), points2d.astype(np.float64), K, None, flags=cv2.SOLVEPNP_ITERATIVE,
                                  useExtrinsicGuess=True, rvec=np.array([[np.pi], [0.0], [0.0]]), tvec=np.array([[0.0], [0.0], [focal / height * 0.25 * 2]]))
    if not ok:
        raise RuntimeError("solvePnP failed")
    R_cam, _ = cv2.Rodrigues(rvec)
    proj = (points3d @ R_cam.T + tvec.ravel())
    uv = proj[:, :2] / proj[:, 2:3] * focal + np.array([width / 2, height / 2])
    err = float(np.linalg.norm(uv - points2d, axis=1).mean())
    from scipy.spatial.transform import Rotation

    head_rot = FLIP @ R_cam  # R_cam = FLIP @ R_head
    return Rotation.from_matrix(head_rot).as_rotvec(), tvec.ravel(), err


def fit_head(
    landmarks: np.ndarray,  # (478, 3): x, y pixels; z MediaPipe relative depth in pixels (larger = farther)
    head: HeadModel,
    width: int,
    height: int,
    config: FitConfig = FitConfig(),
) -> FitResult:
    """Fit one portrait's landmarks (see `fit_heads` for batches)."""
    return fit_heads(landmarks[None], head, width, height, config)[0]


def fit_heads(landmarks: np.ndarray, head: HeadModel, width: int, height: int, config: FitConfig = FitConfig()) -> list[FitResult]:
    """Batched fit: landmarks (B, 478, 3) of B portraits of the same size."""
    start = time.perf_counter()
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (mpt.NUM_LANDMARKS, 3) or not np.isfinite(lm).all():
        raise ValueError(f"landmarks must be finite (B, {mpt.NUM_LANDMARKS}, 3), got {lm.shape}")
    B = lm.shape[0]
    with torch.no_grad():
        neutral = model_landmarks(head, head.v_template[None])[0].double().numpy()
    mesh = slice(0, mpt.NUM_MESH_LANDMARKS)
    weights = landmark_weights(config=config)
    init_rot, init_t, init_f = [], [], []
    for b in range(B):
        best = None
        for factor in (1.4, 2.2, 3.4):  # perspective strength is weakly observed: start from the best of a few
            f = factor * height
            rot, t, err = _rigid_start(neutral[mesh], lm[b, mesh, :2], width, height, f)
            if best is None or err < best[2] - 0.05:
                best = (rot, t, err, f)
        init_rot.append(best[0])
        init_t.append(best[1])
        init_f.append(best[3])

    dt = torch.float64
    tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=dt)  # noqa: E731
    rot = tensor(init_rot).requires_grad_()
    trans = tensor(init_t).requires_grad_()
    log_f = tensor(np.log(init_f)).requires_grad_(config.fit_focal)
    shape = torch.zeros(B, head.num_shape, dtype=dt, requires_grad=True)
    expr = torch.zeros(B, head.num_expr, dtype=dt, requires_grad=True)
    jaw = torch.zeros(B, 1, dtype=dt, requires_grad=True)
    eyes = torch.zeros(B, 2, 2, dtype=dt, requires_grad=True)  # (left, right) x (pitch about X, yaw about Y)
    head64 = HeadModel(head.data).double()

    target = tensor(lm)
    w = tensor(weights)
    iod = torch.linalg.norm(target[:, mpt.LEFT_EYE_OUTER, :2] - target[:, mpt.RIGHT_EYE_OUTER, :2], dim=-1)  # (B,)
    centre = tensor([width / 2, height / 2])
    flip = tensor(FLIP)
    params = [{"params": [rot, trans, shape, expr, jaw, eyes], "lr": config.lr}]
    if config.fit_focal:
        params.append({"params": [log_f], "lr": config.lr})
    optimizer = torch.optim.Adam(params)
    # scale the parameters' step sizes: translation in metres, shape/expression in coefficient units
    scale = {"trans": 0.01, "shape": 10.0, "expr": 5.0}

    def project(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = torch.einsum("bij,blj->bli", flip @ R, points) + t[:, None]
        uv = cam[..., :2] / cam[..., 2:3] * f[:, None, None] + centre
        return uv, cam[..., 2]

    def forward():
        pose = torch.zeros(B, len(JOINT_NAMES), 3, dtype=dt)
        pose = pose.index_put((torch.arange(B), torch.full((B,), JOINT_NAMES.index("jaw")), torch.zeros(B, dtype=torch.long)), jaw[:, 0])
        for k, name in enumerate(("left_eye", "right_eye")):
            j = JOINT_NAMES.index(name)
            pose = pose.index_put((torch.arange(B), torch.full((B,), j), torch.zeros(B, dtype=torch.long)), eyes[:, k, 0])
            pose = pose.index_put((torch.arange(B), torch.full((B,), j), torch.ones(B, dtype=torch.long)), eyes[:, k, 1])
        out = head64(shape=shape * scale["shape"], expression=expr * scale["expr"], pose=pose)
        points = model_landmarks(head64, out.vertices)
        R = axis_angle_to_matrix(rot)
        f = log_f.exp()
        uv, z = project(points, R, trans * 1.0, f)
        return uv, z, pose, f

    def charbonnier(r: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1 + (r / config.robust_scale) ** 2) - 1

    for step in range(config.iterations):
        optimizer.zero_grad()
        uv, z, pose, f = forward()
        residual = torch.linalg.norm(uv - target[..., :2], dim=-1) / iod[:, None]  # (B, L)
        loss_2d = (w * charbonnier(residual)).sum(1) / w.sum()
        depth_model = (z - z[:, mesh].mean(1, keepdim=True)) * f[:, None] / z[:, mesh].mean(1, keepdim=True)
        depth_target = target[..., 2] - target[:, mesh, 2].mean(1, keepdim=True)
        depth_res = (depth_model - depth_target)[:, mesh] / iod[:, None]
        loss_depth = config.depth_weight * charbonnier(depth_res).mean(1)
        psi = expr * scale["expr"]
        loss_prior = (config.shape_prior * (shape * scale["shape"]).pow(2).sum(1)
                      + config.expression_prior * psi.pow(2).sum(1) + 10 * torch.relu(-psi).pow(2).sum(1)
                      + 10 * torch.relu(-jaw).pow(2).sum(1) + 0.5 * eyes.pow(2).sum((1, 2))
                      + config.focal_prior * (log_f - math.log(config.focal_guess * height)) ** 2)
        loss = (loss_2d + loss_depth + loss_prior).sum()
        loss.backward()
        optimizer.step()
        if step == config.iterations // 2:  # anneal for the final, precise half
            for group in optimizer.param_groups:
                group["lr"] *= 0.3

    with torch.no_grad():
        uv, z, pose, f = forward()
        R = axis_angle_to_matrix(rot)
    seconds = time.perf_counter() - start
    results = []
    from scipy.spatial.transform import Rotation

    for b in range(B):
        R_head = R[b].numpy()
        view = np.eye(4)
        view[:3, :3] = FLIP @ R_head
        view[:3, 3] = trans[b].detach().numpy()
        K = np.array([[float(f[b]), 0, width / 2], [0, float(f[b]), height / 2], [0, 0, 1]])
        err = np.linalg.norm(uv[b, mesh].numpy() - lm[b, mesh, :2], axis=1).mean()
        yaw, pitch, roll = Rotation.from_matrix(R_head).as_euler("YXZ", degrees=True)
        results.append(FitResult(
            shape=(shape[b] * scale["shape"]).detach().numpy().astype(np.float32),
            expression=(expr[b] * scale["expr"]).detach().numpy().astype(np.float32),
            pose=pose[b].numpy().astype(np.float32), viewmat=view, K=K, width=width, height=height,
            landmarks_2d=uv[b].numpy(), error_px=float(err), error_iod=float(err / float(iod[b])),
            head_angles_deg=(float(yaw), float(-pitch), float(roll)), seconds=seconds / B, model_id=head.model_id,
        ))
    return results


def head_rotation(viewmat: np.ndarray) -> np.ndarray:
    """The head's rotation as the camera sees it (identity = facing the camera upright)."""
    return FLIP @ np.asarray(viewmat)[:3, :3]
