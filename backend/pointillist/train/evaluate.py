"""Held-out evaluation of generator checkpoints (`pointillist eval`, alias `evaluate`).

On subjects of the fixed held-out split (never trained on), balanced across hair styles, with no
photometric refinement, for one or several checkpoints side by side (each sees the same subjects, seeds
and driving frames):

* novel-view PSNR and SSIM (``metrics.ssim``, the standard Gaussian-window SSIM) of the decoded avatar on
  the subject's other views, against the paper's "template positions" ablation: the same decoder fed points
  on the head surface (the head mesh's own vertices, each bound to a triangle it belongs to), with AR hidden
  states from a teacher-forced pass over them; and the same decoder fed the subject's true AR points
  (teacher-forced), the ceiling a perfect point generator would reach with this decoder;
* the same novel-view PSNR / SSIM and AKD once the decoded avatar is anchored to the portrait (view 0) as
  `create` anchors it (``anchor/``: the fitted face's surface, the photo's colours and their mirror), with
  the dataset's true head fit in place of a landmark fit;
* reenactment AKD (``eval_reenact``): the generated and the ground-truth avatar posed with the same driving
  frames, rendered at 512² from the portrait camera, MediaPipe landmarks compared in pixels;
* generated points: Chamfer distance to the true AR points (cm), binding accuracy (the generated triangle
  equals the nearest true point's), count per hair style (mean ± std) and its correlation with the true
  count (does the count adapt to the subject?);
* AR loss (teacher-forced cross-entropy) with the image features, and with them zeroed: the second must be
  higher if the generator uses the portrait at all;
* a contact sheet (``eval_sheet``).

Ground-truth renders and landmarks are computed once per subject and shared by all checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..anchor import anchor_to_photo
from ..avatar.gaussians import SourceInfo
from ..head.model import HeadModel
from ..model.checkpoint import load_generator
from ..model.point_encoder import SurfaceSampler
from ..model.portrait_probe import PortraitView
from ..model.sampling import SamplingOptions, generate
from ..model.silhouette import SilhouetteCarver
from . import metrics
from .eval_reenact import (
    DRIVING_FRAMES,
    GaussianArrays,
    detect,
    make_avatar,
    posed_renders,
    reenactment_akd,
    render_view,
    scaled_K,
    target_view,
    to_uint8,
)
from .eval_sheet import contact_sheet
from ..model.teacher_forcing import teacher_forced_hidden, windowed_passes
from ..model.template_points import template_points
from .train_generator import conditioning_inputs


class EvalError(ValueError):
    """A problem with the evaluation's inputs that the user can fix (the message names the option)."""


@dataclass
class EvalConfig:
    checkpoint: str  # the first (or only) checkpoint; `evaluate_many` takes the full list
    data: str
    split: str = "heldout"
    subjects: int = 10
    max_points: int = 2048
    temperature: float = 0.5
    carve: bool = True  # silhouette carving while sampling, as `create` does (model/silhouette.py)
    render_size: int = 128  # novel-view PSNR / SSIM resolution
    seed: int = 0
    reenact_size: int = 512  # AKD is in pixels at this size
    frames: int = len(DRIVING_FRAMES)  # driving frames per subject (the first `frames` of DRIVING_FRAMES)
    sheet_tile: int = 128
    names: list[str] = field(default_factory=list)  # column names, one per checkpoint (default: file stems)

    def validate(self) -> None:
        for name in ("subjects", "max_points", "render_size", "reenact_size", "sheet_tile"):
            if getattr(self, name) <= 0:
                raise EvalError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 <= self.frames <= len(DRIVING_FRAMES):
            raise EvalError(f"--frames must be in 0..{len(DRIVING_FRAMES)}, got {self.frames}")
        if self.render_size < metrics.SSIM_WINDOW:
            raise EvalError(f"--render-size must be at least {metrics.SSIM_WINDOW} px for SSIM")
        if self.temperature < 0:
            raise EvalError(f"--temperature must be >= 0, got {self.temperature}")


@dataclass
class EvalResult:
    summary: dict  # JSON-serialisable: config, subjects, reference numbers, one summary per checkpoint
    sheet: np.ndarray  # (H, W, 3) uint8 contact sheet


# ------------------------------------------------------------------------------------------ helpers
def _novel_views(record) -> list[int]:
    """Views 1.. (a posed one is compared with the avatar posed alike: `render_view`)."""
    return list(range(1, record.num_views))


