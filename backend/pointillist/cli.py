"""`pointillist …`: the command line.

Every command validates its inputs up front and reports problems as one `error: …` line with exit
code 2 (no traceback); outputs are written atomically.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, passive_openmp

if TYPE_CHECKING:  # heavy modules load inside the commands, so `--help` stays instant
    from .preview import ViewSpec

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


# ---------------------------------------------------------------------------------------- helpers
def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _size(text: str) -> int:
    value = _positive_int(text)
    if value > 8192:
        raise argparse.ArgumentTypeError("image sides are limited to 8192 px")
    return value


def _progress(desc: str):
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _load_head(path: str | None):
    from .head.model import HeadModel

    return HeadModel.load(path)


def _load_avatar_and_head(bundle: str, head_path: str | None):
    from .avatar.animate import AvatarAnimator
    from .avatar.bundle import read_bundle

    avatar = read_bundle(bundle)
    head = _load_head(head_path)
    if avatar.identity is not None and avatar.identity.model_id != head.model_id:
        raise CliError(
            f"{bundle} was made for head model {avatar.identity.model_id!r}; pass --head with that model's .npz "
            f"(the default is {head.model_id!r})"
        )
    return avatar, AvatarAnimator(avatar, head)


def _view_from_args(args) -> ViewSpec:
    from .preview import ViewSpec

    width, height = args.size
    return ViewSpec(yaw_deg=args.yaw, pitch_deg=args.pitch, width=width, height=height)


def _controls_from_args(args):
    from .avatar.controls import FaceControls, parse_expression_assignments

    return FaceControls(
        expressions=parse_expression_assignments(args.expr or []),
        jaw_deg=args.jaw,
        neck_yaw_deg=args.neck_yaw,
        neck_pitch_deg=args.neck_pitch,
        gaze_deg=tuple(args.gaze),
    )


# ---------------------------------------------------------------------------------------- commands
def cmd_synth(args) -> None:
    from .avatar.animate import AvatarAnimator
    from .avatar.bundle import write_bundle
    from .avatar.controls import FaceControls
    from .preview import ViewSpec, render_frame
    from .synth.procedural import make_procedural_avatar

    head = _load_head(args.head)
    avatar = make_procedural_avatar(args.seed, head, hair_style=args.style, beard=args.beard, density=args.density)
    preview = render_frame(AvatarAnimator(avatar, head), FaceControls(), ViewSpec(yaw_deg=25.0, width=384, height=384))
    write_bundle(avatar, args.output, preview=preview, overwrite=args.overwrite)
    print(json.dumps({"bundle": str(args.output), "gaussians": len(avatar.gaussians.means), **{k: avatar.meta.get(k) for k in ("hair_style", "beard", "seed")}}))


def cmd_render(args) -> None:
    from .preview import render_frame, save_png

    avatar, animator = _load_avatar_and_head(args.bundle, args.head)
    image = render_frame(animator, _controls_from_args(args), _view_from_args(args))
    save_png(image, args.output)
    print(json.dumps({"image": str(args.output), "size": list(args.size)}))


def cmd_preview(args) -> None:
    from .preview import save_gif, talk_frames, turntable_frames

    avatar, animator = _load_avatar_and_head(args.bundle, args.head)
    view = _view_from_args(args)
    if args.turntable:
        frames = turntable_frames(animator, view, frames=args.frames, progress=_progress("turntable"))
        fps = args.fps
    else:
        frames = talk_frames(animator, view, seconds=args.seconds, fps=args.fps, progress=_progress("talk"))
        fps = args.fps
    save_gif(frames, args.output, fps=fps)
    print(json.dumps({"gif": str(args.output), "frames": len(frames)}))


def cmd_fit(args) -> None:
    from .portrait_fit import fit_portrait

    summary = fit_portrait(args.portrait, args.output, head=_load_head(args.head), overwrite=args.overwrite)
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(summary))


def _stage_progress():
    """A tqdm bar per pipeline stage on stderr."""
    from tqdm import tqdm

    bars: dict = {}

    def update(stage: str, fraction: float) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=100, desc=f"{stage:>10}", unit="%", file=sys.stderr, leave=False,
                                     bar_format="{desc} {bar} {n:.0f}%", disable=None)  # None: off when not a TTY
        bar.n = round(100 * fraction)
        bar.refresh()
        if fraction >= 1.0:
            bar.close()

    return update


def _create_options(args):
    from .pipeline import CreateOptions

    options = CreateOptions(quality=args.quality, checkpoint=args.checkpoint, max_points=args.max_points,
                            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            refine_steps=args.refine_steps, device=args.device, carve=args.carve, anchor=args.anchor)
    options.validate()  # CreateError is a user error
    return options


def cmd_create(args) -> None:
    from .pipeline import create_bundle

    summary = create_bundle(args.portrait, args.output, _create_options(args), overwrite=args.overwrite,
                            head=_load_head(args.head), progress=_stage_progress())
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(summary))


def cmd_compare(args) -> None:
    from .compare import comparison_sheet
    from .preview import save_png

    avatar, animator = _load_avatar_and_head(args.bundle, args.head)
    save_png(comparison_sheet(avatar, animator.head, tile=args.tile), args.output)
    print(json.dumps({"image": str(args.output)}))


def cmd_train(args) -> None:
    from .model.config import MODEL_PRESETS
    from .train.distributed import DistContext, DistributedError
    from .train.train_generator import TrainConfig, Trainer

    torch_threads(args.threads)
    try:
        config = TrainConfig(stage=args.stage, data=args.data, output=args.output, init=args.init, steps=args.steps,
                             batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr, warmup=args.warmup, seed=args.seed,
                             save_every=args.save_every, log_every=args.log_every, sample_every=args.sample_every,
                             render_size=args.render_size, dinov2_weights=args.dinov2_weights,
                             head_dropout=args.head_dropout, decoder_probe=args.decoder_probe, head_probe=args.head_probe, ray_weight=args.ray_weight, ar_weight=args.ar_weight, decoder_weight=args.decoder_weight,
                             precision=args.precision, device=args.device, tensorboard=args.tensorboard,
                             dist_timeout_s=args.dist_timeout, model=MODEL_PRESETS[args.model_size],
                             shard_roots=list(args.shard_root or []), shard_cache=args.shard_cache,
                             generated_points=list(args.generated_points or []), generated_fraction=args.generated_fraction)
        # under torchrun this joins the process group (gloo on CPU, NCCL on CUDA); alone it is one process
        dist = DistContext.from_env(config.device, config.dist_timeout_s)
    except ValueError as exc:  # a bad option value: the message names it
        raise CliError(str(exc)) from None
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if dist.is_main else (lambda line: None)
    try:
        trainer = Trainer(config, head=_load_head(args.head), log=log, dist=dist)
    except (ValueError, DistributedError) as exc:  # data, --init, stage or rank-agreement problems (DatasetError is a ValueError)
        dist.close()  # every rank checks these the same way, so every rank leaves here
        raise CliError(str(exc)) from None
    trainer.run()
    # Leave the group together and only after success: a rank that tore gloo down while rank 0 still wrote the
    # checkpoint aborted in gloo's shutdown ("terminate called without an active exception") and failed a run
    # that had finished; after an error, a collective teardown could wait on a rank that is gone (torchrun
    # stops the others instead). The DDP wrapper holds the group and its reducer's pending work: free it
    # first, so the group is really gone before the interpreter starts tearing things down.
    dist.barrier()
    del trainer
    gc.collect()
    dist.close()
    if dist.is_main:
        print(json.dumps({"checkpoint": args.output}))


def cmd_serve(args) -> None:
    from .server.main import run_serve

    code = run_serve(args)
    if code:
        raise SystemExit(code)


def cmd_evaluate(args) -> None:
    from .train.evaluate import EvalConfig, EvalError, evaluate_many, json_safe, markdown, write_outputs

    torch_threads(args.threads)
    paths, names = [], []
    for item in args.checkpoint:  # PATH or NAME=PATH (the name heads the table's column)
        name, sep, path = item.partition("=")
        if sep and not Path(item).exists():
            paths.append(path)
            names.append(name)
        else:
            paths.append(item)
            names.append("")
    for path in paths:
        if not Path(path).is_file():
            raise CliError(f"checkpoint {path} not found")
    config = EvalConfig(checkpoint=paths[0], data=args.data, split=args.split, subjects=args.subjects,
                        max_points=args.max_points, temperature=args.temperature, carve=args.carve, render_size=args.render_size,
                        seed=args.seed, reenact_size=args.reenact_size, frames=args.frames, sheet_tile=args.sheet_tile,
                        names=names if any(names) else [])
    if config.names:
        config.names = [n or Path(p).stem for n, p in zip(names, paths)]
    try:
        result = evaluate_many(paths, config, head=_load_head(args.head),
                               log=lambda line: print(line, file=sys.stderr, flush=True))
        written = write_outputs(result, args.output) if args.output else []
    except EvalError as exc:
        raise CliError(str(exc)) from None
    print(markdown(result.summary), file=sys.stderr)
    brief = {k: v for k, v in result.summary.items() if k != "checkpoints"}
    brief["checkpoints"] = [{k: v for k, v in c.items() if k != "rows"} for c in result.summary["checkpoints"]]
    brief["outputs"] = [str(p) for p in written]
    print(json.dumps(json_safe(brief)))


def cmd_checkpoint_pack(args) -> None:
    from .model.checkpoint import load_generator, save_generator

    model, info = load_generator(args.checkpoint)
    if args.name:
        info["name"] = args.name
    save_generator(args.output, model, info, dtype=torch_dtype(args.dtype))
    print(json.dumps({"checkpoint": str(args.output), "bytes": Path(args.output).stat().st_size, **model.parameter_counts()}))


def cmd_checkpoint_info(args) -> None:
    from .model.checkpoint import read_generator_info

    config, info = read_generator_info(args.checkpoint)
    print(json.dumps({"config": config.to_json(), "info": info}, indent=1))


def cmd_train_curves(args) -> None:
    from .preview import save_png
    from .train.curves import loss_curves

    save_png(loss_curves(args.logs), args.output)
    print(json.dumps({"image": str(args.output)}))


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16}[name]


def torch_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_head_contact_sheet(args) -> None:
    import numpy as np

    from .head.contact_sheet import contact_sheet
    from .preview import save_png

    sheet = contact_sheet(_load_head(args.head), tile=args.tile)
    save_png(np.asarray(sheet), args.output)
    print(json.dumps({"image": str(args.output)}))


def cmd_head_import_flame(args) -> None:
    from .head.flame import import_flame

    data = import_flame(args.pkl, args.output, landmarks=args.landmarks)
    print(json.dumps({"head": str(args.output), "model_id": data.model_id, "vertices": data.num_vertices, "faces": data.num_faces,
                      "landmark_calibration": data.meta.get("landmark_calibration")}))


def cmd_head_calibrate_landmarks(args) -> None:
    from .head.data import HeadModelData
    from .head.landmark_calibration import with_calibrated_landmarks

    data, calibration = with_calibrated_landmarks(HeadModelData.load(args.head))
    data.save(args.output or args.head)
    print(json.dumps({"head": str(args.output or args.head), **calibration.report()}))


def cmd_head_build_template(args) -> None:
    from .head.build_template import main as build

    data = build(args.output)
    print(json.dumps({"head": str(args.output), "vertices": data.num_vertices, "faces": data.num_faces,
                      "shape_components": data.num_shape, "expressions": data.num_expr}))


def cmd_export(args) -> None:
    from .export.blender_export import BLENDER_FORMATS

    if args.format in BLENDER_FORMATS:
        _export_with_blender(args)
        return
    from .export.formats import ExportRequest, check_output, export_avatar
    from .export.gaussian_avatars_export import is_flame
    from .export.motion import FrameRange, load_motion
    from .export.posing import FramePose

    controls_given = bool(args.expr) or any((args.jaw, args.neck_yaw, args.neck_pitch, *args.gaze))
    if args.frame is not None and controls_given:
        raise CliError("--frame poses from the motion; it cannot be combined with --expr/--jaw/--neck-*/--gaze")
    if args.frames and args.format not in ("ply-seq", "glb"):
        raise CliError(f"--frames applies to ply-seq and glb (an animation clip), not {args.format}")
    if args.format == "ply-seq" and (args.frame is not None or controls_given):
        raise CliError("ply-seq poses every frame from --motion; use --frames FIRST:LAST, not --frame or pose options")
    frames = FrameRange.parse(args.frames) if args.frames else None
    check_output(args.output, args.format, args.overwrite)
    avatar, animator = _load_avatar_and_head(args.bundle, args.head)
    head = animator.head
    names = list(head.expr_names)
    motion = None
    if args.format == "ply-seq" or args.frame is not None or args.frames or args.motion != "talk":
        motion = load_motion(args.motion, names, is_flame(head), args.fps)
    frame = None
    if args.frame is not None:
        frame = motion.frame(args.frame)
    elif controls_given:
        frame = FramePose.from_controls(_controls_from_args(args), names)
    clip = motion if (args.format == "ply-seq" or args.frames) else None
    request = ExportRequest(args.format, Path(args.output), frame=frame, motion=clip, frames=frames)
    paths = export_avatar(avatar, head, request, progress=_progress("export"))
    print(json.dumps({"format": args.format, "output": str(args.output), "files": len(paths),
                      "bytes": sum(p.stat().st_size for p in paths)}))


def _export_with_blender(args) -> None:
    """fbx/usd: Blender's exporters in a bpy subprocess, on the add-on's import of the bundle (rest, or blink-and-talk
    keyed over --frames)."""
    from .export.blender_export import export_with_blender, parse_frames
    from .export.formats import check_output

    controls_given = bool(args.expr) or any((args.jaw, args.neck_yaw, args.neck_pitch, *args.gaze))
    if args.frame is not None or controls_given or args.motion != "talk":
        raise CliError(f"{args.format} exports the rig at rest, or with --frames FIRST:LAST the add-on's blink-and-talk "
                       "clip; --frame, --motion and pose options apply to ply and glb")
    frames = parse_frames(args.frames) if args.frames else None
    check_output(args.output, args.format, args.overwrite)
    summary = export_with_blender(args.bundle, args.format, args.output, frames=frames, fps=args.fps or 24.0,
                                  head_model=args.head)
    print(json.dumps({"format": args.format, "output": str(args.output), "files": 1, "bytes": summary["bytes"],
                      "blender": summary["blender"], "frames": summary["frames"]}))


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(Path(args.output), quick=args.quick)


# ---------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointillist", description="Portrait → animatable Gaussian-splat head avatars.")
    parser.add_argument("--version", action="version", version=f"pointillist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def head_option(p):
        p.add_argument("--head", metavar="NPZ", help="head model .npz (default: the bundled procedural head)")

    def pose_options(p):
        p.add_argument("--expr", "--expression", dest="expr", action="append", metavar="NAME=VALUE",
                       help="expression weight, repeatable (e.g. mouthSmileLeft=0.8, jawOpen=0.5)")
        p.add_argument("--jaw", type=float, default=0.0, metavar="DEG", help="jaw opening")
        p.add_argument("--neck-yaw", type=float, default=0.0, metavar="DEG", help="head turn toward the subject's left")
        p.add_argument("--neck-pitch", type=float, default=0.0, metavar="DEG", help="head nod down")
        p.add_argument("--gaze", type=float, nargs=2, default=[0.0, 0.0], metavar=("X", "Y"), help="eye rotation in degrees: toward the subject's left, up")

    def view_options(p, default_size=512):
        p.add_argument("--yaw", type=float, default=0.0, metavar="DEG", help="camera orbit toward the subject's left")
        p.add_argument("--pitch", type=float, default=0.0, metavar="DEG", help="camera orbit upward")
        p.add_argument("--size", type=_size, nargs=2, default=[default_size, default_size], metavar=("W", "H"))

    p = sub.add_parser("demo", help="the main job on the bundled default: avatars, renders, previews, contact sheet")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--quick", action="store_true", help="fewer, smaller frames (for tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="make a procedural, rigged avatar bundle")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="bundle folder, or a path ending in .zip")
    p.add_argument("--style", choices=["bald", "short", "long", "bun", "curly"], help="hair style (default: from the seed)")
    beard = p.add_mutually_exclusive_group()
    beard.add_argument("--beard", dest="beard", action="store_true", default=None)
    beard.add_argument("--no-beard", dest="beard", action="store_false")
    p.add_argument("--density", type=float, default=1.0, help="scale the number of Gaussians (default 1.0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    head_option(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("create", help="portrait -> rigged Gaussian avatar bundle (the generator)")
    p.add_argument("portrait", metavar="PORTRAIT", help="JPEG, PNG, WebP, TIFF or BMP")
    p.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="bundle folder, or a path ending in .zip")
    p.add_argument("--quality", choices=["draft", "standard", "high"], default="standard",
                   help="point budget and refine steps: draft 1024/0, standard 2048/40, high 3072/150")
    p.add_argument("--checkpoint", metavar="SAFETENSORS", help="generator weights (default: blender_assets/generator.safetensors)")
    p.add_argument("--max-points", type=int, metavar="N", help="AR point budget (overrides the preset)")
    p.add_argument("--temperature", type=float, default=0.5, help="AR sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refine-steps", type=int, metavar="N",
                   help="photometric refinement steps (default: none for an anchored avatar, else the preset's)")
    p.add_argument("--carve", action=argparse.BooleanOptionalAction, default=True,
                   help="drop generated points that land outside the person's matte in the portrait (default on)")
    p.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=True,
                   help="lay the face on the fitted head and colour what the photo sees from the photo, the hidden "
                        "side from its mirror (default on; --no-anchor: the generator's Gaussians and colours)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    head_option(p)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("compare", help="aligned input beside front and three-quarter renders of a bundle")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("-o", "--output", required=True, metavar="PNG")
    p.add_argument("--tile", type=_size, default=256)
    head_option(p)
    p.set_defaults(func=cmd_compare)

    from .train.dataset_cli import add_dataset_commands
    from .train.real_data_cli import add_real_data_commands

    add_real_data_commands(add_dataset_commands(sub))

    ckpt = sub.add_parser("checkpoint", help="generator checkpoint tools").add_subparsers(dest="checkpoint_command", required=True, metavar="SUBCOMMAND")
    p = ckpt.add_parser("pack", help="rewrite a checkpoint for shipping (float16 halves it; loads as float32)")
    p.add_argument("checkpoint", metavar="SAFETENSORS")
    p.add_argument("-o", "--output", required=True, metavar="SAFETENSORS")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--name", help="a name stored in the checkpoint's info")
    p.set_defaults(func=cmd_checkpoint_pack)
    p = ckpt.add_parser("info", help="print a checkpoint's config and training info")
    p.add_argument("checkpoint", metavar="SAFETENSORS")
    p.set_defaults(func=cmd_checkpoint_info)
    p = ckpt.add_parser("curves", help="loss curves (PNG) from training logs (<checkpoint>.log.csv)")
    p.add_argument("logs", nargs="+", metavar="CSV")
    p.add_argument("-o", "--output", required=True, metavar="PNG")
    p.set_defaults(func=cmd_train_curves)

    p = sub.add_parser("eval", aliases=["evaluate"],
                       help="held-out metrics of one or more generator checkpoints side by side: novel-view PSNR/SSIM, "
                            "reenactment AKD, Chamfer, binding accuracy, point counts per hair style, AR loss; contact sheet")
    p.add_argument("--checkpoint", required=True, action="append", metavar="[NAME=]SAFETENSORS",
                   help="repeatable: one table column per checkpoint (NAME heads the column; default the file stem)")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--split", choices=["heldout", "train"], default="heldout")
    p.add_argument("--subjects", type=_positive_int, default=10, help="balanced across hair styles")
    p.add_argument("--max-points", type=_positive_int, default=2048)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--carve", action=argparse.BooleanOptionalAction, default=True,
                   help="silhouette carving while sampling, as create does (--no-carve: the transformer's points as written)")
    p.add_argument("--seed", type=int, default=0, help="subject choice and sampling (per subject: seed + id)")
    p.add_argument("--render-size", type=_size, default=128, help="novel-view PSNR/SSIM resolution")
    p.add_argument("--reenact-size", type=_size, default=512, help="AKD render size (pixels)")
    p.add_argument("--frames", type=int, default=5, help="driving frames per subject for AKD (0..5)")
    p.add_argument("--sheet-tile", type=_size, default=128, help="contact sheet tile side")
    p.add_argument("--threads", type=int)
    p.add_argument("-o", "--output", metavar="PREFIX", help="write PREFIX.json, PREFIX.md (table) and PREFIX.png (contact sheet)")
    head_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the generator: `encoder` (image encoder pre-training), `ar`, then `decoder` or "
                                     "`joint` (resumes where it stopped; runs under torchrun for DDP)")
    p.add_argument("stage", choices=["encoder", "ar", "decoder", "joint"])
    p.add_argument("--data", required=True, metavar="DIR", help="a dataset from `pointillist dataset build`")
    p.add_argument("-o", "--output", required=True, metavar="SAFETENSORS", help="checkpoint; its .train/.log.csv/.tb/.samples sidecars sit beside it")
    p.add_argument("--init", metavar="SAFETENSORS", help="start from this checkpoint (the decoder stage needs the AR one)")
    p.add_argument("--model-size", choices=["tiny", "cpu", "base"], default="cpu")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4, help="subjects per process and micro-batch")
    p.add_argument("--accumulate", type=int, default=1, metavar="N",
                   help="micro-batches per optimizer step (effective batch = batch size x N x processes)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=50, metavar="STEPS", help="linear learning-rate warm-up, then cosine decay to lr/10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--sample-every", type=int, default=0, metavar="N",
                   help="every N steps write <output>.samples/step_N.png: a held-out subject's view | its decoded avatar")
    p.add_argument("--render-size", type=int, default=64, help="decoder/joint stage: training render size (pixels)")
    p.add_argument("--ar-weight", type=float, default=1.0, help="joint stage: weight of the AR cross-entropy")
    p.add_argument("--decoder-weight", type=float, default=1.0, help="joint stage: weight of the decoder loss")
    p.add_argument("--decoder-probe", action="store_true",
                   help="decoder/joint stage: give the Gaussian decoder the portrait's pixels under each point "
                        "(an --init checkpoint without it gets the input added, its other weights kept)")
    p.add_argument("--head-probe", action="store_true",
                   help="ar/joint stage: let the head-point tokens read the portrait's matte and colour along rays out "
                        "of the fitted head (an --init checkpoint without it gets the input added, its other weights kept)")
    p.add_argument("--ray-weight", type=float, default=0.5,
                   help="ar/joint stage with --head-probe: weight of the head tokens' ray-occupancy loss (0: off)")
    p.add_argument("--head-dropout", type=float, default=0.0, metavar="P",
                   help="ar/joint stage: hide the fitted head's tokens from a sample with probability P, so the "
                        "transformer learns to read the portrait")
    p.add_argument("--generated-points", action="append", metavar="NPZ",
                   help="decoder stage: the AR model's own sequences (`pointillist dataset sample-points`, repeatable); "
                        "trains on those subjects, decoding their own points with probability --generated-fraction")
    p.add_argument("--generated-fraction", type=float, default=0.5, metavar="P",
                   help="decoder stage with --generated-points: share of those subjects' samples decoded from them")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: bf16 autocast on a CUDA GPU that supports it, fp32 on CPU; fp16 uses a loss scaler")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available (GPU LOCAL_RANK under torchrun)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="CSV log only, no <output>.tb/ event files")
    p.add_argument("--shard-root", action="append", metavar="DIR|URL",
                   help="another place the dataset's shards live (repeatable; searched after DIR): a disk, or an "
                        "http(s) host whose downloads are checked against index.json and kept in --shard-cache")
    p.add_argument("--shard-cache", metavar="DIR", help="where shards from http(s) roots are kept")
    p.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                   help="under torchrun: fail instead of waiting longer than S seconds for another rank")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--dinov2-weights", metavar="PTH", help="Meta's DINOv2 ViT-S/B/L 14 weights: start the image encoder from them, frozen")
    head_option(p)
    p.set_defaults(func=cmd_train)

    from .server.main import add_serve_arguments  # stdlib-only; torch and fastapi load inside run_serve

    p = sub.add_parser("serve", help="the backend service the Blender add-on talks to (HTTP on loopback)")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("fit", help="detect, align, matte and fit the head model to a portrait")
    p.add_argument("portrait", metavar="PORTRAIT", help="JPEG, PNG, WebP, TIFF or BMP")
    p.add_argument("-o", "--output", required=True, metavar="FIT_DIR", help="writes crop.png, matte.png, fit.json, overlay.png")
    p.add_argument("--overwrite", action="store_true", help="replace files in an existing FIT_DIR")
    head_option(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("render", help="render a posed avatar to a PNG")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("-o", "--output", required=True, metavar="PNG")
    pose_options(p)
    view_options(p)
    head_option(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("preview", help="animated GIF: turntable or talking")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("-o", "--output", required=True, metavar="GIF")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--turntable", action="store_true")
    mode.add_argument("--talk", action="store_true", help="a few seconds of speech-like jaw, blinks and smiles")
    p.add_argument("--frames", type=_positive_int, default=36, help="turntable frames")
    p.add_argument("--seconds", type=float, default=3.0, help="talk length")
    p.add_argument("--fps", type=float, default=15.0)
    view_options(p, default_size=384)
    head_option(p)
    p.set_defaults(func=cmd_preview)

    from .export.blender_export import BLENDER_FORMATS  # stdlib-only too
    from .export.names import FORMATS  # stdlib-only, so --help stays instant

    p = sub.add_parser("export", help="write a bundle as PLY, a PLY sequence, glTF (GLB), GaussianAvatars, FBX or USD files",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="formats:\n" + "\n".join(f"  {k:<16} {v}" for k, v in {**FORMATS, **BLENDER_FORMATS}.items()))
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--format", required=True, choices=[*FORMATS, *BLENDER_FORMATS])
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="a file (ply, glb) or a folder (ply-seq, gaussianavatars)")
    p.add_argument("--frame", type=_positive_int, metavar="N", help="pose at frame N of --motion (ply, glb)")
    p.add_argument("--frames", metavar="FIRST:LAST", help="frame range, 1-based inclusive: ply-seq files, a glb animation clip, or fbx/usd with blink-and-talk keyed")
    p.add_argument("--motion", default="talk", metavar="talk|JSON|NPZ",
                   help="built-in 'talk' (default), FaceControls JSON ({\"fps\", \"frames\": [...]}) or FLAME parameters .npz")
    p.add_argument("--fps", type=float, metavar="FPS", help="frames per second (default: the motion file's, else 25)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    pose_options(p)
    head_option(p)
    p.set_defaults(func=cmd_export)

    head = sub.add_parser("head", help="head model tools").add_subparsers(dest="head_command", required=True, metavar="SUBCOMMAND")
    p = head.add_parser("contact-sheet", help="one render per expression, to judge the blendshapes")
    p.add_argument("-o", "--output", required=True, metavar="PNG")
    p.add_argument("--tile", type=_size, default=256)
    head_option(p)
    p.set_defaults(func=cmd_head_contact_sheet)
    p = head.add_parser("import-flame", help="convert a FLAME 2020/2023 .pkl once into our .npz (no pickle at run time)")
    p.add_argument("pkl", metavar="FLAME.pkl")
    p.add_argument("-o", "--output", required=True, metavar="NPZ")
    p.add_argument("--no-landmarks", dest="landmarks", action="store_false",
                   help="skip measuring the MediaPipe landmark mapping (run `head calibrate-landmarks` later)")
    p.set_defaults(func=cmd_head_import_flame)
    p = head.add_parser("calibrate-landmarks", help="measure where MediaPipe's 478 landmarks sit on a head model (~10 s)")
    p.add_argument("head", metavar="NPZ")
    p.add_argument("-o", "--output", metavar="NPZ", help="write here instead of updating NPZ in place (atomically)")
    p.set_defaults(func=cmd_head_calibrate_landmarks)
    p = head.add_parser("build-template", help="regenerate the procedural head template (needs the build extras)")
    p.add_argument("-o", "--output", required=True, metavar="NPZ")
    p.set_defaults(func=cmd_head_build_template)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from .avatar.controls import ControlError
    from .head.data import HeadModelError

    errors: list[type[BaseException]] = [CliError, HeadModelError, ControlError, FileNotFoundError, IsADirectoryError, FileExistsError]
    from .avatar.gaussians import AvatarFormatError
    from .head.landmark_calibration import CalibrationError

    from .model.image_encoder import CheckpointError

    from .pipeline import CreateError
    from .train.dataset import DatasetError

    from .export.errors import ExportError

    errors += [AvatarFormatError, CalibrationError, CheckpointError, DatasetError, CreateError, ExportError]
    try:
        from .preprocess.decode import PortraitError

        errors.append(PortraitError)
    except ImportError:  # portrait understanding not installed in this build
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    passive_openmp()  # before any command imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        args.func(args)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run rather than one per process
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
