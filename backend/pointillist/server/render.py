"""The render bridge: registered objects (static attributes) and frame rendering.

Objects live in memory only: after a restart every id is unknown and the client registers it again
(404 `unknown_object`). The store is bounded by object count and total Gaussians; the least recently
used objects are dropped to make room, which again only costs the client a re-registration.

Frames render on one dedicated thread (not the job worker, so an interactive viewport never waits
behind a 20-second avatar job), with a small bound on frames in flight: over it answers 503
`render_busy` with Retry-After, so a stalled client cannot pile up work.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..render.film import FAR_DEPTH, covered_block, empty_pixel, film_passes
from ..render.skinning import skin_quaternions
from .config import Limits
from .errors import ApiError
from .render_payload import (
    ObjectAttributes,
    PayloadError,
    PayloadLimits,
    RenderRequest,
    film_image_buffer,
    raw_image_buffer,
)

MAX_PLY_HEADER = 64 * 1024


def payload_limits(limits: Limits) -> PayloadLimits:
    return PayloadLimits(max_gaussians_per_object=limits.max_gaussians_per_object,
                         max_objects_per_render=limits.max_objects_per_render,
                         max_side=limits.max_render_side, max_pixels=limits.max_render_pixels)


def object_from_ply(body: bytes, max_gaussians: int) -> ObjectAttributes:
    """Static attributes from an Inria 3DGS PLY (activated: sigmoid opacity, exp scales).

    The vertex count in the header is checked against `max_gaussians` before any parsing; the strict
    reader (`avatar.ply`) then checks the header against the body size, every property and that every
    value is finite.
    """
    from ..avatar.gaussians import AvatarFormatError
    from ..avatar.ply import gaussians_from_ply_bytes

    head = body[:MAX_PLY_HEADER]
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise PayloadError("PLY: not a PLY file, or its header is over 64 KiB")
    for line in head[:end].split(b"\n"):
        words = line.split()
        if (len(words) == 3 and words[0] == b"element" and words[1] == b"vertex"
                and not (words[2].isdigit() and 1 <= int(words[2]) <= max_gaussians)):
            raise PayloadError(f"PLY: vertex count {words[2][:20].decode('ascii', 'replace')} must be between 1 "
                               f"and {max_gaussians}")
    try:
        g, _ = gaussians_from_ply_bytes(body, "PLY")
    except AvatarFormatError as exc:
        raise PayloadError(str(exc)) from None
    sh = np.concatenate([g.sh_dc[:, None, :], g.sh_rest], axis=1).astype(np.float32)
    if (np.linalg.norm(g.quats, axis=1) < 1e-8).any():
        raise PayloadError("PLY: a rotation quaternion is zero")
    scales = g.scales().astype(np.float32)
    if not np.isfinite(scales).all() or (scales <= 0).any():
        raise PayloadError("PLY: scale_0..2 are log scales; exp() of some is 0 or infinite")
    return ObjectAttributes(opacities=g.opacities().astype(np.float32), scales=scales,
                            sh=sh, rest_quats=g.quats.astype(np.float32))


class ObjectStore:
    """object id -> static attributes as tensors on the render device; LRU-bounded."""

    def __init__(self, limits: Limits, device: str = "cpu"):
        self.limits = limits
        self.device = device
        self._objects: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, object_id: str, attrs: ObjectAttributes) -> dict:
        import torch

        tensors = {"opacities": torch.from_numpy(attrs.opacities).to(self.device),
                   "scales": torch.from_numpy(attrs.scales).to(self.device),
                   "sh": None if attrs.sh is None else torch.from_numpy(attrs.sh).to(self.device),
                   "colors": None if attrs.colors is None else torch.from_numpy(attrs.colors).to(self.device),
                   "rest": None, "count": attrs.count, "sh_degree": attrs.sh_degree, "skin": None}
        if attrs.pattern_weights is not None:  # skinned per frame on the CPU (render.skinning), kept as numpy
            tensors["skin"] = {"weights": attrs.pattern_weights.astype(np.float64),
                               "index": np.asarray(attrs.pattern_index, np.int64), "rest_quats": attrs.rest_quats}
        if attrs.rest_quats is not None and attrs.sh is not None and attrs.sh_degree > 0:
            from ..render.rasterize import quat_to_rotmat

            tensors["rest"] = quat_to_rotmat(torch.from_numpy(attrs.rest_quats).to(self.device))
        with self._lock:
            self._objects.pop(object_id, None)
            while self._objects and (len(self._objects) >= self.limits.max_objects or
                                     self.total() + attrs.count > self.limits.max_registered_gaussians):
                self._objects.popitem(last=False)
            self._objects[object_id] = tensors
        return {"object_id": object_id, "count": attrs.count, "sh_degree": attrs.sh_degree,
                "colors": "rgb" if attrs.colors is not None else "sh", "rest_rotations": attrs.rest_quats is not None,
                "bones": 0 if attrs.pattern_weights is None else int(attrs.pattern_weights.shape[1])}

    def total(self) -> int:
        return sum(o["count"] for o in self._objects.values())

    def get(self, object_id: str) -> dict | None:
        with self._lock:
            obj = self._objects.get(object_id)
            if obj is not None:
                self._objects.move_to_end(object_id)
            return obj

    def delete(self, object_id: str) -> bool:
        with self._lock:
            return self._objects.pop(object_id, None) is not None

    def __len__(self) -> int:
        return len(self._objects)


class Renderer:
    """Frames on one render thread, at most `max_pending` in flight."""

    def __init__(self, objects: ObjectStore, limits: Limits):
        self.objects = objects
        self.limits = limits
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pointillist-render")
        self._pending = 0
        self._lock = threading.Lock()

    async def render(self, request: RenderRequest) -> tuple[bytes | memoryview, str, dict[str, float]]:
        """(body, media type, seconds per step: "skin", "rasterize", "output") for one frame, on the render thread."""
        import asyncio

        with self._lock:
            if self._pending >= self.limits.max_pending_renders:
                raise ApiError("render_busy", f"{self._pending} renders are in flight; retry shortly",
                               headers={"Retry-After": "1"})
            self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self.render_now, request)
        finally:
            with self._lock:
                self._pending -= 1

    def render_now(self, request: RenderRequest) -> tuple[bytes | memoryview, str, dict[str, float]]:
        """(body, media type, seconds per step) for one frame: "skin" (rotations of skinned objects from their
        bones), "rasterize" (gathering the objects and the rasterizer) and "output" (the pixels into the
        response: film conversion, raw copy or PNG)."""
        import torch

        from ..render.rasterize import quat_to_rotmat, rasterize

        found, missing = [], []
        for obj in request.objects:
            static = self.objects.get(obj.object_id)
            (missing if static is None else found).append((obj, static))
        if missing:
            names = ", ".join(repr(o.object_id) for o, _ in missing[:8])
            raise ApiError("unknown_object", f"object(s) {names} are not registered; register them with "
                                             f"PUT /v1/objects/{{object_id}} and send the frame again")
        for obj, static in found:
            if obj.means.shape[0] != static["count"]:
                raise ApiError("count_mismatch", f"object {obj.object_id!r}: the frame has {obj.means.shape[0]} "
                                                 f"Gaussians, the registered object {static['count']}")
            if obj.bones is not None and (static["skin"] is None or len(obj.bones) != static["skin"]["weights"].shape[1]):
                bones = 0 if static["skin"] is None else static["skin"]["weights"].shape[1]
                raise ApiError("count_mismatch", f"object {obj.object_id!r}: the frame sends {len(obj.bones)} bone "
                                                 f"rotations, the registered object has {bones} bones")
        t_skin = time.perf_counter()
        posed_quats = [torch.from_numpy(skin_quaternions(static["skin"]["weights"], static["skin"]["index"],
                                                         static["skin"]["rest_quats"], obj.bones, obj.post))
                       if obj.bones is not None else torch.from_numpy(obj.quats) for obj, static in found]
        t0 = time.perf_counter()
        device = self.objects.device
        use_sh = any(s["sh"] is not None for _, s in found)
        degree = max((s["sh_degree"] for _, s in found), default=0) if use_sh else 0
        k = (degree + 1) ** 2
        means, quats, scales, opacities, colours, frames = [], [], [], [], [], []
        any_frames = False
        for (obj, static), q in zip(found, posed_quats):
            m = torch.from_numpy(obj.means).to(device)
            q = q.to(device)
            means.append(m)
            quats.append(q)
            scales.append(static["scales"])
            opacities.append(static["opacities"])
            n = static["count"]
            if use_sh:
                if static["sh"] is not None:
                    sh = static["sh"]
                else:  # an RGB object among SH ones: its colour as a DC coefficient
                    from ..render.sh import SH_C0

                    sh = ((static["colors"] - 0.5) / SH_C0)[:, None, :]
                if sh.shape[1] < k:
                    sh = torch.cat([sh, sh.new_zeros(n, k - sh.shape[1], 3)], dim=1)
                colours.append(sh)
                if static["rest"] is not None:
                    frame = quat_to_rotmat(torch.nn.functional.normalize(q, dim=-1)) @ static["rest"].transpose(1, 2)
                    any_frames = True
                else:
                    frame = torch.eye(3, device=device).expand(n, 3, 3)
                frames.append(frame)
            else:
                colours.append(static["colors"])
        with torch.no_grad():
            out = rasterize(torch.cat(means), torch.cat(quats), torch.cat(scales), torch.cat(opacities),
                            colors=None if use_sh else torch.cat(colours),
                            sh=torch.cat(colours) if use_sh else None, sh_degree=degree if use_sh else None,
                            sh_frames=torch.cat(frames) if (use_sh and any_frames) else None,
                            viewmat=torch.from_numpy(request.viewmat.astype(np.float32)).to(device),
                            K=torch.from_numpy(request.K.astype(np.float32)).to(device),
                            width=request.width, height=request.height,
                            background=torch.from_numpy(request.background).to(device),
                            near=request.near, far=request.far,
                            camera_model="ortho" if request.ortho else "pinhole")
        t1 = time.perf_counter()
        body, media_type = self._output(request, out)
        return body, media_type, {"skin": t0 - t_skin, "rasterize": t1 - t0, "output": time.perf_counter() - t1}

    @staticmethod
    def _output(request: RenderRequest, out) -> tuple[bytes | memoryview, str]:
        if request.raw and request.film:  # the covered block, converted while copied into the response buffer
            alpha = out.alpha.float().cpu().numpy()
            r0, r1, c0, c1 = covered_block(alpha)
            block = (c0, request.height - r1, c1 - c0, r1 - r0)  # film rows count from the bottom
            buffer, rgba_view, depth_view = film_image_buffer(
                request.width, request.height, block, empty_pixel(request.background, request.transparent),
                FAR_DEPTH, request.want_depth)
            film_passes(out.rgb[r0:r1, c0:c1].float().cpu().numpy(), alpha[r0:r1, c0:c1],
                        out.depth[r0:r1, c0:c1].float().cpu().numpy() if depth_view is not None else None,
                        request.transparent, rgba_view, depth_view)
            return memoryview(buffer), "application/octet-stream"
        if request.raw:  # written straight into the response buffer
            buffer, rgba_view, depth_view = raw_image_buffer(request.width, request.height, request.want_depth)
            rgba_view[..., :3] = out.rgb.float().cpu().numpy()
            rgba_view[..., 3] = out.alpha.float().cpu().numpy()
            if depth_view is not None:
                depth_view[...] = out.depth.float().cpu().numpy()
            return memoryview(buffer), "application/octet-stream"
        from PIL import Image

        rgba = np.concatenate([out.rgb.float().cpu().numpy(), out.alpha.float().cpu().numpy()[..., None]], axis=-1)
        pixels = (np.clip(rgba, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGBA").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue(), "image/png"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