def _full_ar_loss(model, record, cond) -> torch.Tensor:
    """Teacher-forced cross-entropy over the whole sequence."""
    seq = model.tokenizer.encode(record.ar_points, record.ar_binding).tokens
    targets = torch.as_tensor(seq[1:])
    losses = [F.cross_entropy(logits, targets[first:last], reduction="sum")
              for first, last, _, logits in windowed_passes(model, torch.as_tensor(seq[:-1]), cond)]
    return torch.stack(losses).sum() / len(targets)


def select_subjects(index, split: str, n: int, seed: int) -> list[int]:
    """``n`` subject ids of ``split``, balanced across hair styles: a seeded shuffle within each style, then
    round-robin over the styles (sorted by name), so any prefix is as balanced as it can be."""
    ids = index.subject_ids(split)
    if not ids:
        raise EvalError(f"the dataset at {index.root} has no {split!r} subjects")
    by_style: dict[str, list[int]] = defaultdict(list)
    for sid in ids:
        by_style[index.subjects[sid]["style"]].append(sid)
    rng = np.random.default_rng(seed)
    queues = {s: list(rng.permutation(by_style[s])) for s in sorted(by_style)}
    chosen: list[int] = []
    while len(chosen) < min(n, len(ids)):
        for s in sorted(queues):
            if queues[s] and len(chosen) < n:
                chosen.append(int(queues[s].pop(0)))
    return chosen


