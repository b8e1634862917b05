"""Ablation: what each part of anchoring to the photo (`pointillist/anchor/`) does, on the same points.

Run: `.venv/bin/python benchmarks/bench_anchor.py DIR [DIR ...] -o OUT [--variants a,b,...] [--limit N]`.
Per image the generator runs once (`create_avatar` with anchoring and refinement off, the default quality
otherwise), and every variant finishes those same Gaussians, so a row differs from the next only by what
the variant adds:

* `generator`: the decoder's Gaussians and colours as they come;
* `generator+refine`: the same with the photometric refinement the standard preset ran before anchoring;
* `photo`: colours of what the portrait camera sees read from the photo (`projection.py`), nothing else;
* `photo+mirror`: and the hidden side from its mirror partner (`mirror.py`);
* `photo+mirror+layer`: and the face surface from the fit (`face_layer.py`);
* `photo+mirror+layer+spread`: and what neither the photo nor the mirror shows coloured from its seen
  neighbours (`photo_anchor.spread_colours`);
* `anchor`: and the shape prior on the decoder's Gaussians (`priors.py`): what `create` does;
* `anchor+refine`: anchoring followed by the photometric refinement.

Each variant is scored as `bench_portraits.py` scores `create` (face PSNR/SSIM at the portrait camera,
head coverage, SFace identity per view). Writes `OUT/results.json` (after every image; resumes),
`OUT/table.md` (median per folder and variant), `OUT/sheet_<variant>.png` and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_portraits import (VIEWS, fmt, identity_cells, identity_summary, images_in, median, row_image,  # noqa: E402
                             views_and_scores)

from pointillist.anchor import AnchorOptions, anchor_to_photo  # noqa: E402
from pointillist.atomic import atomic_write  # noqa: E402
from pointillist.compare import render_portrait_camera  # noqa: E402
from pointillist.completeness import PortraitRegions, coverage  # noqa: E402
from pointillist.head.model import HeadModel  # noqa: E402
from pointillist.identity import SAME_PERSON_COSINE, IdentityMeter  # noqa: E402
from pointillist.pipeline import CHECK_SIZE, QUALITY, CreateError, CreateOptions, create_avatar  # noqa: E402
from pointillist.preprocess.decode import PortraitError  # noqa: E402
from pointillist.preview import save_png  # noqa: E402
from pointillist.refine import refine_avatar  # noqa: E402

#: variant -> (anchor options or None, refine)
VARIANTS: dict[str, tuple[AnchorOptions | None, bool]] = {
    "generator": (None, False),
    "generator+refine": (None, True),
    "photo": (AnchorOptions(face_layer=False, mirror=False, spread=False, shape_prior=False), False),
    "photo+mirror": (AnchorOptions(face_layer=False, spread=False, shape_prior=False), False),
    "photo+mirror+layer": (AnchorOptions(spread=False, shape_prior=False), False),
    "photo+mirror+layer+spread": (AnchorOptions(shape_prior=False), False),
    "anchor": (AnchorOptions(), False),
    "anchor+refine": (AnchorOptions(), True),
}


def finish(variant: str, avatar, inputs, head: HeadModel, refine_steps: int):
    anchor, refine = VARIANTS[variant]
    if anchor is not None:
        avatar = anchor_to_photo(avatar, head, photo=inputs.photo, hands=inputs.hands, options=anchor)
    if refine:
        avatar = refine_avatar(avatar, head, refine_steps)
    return avatar


def measure(path: Path, variants: list[str], quality: str, head: HeadModel, meter: IdentityMeter, rows: dict) -> dict:
    record: dict = {"image": str(path), "folder": path.parent.name, "name": path.name}
    start = time.perf_counter()
    try:
        made = create_avatar(path, CreateOptions(quality=quality, anchor=False, refine_steps=0), head=head)
    except (PortraitError, CreateError) as exc:
        record.update(outcome="refused", message=str(exc))
        return record
    record.update(outcome="avatar", points=made.points, generate_seconds=round(time.perf_counter() - start, 2), variants={})
    inputs = made.inputs
    regions = PortraitRegions.from_portrait(inputs.landmarks, inputs.matte, inputs.photo, inputs.hands, size=CHECK_SIZE)
    for variant in variants:
        t = time.perf_counter()
        avatar = finish(variant, made.avatar, inputs, head, QUALITY[quality][1])
        seconds = time.perf_counter() - t
        scores, renders = views_and_scores(avatar, inputs, head, meter)
        cover = coverage(render_portrait_camera(avatar, head, CHECK_SIZE)[1], regions)
        record["variants"][variant] = {**scores, "seconds": round(seconds, 2), "gaussians": avatar.gaussians.num,
                                       "coverage": cover.to_json()}
        rows.setdefault(variant, {})[str(path)] = row_image(inputs.crop, renders, scores["identity"], path.name)
    return record


def summary(records: list[dict], variant: str) -> dict:
    made = [r["variants"][variant] for r in records if r["outcome"] == "avatar" and variant in r["variants"]]
    out = {"avatars": len(made), "face_psnr": median([m["face_psnr"] for m in made]),
           "coverage_head": median([m["coverage"]["head"] for m in made]),
           "seconds": median([m["seconds"] for m in made]), "gaussians": median([m["gaussians"] for m in made])}
    return {**out, **identity_summary(made)}


def table(records: list[dict], variants: list[str]) -> str:
    lines = ["Same generated points per image; each variant finishes them differently (medians over the avatars; "
             f"identity: SFace cosine to the input, same person ≥ {SAME_PERSON_COSINE}; (found, same) as shares).", "",
             "| folder | variant | avatars | face PSNR | head cov. | " + " | ".join(f"id {l}" for l, _ in VIEWS)
             + " | found ±30 | finish s | Gaussians |", "|---" * (8 + len(VIEWS)) + "|"]
    for folder in sorted({r["folder"] for r in records}):
        for variant in variants:
            s = summary([r for r in records if r["folder"] == folder], variant)
            if not s["avatars"]:
                continue
            ids = identity_cells(s)
            found30 = (s["found_yaw+30"] + s["found_yaw-30"]) / 2
            lines.append(f"| {folder} | {variant} | {s['avatars']} | {fmt(s['face_psnr'], '{:.1f}')} | "
                         f"{fmt(s['coverage_head'])} | {ids} | {found30:.0%} | {fmt(s['seconds'], '{:.1f}')} | "
                         f"{fmt(s['gaussians'], '{:.0f}')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--quality", default=CreateOptions().quality, choices=tuple(QUALITY))
    parser.add_argument("--limit", type=int, help="at most this many images")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"error: unknown variants {unknown}; choose from {list(VARIANTS)}")
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    key = json.dumps({"quality": args.quality, "variants": variants})
    done: dict[str, dict] = {}
    if results_path.exists():
        saved = json.loads(results_path.read_text())
        if saved.get("options") == key:
            done = {r["image"]: r for r in saved["records"]}
    head, meter = HeadModel.load(), IdentityMeter()
    rows: dict[str, dict[str, np.ndarray]] = {}
    rows_dir = out / "rows"
    rows_dir.mkdir(exist_ok=True)
    records = []
    paths = images_in(args.folders)[: args.limit]
    for i, path in enumerate(paths):
        record = done.get(str(path))
        if record is None:
            record = measure(path, variants, args.quality, head, meter, rows)
            for variant, by_path in rows.items():
                if str(path) in by_path:
                    save_png(by_path.pop(str(path)), rows_dir / f"{variant}__{path.parent.name}__{path.stem}.png")
            done[str(path)] = record
            payload = json.dumps({"options": key, "records": list(done.values())}, indent=1).encode()
            atomic_write(results_path, lambda fh: fh.write(payload))
        records.append(record)
        front = {v: m["identity"]["front"]["cosine"] for v, m in record.get("variants", {}).items()}
        print(f"[{i + 1}/{len(paths)}] {path.parent.name}/{path.name}: {record['outcome']} front id {front}",
              file=sys.stderr, flush=True)
    text = table(records, variants)
    atomic_write(out / "table.md", lambda fh: fh.write(text.encode()))
    from PIL import Image

    for variant in variants:
        files = [rows_dir / f"{variant}__{p.parent.name}__{p.stem}.png" for p in paths]
        images = [np.asarray(Image.open(f).convert("RGB")) for f in files if f.exists()]
        if images:
            save_png(np.concatenate(images, 0), out / f"sheet_{variant}.png")
    print(text)
    print(json.dumps({"benchmark": "anchor_ablation", "quality": args.quality,
                      "folders": {folder: {v: summary([r for r in records if r["folder"] == folder], v) for v in variants}
                                  for folder in sorted({r["folder"] for r in records})}}))


if __name__ == "__main__":
    main()
