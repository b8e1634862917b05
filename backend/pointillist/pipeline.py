"""Portrait -> avatar: the one place that chains the stages (DESIGN §1).

understand (decode, landmarks, crop, matte) -> fit (head model) -> encode (image + head points) ->
generate (AR point tokens) -> decode (Gaussians) -> refine (optional, photometric) -> bundle.

`create_avatar` reports progress per stage through a callback and checks a cancel callback between
stages and inside AR decoding, so the CLI, the backend service and tests drive the same code.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .assets import asset_path
from .avatar.binding import closest_point_barycentrics
from .avatar.gaussians import Avatar, Binding, Gaussians, HeadIdentity, SourceInfo
from .head.model import HeadModel

DEFAULT_CHECKPOINT_NAME = "generator.safetensors"
MODEL_VERSION = "pointillist-generator/1"

#: quality preset -> (point budget, refine steps)
QUALITY = {"draft": (1024, 0), "standard": (2048, 40), "high": (3072, 150)}
STAGES = ("understand", "fit", "encode", "generate", "decode", "refine", "bundle")

Progress = Callable[[str, float], None]  # (stage, fraction of that stage done)


class Cancelled(Exception):
    """The caller asked to stop."""


class CreateError(ValueError):
    """Options, device or checkpoint that cannot make an avatar; the message says what to change."""


@dataclass
class CreateOptions:
    quality: str = "standard"
    checkpoint: str | None = None
    max_points: int | None = None  # default: the quality preset's
    temperature: float = 0.5
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    refine_steps: int | None = None  # default: the quality preset's
    device: str = "auto"
    carve: bool = True  # drop generated points outside the portrait's matte (model/silhouette.py)

    def validate(self) -> None:
        try:
            self._validate()
        except ValueError as exc:
            raise CreateError(str(exc)) from None

    def _validate(self) -> None:
        if self.quality not in QUALITY:
            raise ValueError(f"quality must be one of {sorted(QUALITY)}, got {self.quality!r}")
        if self.max_points is not None and not 1 <= self.max_points <= 8192:
            raise ValueError("max_points must be between 1 and 8192")
        if not 0 <= self.temperature <= 5:
            raise ValueError("temperature must be between 0 and 5")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.refine_steps is not None and not 0 <= self.refine_steps <= 5000:
            raise ValueError("refine_steps must be between 0 and 5000")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError("device must be auto, cpu or cuda")
        if not isinstance(self.carve, bool):
            raise ValueError("carve must be true or false")

    @property
    def budget(self) -> int:
        return self.max_points or QUALITY[self.quality][0]

    @property
    def steps(self) -> int:
        return QUALITY[self.quality][1] if self.refine_steps is None else self.refine_steps


@dataclass
class CreateResult:
    avatar: Avatar
    seconds: dict[str, float] = field(default_factory=dict)
    points: int = 0
    gaussians: int = 0
    warnings: list[str] = field(default_factory=list)
    fit_error_iod: float = 0.0

    def summary(self) -> dict:
        return {"points": self.points, "gaussians": self.gaussians, "warnings": self.warnings,
                "fit_error_iod": round(self.fit_error_iod, 4),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "total_seconds": round(sum(self.seconds.values()), 3)}


def resolve_device(device: str) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise CreateError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


_MODELS: dict[tuple[str, str], tuple] = {}


def load_model(checkpoint: str | os.PathLike | None, device: torch.device):
    """The generator (cached per file and device, so a service loads it once)."""
    from .model.checkpoint import load_generator

    path = Path(checkpoint) if checkpoint else asset_path(DEFAULT_CHECKPOINT_NAME)
    key = (str(path.resolve()), str(device))
    stat = path.stat().st_mtime_ns if path.exists() else None
    if key not in _MODELS or _MODELS[key][2] != stat:
        model, info = load_generator(path, device)
        _MODELS[key] = (model, info, stat)
    return _MODELS[key][0], _MODELS[key][1]


def create_avatar(portrait: str | os.PathLike | bytes, options: CreateOptions = CreateOptions(), *,
                  head: HeadModel | None = None, progress: Progress | None = None,
                  cancelled: Callable[[], bool] | None = None) -> CreateResult:
    from .head.fit import fit_head
    from .model.point_encoder import SurfaceSampler
    from .model.portrait_probe import PortraitView, ray_probe_features
    from .model.sampling import Cancelled as SamplingCancelled
    from .model.sampling import SamplingOptions, generate
    from .model.silhouette import SilhouetteCarver
    from .preprocess.portrait import understand_portrait

    options.validate()
    report = progress or (lambda stage, frac: None)
    check = cancelled or (lambda: False)
    seconds: dict[str, float] = {}

    def stage(name: str):
        if check():
            raise Cancelled(f"cancelled before {name}")
        report(name, 0.0)
        seconds[name] = time.perf_counter()

    def done(name: str):
        seconds[name] = time.perf_counter() - seconds[name]
        report(name, 1.0)

    device = resolve_device(options.device)
    model, info = load_model(options.checkpoint, device)  # a bad checkpoint fails before any work
    head = head or HeadModel.load()
    if model.config.tokenizer.num_faces != head.num_faces:
        raise CreateError(f"the checkpoint was trained for a head with {model.config.tokenizer.num_faces} triangles; "
                          f"head model {head.model_id!r} has {head.num_faces}: use a checkpoint trained on that head")

    stage("understand")
    inputs = understand_portrait(portrait)
    done("understand")

    stage("fit")
    size = inputs.crop.shape[0]
    fit = fit_head(inputs.landmarks, head, size, size)
    done("fit")

    stage("encode")
    torch.manual_seed(options.seed)
    S = model.config.image.image_size
    image = torch.as_tensor(np.array(inputs.crop)).permute(2, 0, 1)[None].float().div(255)
    image = F.interpolate(image, size=(S, S), mode="bilinear", antialias=True, align_corners=False).to(device)
    shape = torch.as_tensor(fit.shape, dtype=torch.float32)[None]
    seen = PortraitView.from_arrays(np.asarray(inputs.crop), fit.K, fit.viewmat, fit.shape, fit.pose, inputs.matte)
    with torch.no_grad():
        identity = head.identity_vertices(shape)
        sampler = SurfaceSampler(head.data, model.config.points.num_points, seed=0)
        head_points = sampler(identity)
        probe = ray_probe_features(head_points[0], sampler.face_index, seen, head)[None] if model.config.points.probe else None
        cond = model.condition(image, head_points.to(device), head_probe=None if probe is None else probe.to(device))
    done("encode")

    stage("generate")
    sampling = SamplingOptions(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                               max_points=options.budget, seed=options.seed)
    try:
        gen = generate(model.ar, model.tokenizer, cond, sampling,
                       progress=lambda n, total: report("generate", n / total), cancelled=check,
                       keep_point=SilhouetteCarver(seen, head) if options.carve and seen.alpha is not None else None)
    except SamplingCancelled:
        raise Cancelled("cancelled while generating points") from None
    done("generate")

    stage("decode")
    with torch.no_grad():
        out = model.decode(torch.as_tensor(gen.points, device=device), gen.hidden.to(device), gen.binding, seen, head)
    k = model.config.decoder.gaussians_per_point
    gaussians = Gaussians(
        means=out.means[0].cpu().numpy().astype(np.float32),
        log_scales=out.log_scales[0].cpu().numpy().astype(np.float32),
        quats=out.quats[0].cpu().numpy().astype(np.float32),
        opacity_logits=out.opacity_logits[0].cpu().numpy().astype(np.float32),
        sh_dc=out.sh_dc[0].cpu().numpy().astype(np.float32),
        sh_rest=np.zeros((out.means.shape[1], 0, 3), dtype=np.float32),
    )
    triangles = np.repeat(gen.binding, k)
    done("decode")

    verts = identity[0].numpy().astype(np.float64)
    faces = head.data.faces
    source = SourceInfo(image=inputs.crop, matte=inputs.matte,
                        camera={"viewmat": fit.viewmat.tolist(), "K": fit.K.tolist(), "width": size, "height": size},
                        expression=fit.expression.astype(np.float32), pose=fit.pose.astype(np.float32))
    sha = hashlib.sha256(portrait if isinstance(portrait, bytes) else Path(portrait).read_bytes()).hexdigest()
    avatar = Avatar(
        gaussians=gaussians,
        binding=Binding(triangles=triangles.astype(np.int64),
                        barycentrics=closest_point_barycentrics(gaussians.means, verts[faces[triangles]]).astype(np.float32)),
        identity=HeadIdentity(model_id=head.model_id, shape=fit.shape.astype(np.float32)),
        source=source,
        meta={"model_version": MODEL_VERSION, "creation_options": asdict(options), "source_sha256": sha,
              "checkpoint_info": {k: v for k, v in info.items() if k in ("name", "data", "ar", "decoder")},
              "generated_points": int(len(gen.binding)), "ended_by_model": bool(gen.ended),
              "carved_points": int(gen.refused)},
    )

    stage("refine")
    if options.steps > 0:
        from .refine import refine_avatar

        avatar = refine_avatar(avatar, head, options.steps, progress=lambda f: report("refine", f), cancelled=check)
    done("refine")
    return CreateResult(avatar=avatar, seconds=seconds, points=len(gen.binding), gaussians=gaussians.num,
                        warnings=list(inputs.warnings), fit_error_iod=fit.error_iod)


def create_bundle(portrait: str | os.PathLike, out: str | os.PathLike, options: CreateOptions = CreateOptions(), *,
                  overwrite: bool = False, head: HeadModel | None = None, progress: Progress | None = None,
                  cancelled: Callable[[], bool] | None = None) -> dict:
    """`pointillist create`: the avatar written as a bundle (atomically), with a front preview."""
    from .avatar.animate import AvatarAnimator
    from .avatar.bundle import write_bundle
    from .avatar.controls import FaceControls
    from .preview import ViewSpec, render_frame

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (use --overwrite to replace it)")
    head = head or HeadModel.load()
    result = create_avatar(portrait, options, head=head, progress=progress, cancelled=cancelled)
    start = time.perf_counter()
    if progress:
        progress("bundle", 0.0)
    preview = render_frame(AvatarAnimator(result.avatar, head), FaceControls(), ViewSpec(width=384, height=384))
    write_bundle(result.avatar, out, preview=preview, overwrite=overwrite)
    result.seconds["bundle"] = time.perf_counter() - start
    if progress:
        progress("bundle", 1.0)
    return {"bundle": str(out), **result.summary()}