def checkpoint_names(paths: list[str], names: list[str] | None = None) -> list[str]:
    """Column names: the given ones, else file stems (with the parent folder when stems repeat)."""
    if names:
        if len(names) != len(paths):
            raise EvalError(f"{len(names)} names for {len(paths)} checkpoints")
        return list(names)
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}/{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(config: EvalConfig, head: HeadModel | None = None, log=print) -> dict:
    """One checkpoint (``config.checkpoint``): its summary (see ``summarize``)."""
    return evaluate_many([config.checkpoint], config, head=head, log=log).summary["checkpoints"][0]


def evaluate_many(checkpoints: list[str], config: EvalConfig, head: HeadModel | None = None,
                  log: Callable[[str], None] = print) -> EvalResult:
    """Every checkpoint on the same held-out subjects; see the module docstring for the metrics."""
    from .dataset import DatasetIndex, ShardReader

    config.validate()
    if not checkpoints:
        raise EvalError("give at least one --checkpoint")
    names = checkpoint_names(checkpoints, config.names)
    head = head or HeadModel.load()
    models = [load_generator(path) for path in checkpoints]  # a bad file fails before any work
    for path, (model, _) in zip(checkpoints, models):
        if model.config.tokenizer.num_faces != head.num_faces:
            raise EvalError(f"{path}: trained for a head with {model.config.tokenizer.num_faces} triangles; "
                            f"head model {head.model_id!r} has {head.num_faces}")
    index = DatasetIndex.load(config.data)
    if config.split not in ("train", "heldout"):
        raise EvalError(f"unknown split {config.split!r}; choose heldout or train")
    ids = select_subjects(index, config.split, config.subjects, config.seed)
    frames = [c for _, c in DRIVING_FRAMES[: config.frames]]
    sheet_frame = min(1, len(frames) - 1)  # "smile, turn left" when there are two frames or more
    samplers = {m.config.points.num_points: SurfaceSampler(head.data, m.config.points.num_points, seed=0) for m, _ in models}

    rows: list[list[dict]] = [[] for _ in checkpoints]
    reference: list[dict] = []
    sheet_rows: list[dict] = []
    started = time.perf_counter()
    for n, sid in enumerate(ids):
        record = ShardReader(index.root / index.shard_for(sid)["file"], index.shard_for(sid)).get(sid)
        t0 = time.perf_counter()
        truth, ref = _truth(record, head, config, frames)
        reference.append(ref)
        sheet_row = {"label": f"{sid} {record.style}", "input": record.images[0],
                     "truth": {"front": truth["front"], "novel": (truth["novel"] or [truth["front"]])[0],
                               "posed": truth["posed"][sheet_frame] if frames else truth["front"]},
                     "generated": []}
        for k, (model, _) in enumerate(models):
            row, images = _evaluate_subject(model, samplers[model.config.points.num_points], head, record, config,
                                            frames, truth)
            rows[k].append(row)
            sheet_row["generated"].append({"front": images["front"], "novel": (images["novel"] or [images["front"]])[0],
                                           "posed": images["posed"][sheet_frame] if frames else images["front"]})
            log(f"[{n + 1}/{len(ids)}] {names[k]}: " + " ".join(f"{key}={row[key]}" for key in _LOG_KEYS))
        sheet_rows.append(sheet_row)
        log(f"[{n + 1}/{len(ids)}] subject {sid} ({record.style}) done in {time.perf_counter() - t0:.1f} s")

    summaries = []
    for k, path in enumerate(checkpoints):
        s = summarize(rows[k], config, models[k][1], checkpoint=path)
        s["name"] = names[k]
        summaries.append(s)
    summary = {"split": config.split, "data": str(config.data), "subject_ids": ids, "config": asdict(config),
               "driving_frames": [name for name, _ in DRIVING_FRAMES[: config.frames]],
               "reference": _reference_summary(reference), "seconds": round(time.perf_counter() - started, 1),
               "checkpoints": summaries}
    return EvalResult(summary, contact_sheet(sheet_rows, names, config.sheet_tile))


_LOG_KEYS = ("points", "true_points", "chamfer_cm", "binding_accuracy", "psnr", "ssim", "akd_px", "ar_loss")


def _truth(record, head: HeadModel, config: EvalConfig, frames: list) -> tuple[dict, dict]:
    """Checkpoint-independent renders and landmarks of the ground-truth avatar, and reference numbers:
    how well the ground truth reproduces the dataset's own views (the metric's ceiling), and how far the
    driving frames move its landmarks from the neutral face (the scale an AKD should be read against)."""
    g = GaussianArrays.from_record(record)
    size = config.reenact_size
    K = scaled_K(record.Ks[0], record.images.shape[1], size)
    with torch.no_grad():
        novel = [render_view(g, record, v, config.render_size, head) for v in _novel_views(record)]
        front = to_uint8(render_view(g, record, 0, size))
        posed = posed_renders(make_avatar(g, head, record.shape), head, frames, record.viewmats[0], K, size) if frames else []
    targets = [target_view(record, v, config.render_size) for v in _novel_views(record)]
    neutral = detect(front)
    landmarks = [detect(img) for img in posed]
    motion = reenactment_akd(landmarks, [neutral] * len(landmarks)) if frames else {"akd_px": None}
    ref = {"subject": record.subject_id,
           "psnr": _mean([metrics.psnr(a, b) for a, b in zip(novel, targets)]),
           "ssim": _mean([metrics.ssim(a, b) for a, b in zip(novel, targets)]),
           "driving_akd_px": motion["akd_px"],
           "truth_detection_failures": sum(lm is None for lm in landmarks) + (neutral is None)}
    return {"front": front, "novel": [to_uint8(x) for x in novel], "posed": posed, "landmarks": landmarks,
            "targets": targets}, ref


def _evaluate_subject(model, sampler, head: HeadModel, record, config: EvalConfig, frames: list,
                      truth: dict) -> tuple[dict, dict]:
    with torch.no_grad():
        images, points, probe = conditioning_inputs(model, head, sampler, [record])
        cond = model.condition(images, points, head_probe=probe)
        ar_loss = float(_full_ar_loss(model, record, cond))
        blind = model.condition(images, points, image_scale=0.0, head_probe=probe)
        ar_loss_blind = float(_full_ar_loss(model, record, blind))
        portrait = PortraitView.from_record(record)
        gen = generate(model.ar, model.tokenizer, cond, SamplingOptions(
            temperature=config.temperature, max_points=config.max_points, seed=config.seed + record.subject_id),
            keep_point=SilhouetteCarver(portrait, head) if config.carve else None)
        decoded = model.decode(torch.as_tensor(gen.points), gen.hidden, gen.binding, portrait, head)
        chamfer_cm, binding_acc = metrics.chamfer_and_binding(gen.points, gen.binding, record.ar_points, record.ar_binding)
        # template-positions ablation
        tpts, tbind = template_points(head, record.shape)
        enc = model.tokenizer.encode(tpts, tbind)
        ablation = model.decode(torch.as_tensor(enc.points), teacher_forced_hidden(model, enc.tokens, cond), enc.binding,
                                portrait, head)
        # reference: the true points, teacher-forced
        true_enc = model.tokenizer.encode(record.ar_points, record.ar_binding)
        oracle = model.decode(torch.as_tensor(true_enc.points), teacher_forced_hidden(model, true_enc.tokens, cond),
                              true_enc.binding, portrait, head)
        scores: dict[str, list[float]] = {k: [] for k in ("psnr", "ssim", "psnr_template_positions", "ssim_template_positions",
                                                          "psnr_true_points", "ssim_true_points")}
        k = model.config.decoder.gaussians_per_point
        g = GaussianArrays.from_decoder(decoded, gen.binding, k)
        ablation_g = GaussianArrays.from_decoder(ablation, enc.binding, k)
        oracle_g = GaussianArrays.from_decoder(oracle, true_enc.binding, k)
        anchored_g = anchored(g, record, head)
        scores.update(psnr_anchored=[], ssim_anchored=[])
        novel = []
        for v, target in zip(_novel_views(record), truth["targets"]):
            for out, key in ((g, ""), (ablation_g, "_template_positions"), (oracle_g, "_true_points"),
                             (anchored_g, "_anchored")):
                img = render_view(out, record, v, config.render_size, head)
                scores["psnr" + key].append(metrics.psnr(img, target))
                scores["ssim" + key].append(metrics.ssim(img, target))
                if not key:
                    novel.append(to_uint8(img))
        size = config.reenact_size
        K = scaled_K(record.Ks[0], record.images.shape[1], size)
        front = to_uint8(render_view(g, record, 0, size))
        posed = posed_renders(make_avatar(g, head, record.shape), head, frames, record.viewmats[0], K, size) if frames else []
        posed_anchored = (posed_renders(make_avatar(anchored_g, head, record.shape), head, frames, record.viewmats[0], K, size)
                          if frames else [])
    akd = reenactment_akd(truth["landmarks"], [detect(img) for img in posed])
    akd_anchored = reenactment_akd(truth["landmarks"], [detect(img) for img in posed_anchored])
    row = {"subject": record.subject_id, "style": record.style, "true_points": record.num_ar_points,
           "points": len(gen.binding), "ended_by_model": gen.ended,
           "refused_points": gen.refused, "ended_by_refusals": gen.refused_stop, "chamfer_cm": round(chamfer_cm, 3),
           "binding_accuracy": round(binding_acc, 3), "ar_loss": round(ar_loss, 4), "ar_loss_no_image": round(ar_loss_blind, 4),
           **{key: round(_mean(v), 4 if key.startswith("ssim") else 2) for key, v in scores.items()},
           "akd_px": akd["akd_px"], "akd_per_frame_px": akd["akd_per_frame_px"], "akd_frames": akd["akd_frames"],
           "frames": akd["frames"], "akd_anchored_px": akd_anchored["akd_px"], "akd_anchored_frames": akd_anchored["akd_frames"],
           "detection_failures": akd["detection_failures"]}
    return row, {"front": front, "novel": novel, "posed": posed}


def anchored(g: GaussianArrays, record, head: HeadModel) -> GaussianArrays:
    """The decoded Gaussians anchored to the subject's portrait (view 0) as `create` anchors them (`anchor/`),
    with the dataset's true head fit standing in for the landmark fit of a photo."""
    avatar = make_avatar(g, head, record.shape)
    size = record.images.shape[1]
    has_expression = record.expressions is not None and record.expressions.shape[1] > 0
    avatar.source = SourceInfo(image=record.images[0], matte=record.masks[0],
                               camera={"viewmat": np.asarray(record.viewmats[0]).tolist(), "K": np.asarray(record.Ks[0]).tolist(),
                                       "width": size, "height": size},
                               expression=record.expressions[0] if has_expression else None,
                               pose=record.poses[0] if record.is_posed(0) else None)
    out = anchor_to_photo(avatar, head)
    a = out.gaussians
    return GaussianArrays(a.means, a.log_scales, a.quats, a.opacity_logits, a.sh_dc, out.binding.triangles)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _reference_summary(ref: list[dict]) -> dict:
    akd = [r["driving_akd_px"] for r in ref if r["driving_akd_px"] is not None]
    return {"truth_psnr": round(_mean([r["psnr"] for r in ref]), 2), "truth_ssim": round(_mean([r["ssim"] for r in ref]), 4),
            "driving_akd_px": round(float(np.mean(akd)), 2) if akd else None,
            "truth_detection_failures": int(sum(r["truth_detection_failures"] for r in ref))}


def summarize(rows: list[dict], config: EvalConfig, info: dict, checkpoint: str | None = None) -> dict:
    """Means over subjects; AKD over all frames where both sides were detected; counts per style."""
    styles = sorted({r["style"] for r in rows})
    mean = lambda key, rs=rows: round(_mean([r[key] for r in rs]), 4)
    frames = sum(r["frames"] for r in rows)
    akd_frames = sum(r["akd_frames"] for r in rows)
    akd = sum(r["akd_px"] * r["akd_frames"] for r in rows if r["akd_px"] is not None)
    # MediaPipe on a poor render sometimes returns a face mesh far off (AKD of 100+ px): the median shows the typical frame
    per_frame = [d for r in rows for d in r.get("akd_per_frame_px", []) if d is not None]
    counts = metrics.count_statistics([r["points"] for r in rows], [r["true_points"] for r in rows])
    by_style = {}
    for s in styles:
        rs = [r for r in rows if r["style"] == s]
        st = metrics.count_statistics([r["points"] for r in rs], [r["true_points"] for r in rs])
        by_style[s] = {"generated": st["generated_mean"], "generated_std": st["generated_std"],
                       "true": st["true_mean"], "true_std": st["true_std"], "subjects": st["n"]}
    return {
        "checkpoint": checkpoint or config.checkpoint, "name": info.get("name"), "split": config.split,
        "subjects": len(rows), "temperature": config.temperature, "carve": config.carve,
        "psnr": mean("psnr"), "ssim": mean("ssim"),
        "psnr_template_positions": mean("psnr_template_positions"), "ssim_template_positions": mean("ssim_template_positions"),
        "psnr_true_points": mean("psnr_true_points"), "ssim_true_points": mean("ssim_true_points"),
        "akd_px": round(akd / akd_frames, 3) if akd_frames else None,
        "akd_median_px": round(float(np.median(per_frame)), 3) if per_frame else None,
        "psnr_anchored": mean("psnr_anchored"), "ssim_anchored": mean("ssim_anchored"),
        "akd_anchored_px": _weighted_akd(rows, "akd_anchored_px", "akd_anchored_frames"),
        "akd_frames": akd_frames, "detection_failure_rate": round(sum(r["detection_failures"] for r in rows) / frames, 3) if frames else None,
        "chamfer_cm": mean("chamfer_cm"), "binding_accuracy": mean("binding_accuracy"),
        "ar_loss": mean("ar_loss"), "ar_loss_no_image": mean("ar_loss_no_image"),
        "points": counts, "points_by_style": by_style,
        "rows": rows,
    }


def _weighted_akd(rows: list[dict], key: str, frames_key: str) -> float | None:
    frames = sum(r.get(frames_key) or 0 for r in rows)
    total = sum(r[key] * r[frames_key] for r in rows if r.get(key) is not None)
    return round(total / frames, 3) if frames else None


# ------------------------------------------------------------------------------------------ tables
#: (summary key, label, format) of the side-by-side table, in order.
TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("psnr", "novel-view PSNR (dB) ↑", "{:.2f}"),
    ("ssim", "novel-view SSIM ↑", "{:.4f}"),
    ("psnr_template_positions", "novel-view PSNR, template positions ablation (dB)", "{:.2f}"),
    ("ssim_template_positions", "novel-view SSIM, template positions ablation", "{:.4f}"),
    ("psnr_true_points", "novel-view PSNR, true points decoded (reference, dB)", "{:.2f}"),
    ("ssim_true_points", "novel-view SSIM, true points decoded (reference)", "{:.4f}"),
    ("psnr_anchored", "novel-view PSNR, anchored to the portrait as `create` does (dB) ↑", "{:.2f}"),
    ("ssim_anchored", "novel-view SSIM, anchored to the portrait ↑", "{:.4f}"),
    ("akd_px", "reenactment AKD (px at 512²) ↓", "{:.2f}"),
    ("akd_anchored_px", "reenactment AKD, anchored (px) ↓", "{:.2f}"),
    ("akd_median_px", "reenactment AKD, median frame (px)", "{:.2f}"),
    ("detection_failure_rate", "landmark detection failures on generated renders ↓", "{:.1%}"),
    ("chamfer_cm", "Chamfer distance, generated vs true points (cm) ↓", "{:.3f}"),
    ("binding_accuracy", "binding accuracy ↑", "{:.3f}"),
    ("ar_loss", "held-out AR loss (nats/token) ↓", "{:.4f}"),
    ("ar_loss_no_image", "AR loss with the image zeroed (should be higher)", "{:.4f}"),
)


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def markdown(summary: dict) -> str:
    """Side-by-side table of one or several checkpoints: ``summary`` is ``evaluate_many``'s, or a single
    checkpoint's summary from ``evaluate``."""
    if "checkpoints" not in summary:
        summary = {"checkpoints": [summary], "reference": None}
    ckpts = summary["checkpoints"]
    names = [c.get("name") or Path(c["checkpoint"]).stem for c in ckpts]
    if config := summary.get("config"):
        akd_label = f"reenactment AKD (px at {config['reenact_size']}²) ↓"
    else:
        akd_label = None
    head = "| metric | " + " | ".join(names) + " |"
    lines = [head, "|---|" + "---:|" * len(names)]
    lines.append("| held-out subjects | " + " | ".join(str(c["subjects"]) for c in ckpts) + " |")
    for key, label, fmt in TABLE_ROWS:
        if key == "akd_px" and akd_label:
            label = akd_label
        lines.append(f"| {label} | " + " | ".join(_fmt(c.get(key), fmt) for c in ckpts) + " |")
    lines.append("| generated points, mean ± std | " + " | ".join(
        f"{c['points']['generated_mean']:.0f} ± {c['points']['generated_std']:.0f}" for c in ckpts) + " |")
    lines.append("| correlation of generated with true count (Pearson r) ↑ | " + " | ".join(
        _fmt(c["points"]["pearson"], "{:.3f}") for c in ckpts) + " |")
    styles = sorted({s for c in ckpts for s in c["points_by_style"]})
    lines += ["", "| hair style | true points | " + " | ".join(f"{n} generated" for n in names) + " |",
              "|---|---:|" + "---:|" * len(names)]
    for s in styles:
        true = next(c["points_by_style"][s] for c in ckpts if s in c["points_by_style"])
        cells = [f"{c['points_by_style'][s]['generated']:.0f} ± {c['points_by_style'][s]['generated_std']:.0f}"
                 if s in c["points_by_style"] else "n/a" for c in ckpts]
        lines.append(f"| {s} | {true['true']:.0f} ± {true['true_std']:.0f} | " + " | ".join(cells) + " |")
    ref = summary.get("reference")
    if ref:
        lines += ["", (f"Reference: the ground-truth avatars re-rendered against the dataset's novel views score PSNR "
                      f"{_fmt(ref['truth_psnr'], '{:.2f}')} dB / SSIM {_fmt(ref['truth_ssim'], '{:.4f}')} (the metric's "
                      f"ceiling here); the driving frames move the ground truth's landmarks by "
                      f"{_fmt(ref['driving_akd_px'], '{:.2f}')} px from its neutral face (an avatar that did not move "
                      f"would score about that AKD); landmark detection failed on {ref['truth_detection_failures']} "
                      f"ground-truth renders.")]
    return "\n".join(lines)


