"""`pointillist train encoder|ar|decoder`: the training loops (CPU-sized; the scale-out issue grows them).

* `encoder`: pre-trains the image encoder on renders with proxy targets (`encoder_pretraining.py`);
  no pretrained DINOv2 exists here, and trained jointly with the AR model it learned nothing.
* `ar`: teacher-forced cross-entropy over token windows (the paper's sliding-window training), the
  head-point encoder trained jointly with the AR transformer; the image encoder is frozen, as in the paper,
  when it was pre-trained (`encoder` stage) or comes from Meta's DINOv2 file (`--dinov2-weights`), and
  trained jointly otherwise.
* `decoder`: everything else frozen; the Gaussian decoder turns ground-truth points + the AR model's
  teacher-forced hidden states into Gaussians, rendered differentiably against the dataset's views
  (L1 + 0.5 (1 - SSIM) + 0.1 mask term) plus a colour regulariser toward the nearest true Gaussian.

Checkpoints are safetensors (`model/checkpoint.py`); the optimizer state and step go to a sidecar
`<checkpoint>.train.safetensors` so a stopped run resumes where it was, and every logged step is appended
to `<checkpoint>.log.csv`. Both are written atomically.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from ..atomic import atomic_write
from ..head.model import HeadModel
from ..model.checkpoint import load_generator, save_generator
from ..model.config import GeneratorConfig
from ..model.generator import Generator
from ..model.point_encoder import SurfaceSampler
from ..render.rasterize import rasterize
from ..render.sh import SH_C0
from .losses import ssim

STAGES = ("encoder", "ar", "decoder")


@dataclass
class TrainConfig:
    stage: str
    data: str
    output: str  # checkpoint path (.safetensors)
    init: str | None = None  # start from this checkpoint (the decoder stage needs the AR one)
    steps: int = 1000
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 50
    save_every: int = 50
    log_every: int = 10
    seed: int = 0
    render_size: int = 64
    views_per_step: int = 1
    colour_weight: float = 0.5
    chamfer_weight: float = 0.5
    dinov2_weights: str | None = None
    #: AR stage: probability of hiding a sample's head-mesh tokens, so the transformer must read the image
    #: (the fitted head explains the face so well that the image is otherwise ignored; hair is only in the image).
    head_dropout: float = 0.0
    model: dict = field(default_factory=dict)  # GeneratorConfig JSON overrides for a fresh model

    def __post_init__(self):
        if not 0.0 <= self.head_dropout <= 1.0:
            raise ValueError(f"head_dropout must be a probability in [0, 1], got {self.head_dropout}")


def sidecar(output: str | os.PathLike, suffix: str) -> Path:
    p = Path(output)
    return p.with_name(p.name.removesuffix(".safetensors") + suffix)


class Trainer:
    def __init__(self, config: TrainConfig, head: HeadModel | None = None, log=print):
        from .dataset import SubjectDataset

        if config.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        self.cfg = config
        self.log = log
        self.head = head or HeadModel.load()
        self.data = SubjectDataset(config.data, "train")
        if len(self.data) == 0:
            raise ValueError(f"{config.data}: no training subjects")
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.model, self.info = self._initial_model()
        self.sampler = SurfaceSampler(self.head.data, self.model.config.points.num_points, seed=0)
        if config.stage == "encoder":
            self._setup_encoder_stage()
        self.trainable = self._trainable()
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
        self.step = 0
        self.history: list[dict] = []
        self._resume()

    # ------------------------------------------------------------------ set-up
    def _initial_model(self) -> tuple[Generator, dict]:
        cfg = self.cfg
        resume = Path(cfg.output)
        self.resuming = resume.exists() and sidecar(resume, ".train.safetensors").exists()
        if self.resuming:
            model, info = load_generator(resume)
            return model.train(), info
        if cfg.init:
            model, info = load_generator(cfg.init)
            return model.train(), info
        if cfg.stage == "decoder":
            raise ValueError("the decoder stage starts from a trained AR checkpoint: pass --init")
        base = GeneratorConfig().to_json()
        for part, values in cfg.model.items():
            base[part].update(values) if isinstance(values, dict) else base.__setitem__(part, values)
        base["tokenizer"]["num_faces"] = self.head.data.num_faces
        base["head_model_id"] = self.head.model_id
        model = Generator(GeneratorConfig.from_json(base))
        model.ar.set_triangles(torch.as_tensor(self.head.data.vertices[self.head.data.faces].mean(1)))
        if cfg.dinov2_weights:
            from ..model.image_encoder import load_dinov2_weights

            enc = load_dinov2_weights(cfg.dinov2_weights, image_size=base["image"]["image_size"])
            model.image_encoder = enc
            model.config.image = enc.config
            model.image_proj = torch.nn.Linear(enc.config.dim, model.config.ar.dim)
        return model.train(), {}

    def _setup_encoder_stage(self) -> None:
        from .dataset import SubjectDataset
        from .encoder_pretraining import ProxyHeads, ViewBank

        if not self.resuming:  # pre-training starts from a fresh ViT of the preset's size
            from ..model.config import ImageEncoderConfig, dataclass_from_json
            from ..model.image_encoder import ImageEncoder

            fresh = dataclass_from_json(ImageEncoderConfig, {**asdict(self.model.config.image), **self.cfg.model.get("image", {})}, "image")
            if fresh.dim != self.model.config.image.dim:
                raise ValueError(f"image encoder width {fresh.dim} does not fit this checkpoint's {self.model.config.image.dim}")
            self.model.image_encoder = ImageEncoder(fresh).train()
            self.model.config.image = fresh
        size, box = self.model.config.image.image_size, self.model.config.tokenizer
        self.bank = ViewBank(self.data, size, box, log=self.log)
        self.heldout_bank = ViewBank(SubjectDataset(self.cfg.data, "heldout"), size, box, views="portrait",
                                     count_stats=self.bank.count_stats, log=self.log)
        self.proxy = ProxyHeads(self.model.config.image.dim)
        self.augment_rng = torch.Generator().manual_seed(self.cfg.seed)

    @property
    def image_encoder_frozen(self) -> bool:
        """The AR stage keeps a pre-trained image encoder fixed (the paper freezes DINOv2)."""
        return bool(self.cfg.dinov2_weights) or "encoder" in self.info

    def _trainable(self) -> list[torch.nn.Parameter]:
        m = self.model
        for p in m.parameters():
            p.requires_grad_(False)
        if self.cfg.stage == "encoder":
            params = list(m.image_encoder.parameters()) + list(self.proxy.parameters())
        elif self.cfg.stage == "ar":
            parts = [m.point_encoder, m.image_proj, m.point_proj, m.ar]
            if not self.image_encoder_frozen:
                parts.append(m.image_encoder)
            params = [m.source_emb] + [p for part in parts for p in part.parameters()]
        else:
            params = list(m.decoder.parameters())
        for p in params:
            p.requires_grad_(True)
        return params

    def _resume(self) -> None:
        state_path = sidecar(self.cfg.output, ".train.safetensors")
        if not (Path(self.cfg.output).exists() and state_path.exists()):
            return
        from safetensors import safe_open

        with safe_open(str(state_path), framework="pt") as f:
            meta = f.metadata()
            if meta.get("stage") != self.cfg.stage:
                raise ValueError(f"{state_path}: a {meta.get('stage')!r} run; cannot resume it as {self.cfg.stage!r}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if self.cfg.stage == "encoder":
            self.proxy.load_state_dict({k.removeprefix("proxy."): v for k, v in tensors.items() if k.startswith("proxy.")})
            self.augment_rng.manual_seed(self.cfg.seed + int(meta["step"]))
        state = self.optimizer.state_dict()
        for i in range(len(self.trainable)):
            if f"{i}.exp_avg" in tensors:
                state["state"][i] = {"step": tensors[f"{i}.step"], "exp_avg": tensors[f"{i}.exp_avg"], "exp_avg_sq": tensors[f"{i}.exp_avg_sq"]}
        self.optimizer.load_state_dict(state)
        self.step = int(meta["step"])
        self.rng = np.random.default_rng([self.cfg.seed, self.step])
        torch.manual_seed(self.cfg.seed + self.step)
        self.log(f"resumed {self.cfg.stage} at step {self.step}")

    def save(self) -> None:
        from safetensors.torch import save

        stage = {"step": self.step, "config": asdict(self.cfg), "final_loss": self.history[-1]["loss"] if self.history else None}
        if self.cfg.stage == "encoder":
            from .encoder_pretraining import proxy_metrics

            stage["heldout"] = proxy_metrics(self.model.image_encoder, self.proxy, self.heldout_bank)
            stage["count_stats"] = list(self.bank.count_stats)
            self.log(json.dumps({"encoder_heldout": stage["heldout"], "step": self.step}))
        save_generator(self.cfg.output, self.model, {**self.info, self.cfg.stage: stage})
        tensors = {f"proxy.{k}": v.detach().contiguous() for k, v in self.proxy.state_dict().items()} if self.cfg.stage == "encoder" else {}
        for i, st in self.optimizer.state_dict()["state"].items():
            tensors[f"{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
            tensors[f"{i}.exp_avg"] = st["exp_avg"].contiguous()
            tensors[f"{i}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
        payload = save(tensors, metadata={"stage": self.cfg.stage, "step": str(self.step)})
        atomic_write(sidecar(self.cfg.output, ".train.safetensors"), lambda f: f.write(payload))

    # ------------------------------------------------------------------ batches
    def _records(self) -> list:
        idx = self.rng.choice(len(self.data), size=min(self.cfg.batch_size, len(self.data)), replace=False)
        return [self.data[int(i)] for i in idx]

    def conditioning_inputs(self, records: list) -> tuple[torch.Tensor, torch.Tensor]:
        return conditioning_inputs(self.model, self.head, self.sampler, records)

    def encoder_loss(self) -> tuple[torch.Tensor, dict]:
        from .encoder_pretraining import proxy_loss

        idx = torch.randint(len(self.bank), (self.cfg.batch_size,), generator=self.augment_rng)
        images, targets = self.bank.batch(idx, self.augment_rng)
        return proxy_loss(self.proxy(self.model.image_encoder(images)), targets)

    def ar_loss(self, records: list, image_scale: float = 1.0) -> torch.Tensor:
        m = self.model
        window = m.config.ar.window
        images, points = self.conditioning_inputs(records)
        point_scale = 1.0
        if self.cfg.head_dropout > 0:  # ar_loss is the training loss (evaluation has its own)
            keep = self.rng.random(len(records)) >= self.cfg.head_dropout
            point_scale = torch.as_tensor(keep, dtype=torch.float32)[:, None, None]
        cond = m.condition(images, points, image_scale=image_scale, point_scale=point_scale)
        inputs, targets, positions = [], [], []
        for r in records:
            seq = m.tokenizer.encode(r.ar_points, r.ar_binding).tokens
            if len(seq) - 1 > window:  # a random window starting at a point boundary (or at START)
                num_points = (len(seq) - 2) // 4
                first = int(self.rng.integers(0, max(1, num_points - window // 4 + 2)))
                start = 0 if first == 0 else 1 + 4 * (first - 1)
                seq = seq[start:start + window + 1]
            else:
                start = 0
            inputs.append(torch.as_tensor(seq[:-1]))
            targets.append(torch.as_tensor(seq[1:]))
            positions.append(torch.arange(start, start + len(seq) - 1))
        T = max(len(t) for t in inputs)
        pad = m.tokenizer.pad
        tok = torch.full((len(records), T), pad, dtype=torch.long)
        tgt = torch.full((len(records), T), -100, dtype=torch.long)
        for i, (a, b) in enumerate(zip(inputs, targets)):
            tok[i, : len(a)], tgt[i, : len(b)] = a, b
        pos = torch.stack([torch.arange(int(p[0]), int(p[0]) + T) for p in positions])  # padding runs on; its targets are ignored
        _, logits = m.ar(tok, cond, positions=pos)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)

    def teacher_forced_hidden(self, seq: np.ndarray, cond: torch.Tensor) -> torch.Tensor:
        return teacher_forced_hidden(self.model, seq, cond)

    def decoder_loss(self, records: list) -> tuple[torch.Tensor, dict]:
        m = self.model
        images, points = self.conditioning_inputs(records)
        with torch.no_grad():
            cond = m.condition(images, points)
        total, stats = 0.0, {"l1": 0.0, "ssim": 0.0, "mask": 0.0, "colour": 0.0, "chamfer_cm": 0.0}
        S = self.cfg.render_size
        for b, r in enumerate(records):
            enc = m.tokenizer.encode(r.ar_points, r.ar_binding)
            with torch.no_grad():
                hidden = self.teacher_forced_hidden(enc.tokens, cond[b:b + 1])
            pts = torch.as_tensor(enc.points)
            g = m.decoder(pts[None], hidden[None])
            means, quats = g.means[0], g.quats[0]
            scales, opac = g.log_scales[0].exp(), torch.sigmoid(g.opacity_logits[0])
            colours = (0.5 + SH_C0 * g.sh_dc[0]).clamp_min(0)
            views = self.rng.choice(len(r.images), size=min(self.cfg.views_per_step, len(r.images)), replace=False)
            for v in views:
                full = r.images[v].shape[0]
                K = torch.as_tensor(r.Ks[v], dtype=torch.float32).clone()
                K[:2] *= S / full
                bg = torch.as_tensor(self.rng.random(3), dtype=torch.float32)
                img = torch.as_tensor(r.images[v]).float().permute(2, 0, 1)[None] / 255
                mask = torch.as_tensor(r.masks[v]).float()[None, None] / 255
                img = F.interpolate(img, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
                mask = F.interpolate(mask, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
                # the dataset's own background is replaced by a random one through the matte
                target = img * mask + bg.view(1, 3, 1, 1) * (1 - mask)
                out = rasterize(means, quats, scales, opac, viewmat=torch.as_tensor(r.viewmats[v], dtype=torch.float32),
                                K=K, width=S, height=S, colors=colours, background=bg, backend="torch")
                pred = out.rgb.permute(2, 0, 1)[None]
                l1 = (pred - target).abs().mean()
                s = ssim(pred, target)
                mk = (out.alpha - mask[0, 0]).abs().mean()
                total = total + l1 + 0.5 * (1 - s) + 0.1 * mk
                stats["l1"] += float(l1.detach())
                stats["ssim"] += float(s.detach())
                stats["mask"] += float(mk.detach())
            # 3D terms against the true Gaussians: cheap, strong signals while renders are small
            visible = r.opacity_logits > -3.0
            true_means = r.means[visible]
            tree = cKDTree(true_means)
            _, nearest = tree.query(means.detach().numpy())
            true_rgb = torch.as_tensor(0.5 + SH_C0 * r.sh_dc[visible][nearest], dtype=torch.float32).clamp_min(0)
            colour = (colours - true_rgb).abs().mean()
            true_pos = torch.as_tensor(true_means[nearest])
            _, covering = cKDTree(means.detach().numpy()).query(true_means)
            chamfer = 100 * ((means - true_pos).norm(dim=-1).mean() + (means[covering] - torch.as_tensor(true_means)).norm(dim=-1).mean())
            true_log_scale = torch.as_tensor(r.log_scales[visible][nearest])
            scale = (g.log_scales[0].sort(dim=-1).values - true_log_scale.sort(dim=-1).values).abs().mean()
            total = total + self.cfg.colour_weight * colour + self.cfg.chamfer_weight * chamfer + 0.1 * scale
            stats["colour"] += float(colour.detach())
            stats["chamfer_cm"] += float(chamfer.detach()) / 2
        n = len(records)
        views = n * min(self.cfg.views_per_step, len(records[0].images))
        return total / n, {k: v / (views if k in ("l1", "ssim", "mask") else n) for k, v in stats.items()}

    # ------------------------------------------------------------------ loop
    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        progress = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def run(self, should_stop=lambda: False) -> None:
        c = self.cfg
        log_path = sidecar(c.output, ".log.csv")
        started = time.perf_counter()
        while self.step < c.steps and not should_stop():
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            t0 = time.perf_counter()
            records = self._records() if c.stage != "encoder" else []
            if c.stage == "encoder":
                loss, extra = self.encoder_loss()
            elif c.stage == "ar":
                loss, extra = self.ar_loss(records), {}
            else:
                loss, extra = self.decoder_loss(records)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
            self.optimizer.step()
            self.step += 1
            row = {"stage": c.stage, "step": self.step, "loss": float(loss.detach()), "lr": self.lr_at(self.step - 1),
                   "seconds": round(time.perf_counter() - t0, 3), **{k: round(v, 5) for k, v in extra.items()}}
            self.history.append(row)
            _append_csv(log_path, row)
            if self.step % c.log_every == 0 or self.step == 1:
                self.log(json.dumps(row))
            if self.step % c.save_every == 0 or self.step == c.steps:
                self.save()
        if self.history and self.step % c.save_every:
            self.save()
        self.log(f"{c.stage}: {self.step} steps, {time.perf_counter() - started:.0f} s this run")


def conditioning_inputs(model: Generator, head: HeadModel, sampler: SurfaceSampler,
                        records: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, S, S), head points (B, M, 6)) from each subject's portrait view (view 0)."""
    size = model.config.image.image_size
    images = torch.stack([torch.as_tensor(r.images[0]).permute(2, 0, 1).float() / 255 for r in records])
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    shapes = torch.as_tensor(np.stack([r.shape for r in records]), dtype=torch.float32)
    with torch.no_grad():
        points = sampler(head.identity_vertices(shapes))
    return images, points


