"""Held-out evaluation of a generator checkpoint (`pointillist evaluate`).

On subjects of the fixed held-out split (never trained on), with no photometric refinement:

* AR loss (teacher-forced cross-entropy) with the image features, and with them zeroed: the second must
  be higher if the generator uses the portrait at all;
* generated points: count per hair style (does it adapt?), Chamfer distance to the true AR points (cm),
  binding accuracy (the generated triangle equals the nearest true point's);
* novel-view PSNR of the decoded avatar on the subject's other views, against the paper's "template
  positions" ablation: the same decoder fed points on the head surface (the head mesh's own vertices,
  each bound to a triangle it belongs to), with AR hidden states from a teacher-forced pass over them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from ..head.model import HeadModel
from ..model.checkpoint import load_generator
from ..model.point_encoder import SurfaceSampler
from ..model.sampling import SamplingOptions, generate
from ..render.rasterize import rasterize
from ..render.sh import SH_C0
from .losses import psnr
from .train_generator import conditioning_inputs, teacher_forced_hidden, windowed_passes


@dataclass
class EvalConfig:
    checkpoint: str
    data: str
    split: str = "heldout"
    subjects: int = 10
    max_points: int = 2048
    temperature: float = 0.5
    render_size: int = 128
    seed: int = 0


def _render(means, quats, log_scales, opacity_logits, sh_dc, viewmat, K, size, full) -> torch.Tensor:
    K = torch.as_tensor(K, dtype=torch.float32).clone()
    K[:2] *= size / full
    out = rasterize(means, quats, log_scales.exp(), torch.sigmoid(opacity_logits), viewmat=torch.as_tensor(viewmat, dtype=torch.float32),
                    K=K, width=size, height=size, colors=(0.5 + SH_C0 * sh_dc).clamp_min(0), background=torch.ones(3))
    return out.rgb.clamp(0, 1)


def _target(record, v: int, size: int) -> torch.Tensor:
    img = torch.as_tensor(record.images[v]).float().permute(2, 0, 1)[None] / 255
    mask = torch.as_tensor(record.masks[v]).float()[None, None] / 255
    img = img * mask + (1 - mask)  # white background, as rendered
    return F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)


def _template_points(head: HeadModel, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The identity mesh's vertices (skin parts), each bound to the first skin triangle holding it."""
    data = head.data
    verts = head.identity_vertices(torch.as_tensor(shape)[None])[0].numpy()
    skin = np.ones(data.num_faces, dtype=bool)
    for name in ("mouth_cavity", "teeth_upper", "teeth_lower"):
        if data.face_parts is not None and name in data.part_names:
            skin &= ~data.part_mask(name)
    faces = np.flatnonzero(skin)
    owner = np.full(data.num_vertices, -1)
    for f in faces[::-1]:
        owner[data.faces[f]] = f
    used = owner >= 0
    return verts[used], owner[used]


