"""Portrait -> avatar: the one place that chains the stages (DESIGN §1).

understand (decode, landmarks, crop, matte) -> fit (head model) -> encode (image + head points) ->
generate (AR point tokens) -> decode (Gaussians) -> anchor (the fitted face's surface, the photo's colours
and their mirror: `anchor/`) -> refine (optional, photometric) -> bundle.

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
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .assets import asset_path
from .avatar.binding import closest_point_barycentrics
from .avatar.gaussians import Avatar, Binding, Gaussians, HeadIdentity, SourceInfo
from .completeness import COVERED_ALPHA, CompletenessCheck, Coverage, PortraitRegions, coverage
from .head.model import HeadModel

if TYPE_CHECKING:
    from .preprocess.portrait import PortraitInputs

DEFAULT_CHECKPOINT_NAME = "generator.safetensors"
MODEL_VERSION = "pointillist-generator/1"

#: quality preset -> (point budget, refine steps when the avatar is not anchored to the photo)
QUALITY = {"draft": (1024, 0), "standard": (2048, 40), "high": (3072, 150)}
#: side of the portrait-camera render the completeness check judges
CHECK_SIZE = 256
#: the last-resort points' spacing: the generator's training targets' (one point per 18 mm cell)
TEMPLATE_VOXEL_M = 0.018
STAGES = ("understand", "fit", "encode", "generate", "decode", "refine", "bundle")

Progress = Callable[[str, float], None]  # (stage, fraction of that stage done)


class Cancelled(Exception):
    """The caller asked to stop."""


class CreateError(ValueError):
    """Options, device or checkpoint that cannot make an avatar; the message says what to change."""


class IncompleteAvatar(CreateError):
    """No try made an avatar that passes the completeness check; nothing is returned or written."""


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
    anchor: bool = True  # face surface from the fit, colours from the photo and its mirror (anchor/)

    def validate(self) -> None:
        try:
            self._validate()
        except ValueError as exc:
            raise CreateError(str(exc)) from None

    def _validate(self) -> None:
        if self.quality not in QUALITY:
            raise ValueError(f"quality must be one of {sorted(QUALITY)}, got {self.quality!r}")
        if self.max_points is not None and not CompletenessCheck.min_points <= self.max_points <= 8192:
            raise ValueError(f"max_points must be between {CompletenessCheck.min_points} (fewer cannot make a "
                             f"complete head) and 8192")
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
        if not isinstance(self.anchor, bool):
            raise ValueError("anchor must be true or false")

    @property
    def budget(self) -> int:
        return self.max_points or QUALITY[self.quality][0]

    @property
    def steps(self) -> int:
        """Refinement steps: as asked, else none for an anchored avatar (its colours are the photo's already;
        refining them at the portrait camera measurably blurs them) and the preset's for the generator's own."""
        if self.refine_steps is not None:
            return self.refine_steps
        return 0 if self.anchor else QUALITY[self.quality][1]


@dataclass
class CreateResult:
    avatar: Avatar
    seconds: dict[str, float] = field(default_factory=dict)
    points: int = 0
    gaussians: int = 0
    warnings: list[str] = field(default_factory=list)
    fit_error_iod: float = 0.0
    coverage: Coverage | None = None  # of the portrait's face and head regions, at the portrait camera
    inputs: PortraitInputs | None = None  # the aligned crop, matte and landmarks it was made from

    def summary(self) -> dict:
        return {"points": self.points, "gaussians": self.gaussians, "warnings": self.warnings,
                "fit_error_iod": round(self.fit_error_iod, 4),
                "coverage": None if self.coverage is None else self.coverage.to_json(),
                "points_from": self.avatar.meta.get("points_from"),
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
                  cancelled: Callable[[], bool] | None = None,
                  check: CompletenessCheck = CompletenessCheck()) -> CreateResult:
    """Portrait -> avatar. The avatar passes `check` at the portrait camera or is not returned: when the
    sampled points fall short, they are sampled again (see `_attempts`) and a warning says how the
    returned avatar was made; when nothing passes, `IncompleteAvatar` says why."""
    from .compare import render_portrait_camera
    from .head.fit import fit_head
    from .model.point_encoder import SurfaceSampler
    from .model.portrait_probe import PortraitView, ray_probe_features
    from .model.sampling import Cancelled as SamplingCancelled
    from .model.sampling import SamplingOptions, generate
    from .model.silhouette import SilhouetteCarver
    from .model.silhouette_fill import fill_points
    from .model.teacher_forcing import teacher_forced_hidden
    from .model.template_points import template_points
    from .preprocess.landmarks import MAX_YAW_DEG
    from .preprocess.portrait import understand_portrait

    options.validate()
    report = progress or (lambda stage, frac: None)
    check_cancel = cancelled or (lambda: False)
    seconds: dict[str, float] = {}

    def stage(name: str):
        if check_cancel():
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
    verts = identity[0].numpy().astype(np.float64)
    sha = hashlib.sha256(portrait if isinstance(portrait, bytes) else Path(portrait).read_bytes()).hexdigest()
    source = SourceInfo(image=inputs.crop, matte=inputs.matte,
                        camera={"viewmat": fit.viewmat.tolist(), "K": fit.K.tolist(), "width": size, "height": size},
                        expression=fit.expression.astype(np.float32), pose=fit.pose.astype(np.float32))
    regions = PortraitRegions.from_portrait(inputs.landmarks, inputs.matte, inputs.photo, inputs.hands, size=CHECK_SIZE)
    meta = {"model_version": MODEL_VERSION, "creation_options": asdict(options), "source_sha256": sha,
            "checkpoint_info": {k: v for k, v in info.items() if k in ("name", "data", "ar", "decoder")}}

    def decoded(points: np.ndarray, hidden: torch.Tensor, binding: np.ndarray, extra: dict) -> Avatar:
        """The Gaussian decoder's avatar of these points (hidden (P, 4, d): their tokens' AR states)."""
        with torch.no_grad():
            out = model.decode(torch.as_tensor(points, device=device), hidden.to(device), binding, seen, head)
        k = model.config.decoder.gaussians_per_point
        g = Gaussians(means=out.means[0].cpu().numpy().astype(np.float32),
                      log_scales=out.log_scales[0].cpu().numpy().astype(np.float32),
                      quats=out.quats[0].cpu().numpy().astype(np.float32),
                      opacity_logits=out.opacity_logits[0].cpu().numpy().astype(np.float32),
                      sh_dc=out.sh_dc[0].cpu().numpy().astype(np.float32),
                      sh_rest=np.zeros((out.means.shape[1], 0, 3), dtype=np.float32))
        triangles = np.repeat(np.asarray(binding, dtype=np.int64), k)
        return Avatar(gaussians=g,
                      binding=Binding(triangles=triangles, barycentrics=closest_point_barycentrics(
                          g.means, verts[head.data.faces[triangles]]).astype(np.float32)),
                      identity=HeadIdentity(model_id=head.model_id, shape=fit.shape.astype(np.float32)),
                      source=source, meta={**meta, **extra})

    def judged(avatar: Avatar, points: int) -> tuple[np.ndarray, Coverage, list[str]]:
        """(alpha at the portrait camera, what it covers, what falls short of `check`)."""
        alpha = render_portrait_camera(avatar, head, CHECK_SIZE)[1]
        cover = coverage(alpha, regions)
        return alpha, cover, check.failures(cover, points)

    def teacher_forced(points: np.ndarray, binding: np.ndarray) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
        """Points we chose (not sampled), as the tokenizer orders them, with the transformer's hidden states."""
        enc = model.tokenizer.encode(points, binding)
        with torch.no_grad():
            return enc.points, teacher_forced_hidden(model, enc.tokens, cond), enc.binding

    warnings, attempts, best, decode_seconds = list(inputs.warnings), [], None, 0.0
    sampled_best = None  # (points, binding, coverage, alpha) of the sampled try that covers the most face
    for how, carve, seed in _attempts(options):
        t = time.perf_counter()
        if carve == "fill":  # the best sampled points + the photo's uncovered head and hair
            if sampled_best is None or sampled_best[2].face < check.face:
                continue  # filling hair around a face the points missed would not make a head
            base_points, base_binding, _, alpha = sampled_best
            extra_points, extra_binding = fill_points(seen, head, regions.head & (alpha < COVERED_ALPHA))
            if not len(extra_points):
                continue
            if len(extra_points) > options.budget:  # the budget bounds what is sampled and, apart, what is filled
                pick = np.linspace(0, len(extra_points) - 1, options.budget).round().astype(np.int64)
                extra_points, extra_binding = extra_points[pick], extra_binding[pick]
            points, hidden, binding = teacher_forced(np.concatenate([base_points, extra_points]),
                                                     np.concatenate([base_binding, extra_binding]))
            extra = {"points_from": "generator+silhouette_fill", "generated_points": int(len(base_points)),
                     "fill_points": int(len(extra_points)), "ended_by_model": False, "carved_points": 0}
        elif carve is None:  # the fitted head's own surface, teacher-forced through the transformer
            points, binding = template_points(head, fit.shape, TEMPLATE_VOXEL_M)
            if len(points) > options.budget:  # evenly over the head, not its lowest part
                pick = np.linspace(0, len(points) - 1, options.budget).round().astype(np.int64)
                points, binding = points[pick], binding[pick]
            points, hidden, binding = teacher_forced(points, binding)
            extra = {"points_from": "template", "generated_points": 0, "ended_by_model": False, "carved_points": 0}
        else:
            sampling = SamplingOptions(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                                       max_points=options.budget, seed=seed)
            carver = SilhouetteCarver(seen, head, photo=inputs.photo) if carve and seen.alpha is not None else None
            try:
                gen = generate(model.ar, model.tokenizer, cond, sampling,
                               progress=lambda n, total: report("generate", n / total), cancelled=check_cancel,
                               keep_point=carver)
            except SamplingCancelled:
                raise Cancelled("cancelled while generating points") from None
            points, hidden, binding = gen.points, gen.hidden, gen.binding
            extra = {"points_from": "generator", "seed": seed, "carved": carve, "generated_points": int(len(gen.binding)),
                     "ended_by_model": bool(gen.ended), "carved_points": int(gen.refused)}
        if len(binding):
            t_decode = time.perf_counter()
            avatar = decoded(points, hidden, binding, extra)
            alpha, cover, failures = judged(avatar, len(binding))
            decode_seconds += time.perf_counter() - t_decode
            if extra["points_from"] == "generator" and (sampled_best is None or cover.face > sampled_best[2].face):
                sampled_best = (points, binding, cover, alpha)
        else:
            avatar, cover, failures = None, Coverage(0.0, 0.0), ["no points at all"]
        attempts.append({"points": how, "seconds": round(time.perf_counter() - t, 3), "coverage": cover.to_json(),
                         "failures": failures})
        if not failures or best is None or (cover.face, cover.head) > (best[2].face, best[2].head):
            best = (avatar, len(binding), cover, failures, how)
        if not failures:
            break
        if check_cancel():
            raise Cancelled("cancelled while generating points")
    avatar, num_points, cover, failures, how = best
    if failures:
        preset = QUALITY[options.quality][0]
        budget = (f" or a point budget nearer the preset's {preset} (this run allowed {options.budget})"
                  if options.budget < preset else "")
        raise IncompleteAvatar(
            f"could not make a complete avatar of this portrait: the best of {len(attempts)} tries ({how}) fails "
            f"its completeness check at the portrait camera: {'; '.join(failures)}. Use a sharper, well-lit photo "
            f"with the whole head in view and the face turned less than {MAX_YAW_DEG:.0f}° from the camera{budget}")
    if len(attempts) > 1:
        first = attempts[0]
        warnings.append(f"the first sampled points did not make a complete avatar ({'; '.join(first['failures'])}); "
                        f"this avatar's points were {how}"
                        + {"template": " (the generator's points failed every try): hair beyond the scalp is missing",
                           "generator+silhouette_fill": ": the hair the generator left out is filled from the photo's "
                           "outline as a flat sheet, which turned views show"}.get(avatar.meta["points_from"], ""))
    avatar.meta.update({"completeness": {"coverage": cover.to_json(), "attempts": attempts}, "warnings": warnings})
    done("generate")
    seconds["generate"] -= decode_seconds  # each try's decoding and check were timed apart
    seconds["decode"] = decode_seconds
    if options.anchor:
        from .anchor import AnchorOptions, anchor_to_photo

        t = time.perf_counter()
        # the shape prior shortens the decoder's needles, and with them a little of the hair's outline: an
        # avatar at the edge of the check is anchored again without it before it is left unanchored
        for anchoring in (AnchorOptions(), AnchorOptions(shape_prior=False)):
            anchored = anchor_to_photo(avatar, head, photo=inputs.photo, hands=inputs.hands, options=anchoring)
            _, anchored_cover, anchored_failures = judged(anchored, num_points)
            if not anchored_failures:
                avatar, cover = anchored, anchored_cover
                avatar.meta["completeness"]["coverage"] = cover.to_json()
                break
        else:  # keep what passed rather than ship what does not
            warnings.append(f"anchoring to the photo left the avatar incomplete ({'; '.join(anchored_failures)}); "
                            f"the avatar keeps the generator's face and colours")
        seconds["anchor"] = time.perf_counter() - t
    report("decode", 1.0)

    stage("refine")
    if options.steps > 0:
        from .refine import refine_avatar

        refined = refine_avatar(avatar, head, options.steps, progress=lambda f: report("refine", f), cancelled=check_cancel)
        _, refined_cover, refined_failures = judged(refined, num_points)
        if refined_failures:  # keep what passed rather than ship what does not
            warnings.append(f"photometric refinement left the avatar incomplete ({'; '.join(refined_failures)}); "
                            f"the avatar is returned unrefined")
        else:
            avatar, cover = refined, refined_cover
            avatar.meta["completeness"]["coverage"] = cover.to_json()
    done("refine")
    return CreateResult(avatar=avatar, seconds=seconds, points=num_points, gaussians=avatar.gaussians.num,
                        warnings=warnings, fit_error_iod=fit.error_iod, coverage=cover, inputs=inputs)


def _attempts(options: CreateOptions) -> list[tuple[str, bool | str | None, int]]:
    """(how the points are made, carve ("fill": the best sampled try's points plus the photo's uncovered head
    and hair, `model/silhouette_fill.py`; None: the fitted head's surface), seed), tried in order until one
    passes the completeness check: as asked; without carving (the check that failed may be the matte's);
    another seed (a first point or an early run the sequence cannot undo); the best sampled points with the
    hair they left out filled from the photo's silhouette (long hair written short); the fitted head's
    surface (points that missed the face)."""
    plan = [("sampled by the generator", options.carve, options.seed)]
    if options.carve:
        plan.append(("sampled again without silhouette carving", False, options.seed))
    plan.append((f"sampled again with seed {options.seed + 1}", options.carve, options.seed + 1))
    plan.append(("the generator's points with the photo's silhouette filled", "fill", options.seed))
    plan.append(("the fitted head's surface, decoded by the generator", None, options.seed))
    return plan


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