def json_safe(value):
    """NaN / inf (e.g. PSNR of identical images, a metric with no valid frame) become null: strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_outputs(result: EvalResult, prefix: str | os.PathLike) -> list[Path]:
    """``PREFIX.json``, ``PREFIX.md`` and ``PREFIX.png``, each written atomically (a ``.json`` suffix on
    the prefix is dropped, so ``-o out.json`` also works)."""
    import json
    from io import BytesIO

    from PIL import Image

    from ..atomic import atomic_write

    prefix = Path(prefix)
    if prefix.suffix.lower() in (".json", ".md", ".png"):
        prefix = prefix.with_suffix("")
    if prefix.parent and not prefix.parent.exists():
        raise EvalError(f"output folder {prefix.parent} does not exist")
    table = markdown(result.summary) + "\n"
    png = BytesIO()
    Image.fromarray(result.sheet).save(png, format="PNG", optimize=True)
    paths = [Path(f"{prefix}.json"), Path(f"{prefix}.md"), Path(f"{prefix}.png")]
    blobs = [(json.dumps(json_safe(result.summary), indent=1, allow_nan=False) + "\n").encode(), table.encode(), png.getvalue()]
    for path, blob in zip(paths, blobs):
        atomic_write(path, lambda f, b=blob: f.write(b))
    return paths