def windowed_passes(model: Generator, tokens: torch.Tensor, cond: torch.Tensor):
    """Teacher-forced passes over a whole sequence (n,) in windows that overlap by half, each starting
    at a point boundary; yields (first, last, hidden, logits) for positions first..last-1, each position
    once, with as much context as the window allows."""
    window = model.config.ar.window
    n = len(tokens)
    done = start = 0
    while done < n:
        end = min(n, start + window)
        h, logits = model.ar(tokens[None, start:end], cond, positions=torch.arange(start, end))
        yield done, end, h[0, done - start:], logits[0, done - start:]
        done = end
        start = max(0, end - window // 2)
        start = start if start == 0 else 1 + 4 * ((start - 1) // 4)


def teacher_forced_hidden(model: Generator, seq: np.ndarray, cond: torch.Tensor) -> torch.Tensor:
    """Last hidden states (P, 4, d) of every point's tokens in a START ... END sequence."""
    tokens = torch.as_tensor(seq[:-1])
    hidden = torch.empty(len(tokens), model.config.ar.dim)
    for first, last, h, _ in windowed_passes(model, tokens, cond):
        hidden[first:last] = h
    P = (len(tokens) - 1) // 4
    return hidden[1:1 + 4 * P].reshape(P, 4, -1)


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