def evaluate(config: EvalConfig, head: HeadModel | None = None, log=print) -> dict:
    from .dataset import SubjectDataset

    head = head or HeadModel.load()
    model, info = load_generator(config.checkpoint)
    data = SubjectDataset(config.data, config.split)
    sampler = SurfaceSampler(head.data, model.config.points.num_points, seed=0)
    order = np.random.default_rng(config.seed).permutation(len(data))
    by_style: dict[str, list[int]] = defaultdict(list)
    rows = []
    for i in order:  # balanced across styles
        r = data[int(i)]
        if len(by_style[r.style]) * 5 >= config.subjects:
            continue
        by_style[r.style].append(int(i))
        with torch.no_grad():
            images, points = conditioning_inputs(model, head, sampler, [r])
            cond = model.condition(images, points)
            ar_loss = float(_full_ar_loss(model, r, cond))
            ar_loss_blind = float(_full_ar_loss(model, r, model.condition(images, points, image_scale=0.0)))
            gen = generate(model.ar, model.tokenizer, cond, SamplingOptions(temperature=config.temperature, max_points=config.max_points, seed=config.seed))
            decoded = model.decoder(torch.as_tensor(gen.points)[None], gen.hidden[None])
            truth = cKDTree(r.ar_points)
            d_gt, nearest = truth.query(gen.points)
            d_gen, _ = cKDTree(gen.points).query(r.ar_points)
            chamfer_cm = 100 * 0.5 * (d_gt.mean() + d_gen.mean())
            binding_acc = float((r.ar_binding[nearest] == gen.binding).mean())
            # template-positions ablation
            tpts, tbind = _template_points(head, r.shape)
            enc = model.tokenizer.encode(tpts, tbind)
            hidden = teacher_forced_hidden(model, enc.tokens, cond)
            ablation = model.decoder(torch.as_tensor(enc.points)[None], hidden[None])
            full = r.images.shape[1]
            p_gen, p_tpl = [], []
            for v in range(1, r.num_views):
                target = _target(r, v, config.render_size)
                for out, acc in ((decoded, p_gen), (ablation, p_tpl)):
                    img = _render(out.means[0], out.quats[0], out.log_scales[0], out.opacity_logits[0], out.sh_dc[0],
                                  r.viewmats[v], r.Ks[v], config.render_size, full)
                    acc.append(float(psnr(img, target)))
        row = {"subject": r.subject_id, "style": r.style, "true_points": r.num_ar_points, "points": len(gen.binding),
               "ended_by_model": gen.ended, "chamfer_cm": round(chamfer_cm, 3), "binding_accuracy": round(binding_acc, 3),
               "ar_loss": round(ar_loss, 4), "ar_loss_no_image": round(ar_loss_blind, 4),
               "psnr": round(float(np.mean(p_gen)), 2), "psnr_template_positions": round(float(np.mean(p_tpl)), 2)}
        rows.append(row)
        log(json.dumps(row))
        if len(rows) >= config.subjects:
            break
    return summarize(rows, config, info)


def _full_ar_loss(model, record, cond) -> torch.Tensor:
    """Teacher-forced cross-entropy over the whole sequence."""
    seq = model.tokenizer.encode(record.ar_points, record.ar_binding).tokens
    targets = torch.as_tensor(seq[1:])
    losses = [F.cross_entropy(logits, targets[first:last], reduction="sum")
              for first, last, _, logits in windowed_passes(model, torch.as_tensor(seq[:-1]), cond)]
    return torch.stack(losses).sum() / len(targets)


def summarize(rows: list[dict], config: EvalConfig, info: dict) -> dict:
    styles = sorted({r["style"] for r in rows})
    mean = lambda key, rs=rows: round(float(np.mean([r[key] for r in rs])), 4)  # noqa: E731
    return {
        "checkpoint": config.checkpoint, "split": config.split, "subjects": len(rows), "temperature": config.temperature,
        "ar_loss": mean("ar_loss"), "ar_loss_no_image": mean("ar_loss_no_image"),
        "chamfer_cm": mean("chamfer_cm"), "binding_accuracy": mean("binding_accuracy"),
        "psnr": mean("psnr"), "psnr_template_positions": mean("psnr_template_positions"),
        "points_by_style": {s: {"generated": mean("points", [r for r in rows if r["style"] == s]),
                                "true": mean("true_points", [r for r in rows if r["style"] == s])} for s in styles},
        "rows": rows,
    }


def markdown(summary: dict) -> str:
    lines = ["| metric | value |", "|---|---:|"]
    for key in ("subjects", "ar_loss", "ar_loss_no_image", "chamfer_cm", "binding_accuracy", "psnr", "psnr_template_positions"):
        lines.append(f"| {key} | {summary[key]} |")
    lines += ["", "| style | generated points | true points |", "|---|---:|---:|"]
    for style, v in summary["points_by_style"].items():
        lines.append(f"| {style} | {v['generated']:.0f} | {v['true']:.0f} |")
    return "\n".join(lines)
