"""The main job on the bundled default (`./dev demo` → `pointillist demo -o out/demo`).

Today: the head model's expression contact sheet, the bundled portrait fitted (crop, matte, fit, overlay),
the generator's avatar of that portrait (bundle, comparison sheet, turntable), procedural avatars in every
hair style, posed renders, animated previews, and the avatar opened in headless Blender with the add-on
(rigged, a blink-and-talk clip keyed, saved as out/demo/blender/avatar.blend, the clip rendered through the
"Gaussian Splats" engine into out/demo/blender/frames/, FBX/USD/glTF/PLY exports in out/demo/blender/exports/).
New stages append themselves to `STAGES`, so one command keeps running the whole product end to end.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .avatar.controls import FaceControls


@dataclass
class DemoContext:
    out: Path
    quick: bool
    results: dict = field(default_factory=dict)
    head: object = None
    main_bundle: Path | None = None

    def log(self, message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)


def stage_contact_sheet(ctx: DemoContext) -> None:
    from .head.contact_sheet import contact_sheet
    from .head.model import HeadModel
    from .preview import save_png

    ctx.head = HeadModel.load()
    path = ctx.out / "head_contact_sheet.png"
    save_png(np.asarray(contact_sheet(ctx.head, tile=160 if ctx.quick else 256)), path)
    ctx.results["contact_sheet"] = str(path)


DEMO_CAST = (("long", 1, False), ("short", 2, True), ("bald", 3, False), ("bun", 4, False), ("curly", 5, False))


def stage_avatars(ctx: DemoContext) -> None:
    from .avatar.animate import AvatarAnimator
    from .avatar.bundle import write_bundle
    from .preview import ViewSpec, render_frame
    from .synth.procedural import make_procedural_avatar

    cast = DEMO_CAST[:2] if ctx.quick else DEMO_CAST
    counts = {}
    for style, seed, beard in cast:
        avatar = make_procedural_avatar(seed, ctx.head, hair_style=style, beard=beard, density=0.25 if ctx.quick else 1.0)
        view = ViewSpec(yaw_deg=25.0, width=256 if ctx.quick else 384, height=256 if ctx.quick else 384)
        preview = render_frame(AvatarAnimator(avatar, ctx.head), FaceControls(), view)
        bundle = ctx.out / "avatars" / f"{style}-{seed}"
        write_bundle(avatar, bundle, preview=preview, overwrite=True)
        counts[f"{style}-{seed}"] = int(len(avatar.gaussians.means))
        ctx.log(f"avatar {style}-{seed}: {counts[f'{style}-{seed}']} Gaussians")
        if ctx.main_bundle is None:
            ctx.main_bundle = bundle
    ctx.results["avatars"] = counts


RENDER_POSES: tuple[tuple[str, float, float, FaceControls], ...] = (
    ("front", 0.0, 0.0, FaceControls()),
    ("three_quarter", 35.0, 5.0, FaceControls()),
    ("side", 90.0, 0.0, FaceControls()),
    ("back", 180.0, 10.0, FaceControls()),
    ("smile", 20.0, 0.0, FaceControls(expressions={"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0, "cheekSquintLeft": 0.5, "cheekSquintRight": 0.5})),
    ("jaw_open", 20.0, 0.0, FaceControls(jaw_deg=20.0, expressions={"browInnerUp": 0.6, "eyeWideLeft": 0.6, "eyeWideRight": 0.6})),
    ("wink", 20.0, 0.0, FaceControls(expressions={"eyeBlinkLeft": 1.0, "mouthSmileLeft": 0.6})),
    ("look_around", 0.0, 0.0, FaceControls(neck_yaw_deg=25.0, gaze_deg=(20.0, 8.0))),
)


def stage_renders(ctx: DemoContext) -> None:

    from .avatar.animate import AvatarAnimator
    from .avatar.bundle import read_bundle
    from .preview import ViewSpec, render_frame, save_png

    avatar = read_bundle(ctx.main_bundle)
    animator = AvatarAnimator(avatar, ctx.head)
    size = 256 if ctx.quick else 512
    tiles = []
    for name, yaw, pitch, controls in RENDER_POSES:
        image = render_frame(animator, controls, ViewSpec(yaw_deg=yaw, pitch_deg=pitch, width=size, height=size))
        save_png(image, ctx.out / "renders" / f"{name}.png")
        tiles.append(image)
    grid = np.concatenate([np.concatenate(tiles[:4], axis=1), np.concatenate(tiles[4:], axis=1)], axis=0)
    save_png(grid, ctx.out / "renders" / "overview.png")
    ctx.results["renders"] = [name for name, *_ in RENDER_POSES]


def stage_previews(ctx: DemoContext) -> None:
    from .avatar.animate import AvatarAnimator
    from .avatar.bundle import read_bundle
    from .preview import ViewSpec, save_gif, talk_frames, turntable_frames

    animator = AvatarAnimator(read_bundle(ctx.main_bundle), ctx.head)
    size = 192 if ctx.quick else 320
    view = ViewSpec(width=size, height=size)
    frames = turntable_frames(animator, view, frames=8 if ctx.quick else 36)
    save_gif(frames, ctx.out / "preview_turntable.gif", fps=12)
    talk = talk_frames(animator, ViewSpec(yaw_deg=15.0, width=size, height=size), seconds=1.0 if ctx.quick else 4.0, fps=12.5)
    save_gif(talk, ctx.out / "preview_talk.gif", fps=12.5)
    ctx.results["previews"] = ["preview_turntable.gif", "preview_talk.gif"]


def stage_portrait_fit(ctx: DemoContext) -> None:
    """The bundled default portrait: scikit-image's public-domain astronaut, fitted like any photo."""
    import skimage.data
    from PIL import Image

    from .atomic import atomic_write
    from .portrait_fit import fit_portrait

    portrait = ctx.out / "portrait.jpg"
    atomic_write(portrait, lambda fh: Image.fromarray(skimage.data.astronaut()).save(fh, format="JPEG", quality=95))
    summary = fit_portrait(portrait, ctx.out / "fit", head=ctx.head, overwrite=True)
    ctx.log(f"fit: {summary['error_iod'] * 100:.1f}% of the inter-ocular distance, head angles {summary['head_angles_deg']}")
    ctx.results["fit"] = {k: summary[k] for k in ("fit_dir", "error_px", "error_iod", "head_angles_deg")}


def stage_create(ctx: DemoContext) -> None:
    """The generator on the bundled portrait: bundle, comparison sheet and turntable in out/demo/create/."""
    from .avatar.animate import AvatarAnimator
    from .avatar.bundle import read_bundle
    from .compare import comparison_sheet
    from .pipeline import CreateOptions, create_bundle
    from .preview import ViewSpec, save_gif, save_png, turntable_frames

    out = ctx.out / "create"
    # draft's full budget: the generator writes from the neck up, so a few hundred points end at the chin and
    # `create` (rightly) refuses what they make
    options = CreateOptions(quality="draft", refine_steps=4) if ctx.quick else CreateOptions()
    summary = create_bundle(ctx.out / "portrait.jpg", out / "astronaut", options, overwrite=True, head=ctx.head)
    avatar = read_bundle(out / "astronaut")
    save_png(comparison_sheet(avatar, ctx.head, tile=192 if ctx.quick else 320), out / "compare.png")
    size = 192 if ctx.quick else 320
    frames = turntable_frames(AvatarAnimator(avatar, ctx.head), ViewSpec(width=size, height=size), frames=8 if ctx.quick else 36)
    save_gif(frames, out / "turntable.gif", fps=12)
    ctx.log(f"create: {summary['points']} points -> {summary['gaussians']} Gaussians in {summary['total_seconds']:.0f} s")
    ctx.results["create"] = {"bundle": str(out / "astronaut"), "compare": str(out / "compare.png"),
                             **{k: summary[k] for k in ("points", "gaussians", "seconds", "total_seconds")}}


def stage_blender(ctx: DemoContext) -> None:
    """The avatar in headless Blender with the add-on: rigged, blink-and-talk keyed, saved as a .blend, the
    clip rendered through the Gaussian Splats engine, FBX/USD/glTF/PLY exports beside it.

    Runs `pointillist.blender_scene` in a subprocess of this interpreter when it can import bpy (the
    `blender` extra), so bpy and torch never share a process; skipped with a note otherwise.
    """
    import importlib.util
    import os
    import subprocess
    import tempfile

    from .blender_scene import ROOT

    bundle = Path(ctx.results.get("create", {}).get("bundle") or ctx.main_bundle)
    if importlib.util.find_spec("bpy") is None or not (ROOT / "addon" / "__init__.py").is_file():
        ctx.log("blender: skipped (no bpy in this environment, or no add-on source beside the package)")
        ctx.results["blender"] = None
        return
    out = ctx.out / "blender" / "avatar.blend"
    env = {**os.environ, "BLENDER_USER_RESOURCES": os.environ.get("BLENDER_USER_RESOURCES") or tempfile.mkdtemp(prefix="pointillist-blender-")}
    options = ["--render-size", "256", "--frame-step", "12"] if ctx.quick else ["--render-size", "384"]
    proc = subprocess.run([sys.executable, "-m", "pointillist.blender_scene", str(bundle), str(out), *options],
                          capture_output=True, text=True, env=env, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"Blender scene failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    ctx.log(f"blender: {summary['points']} splats, {summary['shape_keys']} shape keys, blink-and-talk keyed on frames "
            f"{summary['frames'][0]}-{summary['frames'][1]} -> open {out}")
    ctx.log(f"blender: {len(summary.get('renders', []))} frames rendered through the Gaussian Splats engine in "
            f"{out.parent / 'frames'}; exports ({', '.join(summary['exports'])}) in {out.parent / 'exports'}")
    ctx.results["blender"] = summary


STAGES: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("head contact sheet", stage_contact_sheet),
    ("portrait fit", stage_portrait_fit),
    ("avatar from the portrait", stage_create),
    ("procedural avatars", stage_avatars),
    ("posed renders", stage_renders),
    ("animated previews", stage_previews),
    ("Blender scene", stage_blender),
]


def run_demo(out: Path, quick: bool = False) -> dict:
    ctx = DemoContext(out=out, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    for i, (name, stage) in enumerate(STAGES, 1):
        ctx.log(f"{i}/{len(STAGES)} {name}...")
        start = time.perf_counter()
        stage(ctx)
        timings[name] = round(time.perf_counter() - start, 2)
    ctx.results["seconds"] = timings
    from .atomic import atomic_write

    atomic_write(out / "summary.json", lambda fh: fh.write(json.dumps(ctx.results, indent=2).encode()))
    print(json.dumps({"demo": str(out), **ctx.results}))
    return ctx.results
