"""`pointillist train encoder|ar|decoder|joint`: the training loops, from one CPU to many GPUs and hosts.

* `encoder`: pre-trains the image encoder on renders with proxy targets (`encoder_pretraining.py`);
  no pretrained DINOv2 exists here, and trained jointly with the AR model it learned nothing.
* `ar`: teacher-forced cross-entropy over token windows (the paper's sliding-window training), the
  head-point encoder trained jointly with the AR transformer; the image encoder is frozen, as in the paper,
  when it was pre-trained (`encoder` stage) or comes from Meta's DINOv2 file (`--dinov2-weights`), and
  trained jointly otherwise.
* `decoder`: everything else frozen; the Gaussian decoder turns ground-truth points + the AR model's
  teacher-forced hidden states into Gaussians, rendered differentiably against the dataset's views
  (L1 + 0.5 (1 - SSIM) + 0.1 mask term) plus 3D terms toward the nearest true Gaussians.
* `joint`: both losses end to end, `ar_weight · CE + decoder_weight · decoder loss`: the decoder reads the
  AR model's teacher-forced hidden states *with* their gradients, so the photometric loss also shapes the
  transformer. The CE runs over the same full-sequence windowed passes that give the decoder its hidden
  states (no second forward).

Every loss is a mean over samples of a per-sample loss, so gradient accumulation (`accumulate`) and DDP's
gradient averaging over ranks give the update one process would get from the whole global batch
(`batch_size × accumulate × world size`; `distributed.py` decides which subjects each rank draws).
Per-sample randomness (token window, head dropout, views, backgrounds) is keyed by the sample's position
in the data stream, so it does not depend on which rank or micro-batch draws it, and resuming is exact.

Checkpoints are safetensors (`model/checkpoint.py`), always written from CPU copies and read with
`device="cpu"`, so a GPU-trained checkpoint loads on a CPU. The optimizer state, step and fp16 loss scale
go to a sidecar `<checkpoint>.train.safetensors` so a stopped run resumes where it was; scalars go to
`<checkpoint>.log.csv` and TensorBoard events in `<checkpoint>.tb/`; `sample_every` writes
`<checkpoint>.samples/step_NNNNNN.png`. Only rank 0 writes any of them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from ..avatar.animate import AvatarAnimator
from ..head.model import HeadModel
from ..model.checkpoint import load_generator, save_generator
from ..model.config import GeneratorConfig
from ..model.generator import Generator
from ..model.point_encoder import SurfaceSampler
from ..model.portrait_probe import PortraitView, ray_probe_features
from ..model.teacher_forcing import teacher_forced_hidden, teacher_forced_pass
from ..render.rasterize import rasterize
from ..render.sh import SH_C0
from .distributed import DEFAULT_TIMEOUT_S, DistContext, global_batch
from .eval_reenact import GaussianArrays, make_avatar
from .losses import ssim
from .precision import PRECISIONS, Precision, resolve_precision

STAGES = ("encoder", "ar", "decoder", "joint")
_SAMPLE_STREAM = 0x5A3F  # keys the per-sample random generators apart from other seeded streams


@dataclass
class TrainConfig:
    stage: str
    data: str
    output: str  # checkpoint path (.safetensors)
    init: str | None = None  # start from this checkpoint (the decoder stage needs the AR one)
    steps: int = 1000
    batch_size: int = 4  # per rank and micro-batch
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 50
    save_every: int = 50
    log_every: int = 10
    sample_every: int = 0  # 0: no sample renders
    seed: int = 0
    render_size: int = 64
    views_per_step: int = 1
    colour_weight: float = 0.5
    chamfer_weight: float = 0.5
    #: joint stage: weights of the AR cross-entropy and of the decoder loss (CE ≈ 3 and decoder ≈ 1-2
    #: when an AR checkpoint starts the joint stage, so equal weights keep both in play)
    ar_weight: float = 1.0
    decoder_weight: float = 1.0
    dinov2_weights: str | None = None
    #: AR stage: probability of hiding a sample's head-mesh tokens, so the transformer must read the image
    #: (the fitted head explains the face so well that the image is otherwise ignored; hair is only in the image).
    head_dropout: float = 0.0
    #: decoder/joint stage: the decoder also reads the portrait under each point (`model.portrait_probe`);
    #: an --init checkpoint whose decoder lacks it is warm-started (`with_probe`)
    decoder_probe: bool = False
    #: ar/joint stage: the head-point encoder also reads the portrait along rays out of the head
    #: (`portrait_probe.ray_probe_features`); an --init checkpoint without it is warm-started (`with_head_probe`)
    head_probe: bool = False
    #: ar/joint stage with a probing head-point encoder: weight of its ray-occupancy loss (`ray_occupancy_loss`)
    ray_weight: float = 0.5
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    tensorboard: bool = True
    dist_timeout_s: float = DEFAULT_TIMEOUT_S
    #: where shards also live (other disks, or http(s) hosts) when they are not beside index.json; downloads
    #: go to shard_cache and are checked against the index's size and sha256 (`streaming.ShardStore`)
    shard_roots: list[str] = field(default_factory=list)
    shard_cache: str | None = None
    model: dict = field(default_factory=dict)  # GeneratorConfig JSON overrides for a fresh model
    #: decoder stage: files from `pointillist dataset sample-points` (the AR model's own sequences for training
    #: subjects). The stage then trains on those subjects, each sample decoded from the generator's points with
    #: probability `generated_fraction` (else from the true ones), so the decoder learns on the points it will
    #: be given at creation, not only on the true ones (`generated_points.py`)
    generated_points: list[str] = field(default_factory=list)
    generated_fraction: float = 0.5

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not 0.0 <= self.head_dropout <= 1.0:
            raise ValueError(f"head_dropout must be a probability in [0, 1], got {self.head_dropout}")
        for name in ("steps", "batch_size", "accumulate", "save_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.sample_every < 0:
            raise ValueError(f"sample_every must be 0 (off) or positive, got {self.sample_every}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.ar_weight < 0 or self.decoder_weight < 0 or self.ar_weight + self.decoder_weight == 0:
            raise ValueError("ar_weight and decoder_weight must be ≥ 0 and not both 0")
        if not 0.0 <= self.generated_fraction <= 1.0:
            raise ValueError(f"generated_fraction must be a probability in [0, 1], got {self.generated_fraction}")
        if self.generated_points and self.stage != "decoder":
            raise ValueError("generated points train the decoder: use them with the decoder stage")


#: a ray point counts as occupied when an avatar point lies this close (the targets' voxel is 18 mm)
RAY_HIT_M = 0.015


def sidecar(output: str | os.PathLike, suffix: str) -> Path:
    p = Path(output)
    return p.with_name(p.name.removesuffix(".safetensors") + suffix)


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The random generator of the sample at `position` of the data stream (same on any rank)."""
    return np.random.default_rng([seed, _SAMPLE_STREAM, position])


class _StageLoss(torch.nn.Module):
    """The trainable modules and the stage's loss as one forward, so DistributedDataParallel can wrap it
    (DDP syncs gradients of what its wrapped module's forward used)."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.model = trainer.model
        if trainer.cfg.stage == "encoder":
            self.proxy = trainer.proxy
        object.__setattr__(self, "_loss", trainer.batch_loss)  # not a submodule

    def forward(self, batch: list[tuple[int, int]]) -> tuple[torch.Tensor, dict]:
        return self._loss(batch)


class Trainer:
    def __init__(self, config: TrainConfig, head: HeadModel | None = None, log=print, dist: DistContext | None = None):
        self.cfg = config
        self.dist = dist if dist is not None else DistContext.from_env(config.device, config.dist_timeout_s)
        self.device = self.dist.device
        self.log = log if self.dist.is_main else (lambda line: None)
        self.precision = Precision(resolve_precision(config.precision, self.device), self.device)
        self.head = head or HeadModel.load()
        self.data = self.dataset("train")
        if len(self.data) == 0:
            raise ValueError(f"{config.data}: no training subjects")
        torch.manual_seed(config.seed)  # every rank builds the same fresh model
        self.model, self.info = self._initial_model()
        self.sampler = SurfaceSampler(self.head.data, self.model.config.points.num_points, seed=0)
        self.generated = self._generated_points()
        if config.stage == "encoder":
            self._setup_encoder_stage()
        self.model.to(self.device)
        if config.stage == "encoder":
            self.proxy.to(self.device)
        self.trainable = self._trainable()
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
        self.step = 0
        self.history: list[dict] = []
        self._resume()
        self.dist.require_same(self.step, "the step to resume from")
        self.loss_module = _StageLoss(self)
        self.ddp = None
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # the ViT's class token gets a strided gradient; DDP copies it into its bucket (harmless, only slower)
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

            # every trainable parameter takes part in every forward (unused ones are frozen in _trainable), so
            # the cheaper find_unused_parameters=False holds; buffers are identical constants on every rank
            self.ddp = DistributedDataParallel(self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                               forward_sync_buffers=False, find_unused_parameters=False)

    @property
    def effective_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.accumulate * self.dist.world_size

    # ------------------------------------------------------------------ set-up
    def dataset(self, split: str):
        """A split of the training data, its shards found beside index.json or in `shard_roots`."""
        from .dataset import SubjectDataset

        if not self.cfg.shard_roots:
            return SubjectDataset(self.cfg.data, split)
        from .streaming import ShardStore

        store = ShardStore(self.cfg.data, self.cfg.shard_roots, cache_dir=self.cfg.shard_cache)
        return SubjectDataset(self.cfg.data, split, locate=store.path)

    def _generated_points(self) -> dict:
        from .generated_points import load_generated

        sequences = {}
        for path in self.cfg.generated_points:
            found, meta = load_generated(path)
            self.log(f"{path}: the generator's own sequences for {len(found)} subjects (from {meta.get('checkpoint')})")
            sequences.update(found)
        if sequences:  # the stage trains on the subjects that have them (a fraction of them from true points)
            self.data.restrict(sequences)
        return sequences

    def _initial_model(self) -> tuple[Generator, dict]:
        cfg = self.cfg
        resume = Path(cfg.output)
        self.resuming = resume.exists() and sidecar(resume, ".train.safetensors").exists()
        if self.resuming:
            model, info = load_generator(resume)  # always read onto the CPU, then moved
            return model.train(), info
        if cfg.init:
            model, info = load_generator(cfg.init)
            if cfg.decoder_probe and not model.config.decoder.probe:
                if cfg.stage not in ("decoder", "joint"):
                    raise ValueError("--decoder-probe adds a decoder input: use it with the decoder or joint stage")
                with_probe(model)
            if cfg.head_probe and not model.config.points.probe:
                if cfg.stage not in ("ar", "joint"):
                    raise ValueError("--head-probe adds an input to the AR model's conditioning: use it with the ar or joint stage")
                with_head_probe(model)
            return model.train(), info
        if cfg.stage == "decoder":
            raise ValueError("the decoder stage starts from a trained AR checkpoint: pass --init")
        base = GeneratorConfig().to_json()
        for part, values in cfg.model.items():
            base[part].update(values) if isinstance(values, dict) else base.__setitem__(part, values)
        base["decoder"]["probe"] = base["decoder"]["probe"] or cfg.decoder_probe
        base["points"]["probe"] = base["points"]["probe"] or cfg.head_probe
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
        self.heldout_bank = ViewBank(self.dataset("heldout"), size, box, views="portrait",
                                     count_stats=self.bank.count_stats, log=self.log)
        self.proxy = ProxyHeads(self.model.config.image.dim)

    @property
    def image_encoder_frozen(self) -> bool:
        """The AR stage keeps a pre-trained image encoder fixed (the paper freezes DINOv2)."""
        return bool(self.cfg.dinov2_weights) or "encoder" in self.info

    def _trainable(self) -> list[torch.nn.Parameter]:
        """The optimizer's parameter list (its order indexes the resume sidecar, so it never changes).
        Parameters no forward uses (DINOv2's mask token) stay in the list but frozen, which DDP needs."""
        m = self.model
        for p in m.parameters():
            p.requires_grad_(False)
        stage = self.cfg.stage
        if stage == "encoder":
            params = list(m.image_encoder.parameters()) + list(self.proxy.parameters())
        elif stage in ("ar", "joint"):
            parts = [m.point_encoder, m.image_proj, m.point_proj, m.ar]
            if not self.image_encoder_frozen:
                parts.append(m.image_encoder)
            if stage == "joint":
                parts.append(m.decoder)
            params = [m.source_emb] + [p for part in parts for p in part.parameters()]
        else:
            params = list(m.decoder.parameters())
        for p in params:
            p.requires_grad_(True)
        m.image_encoder.mask_token.requires_grad_(False)
        if m.point_encoder.ray_occupancy is not None and not (stage in ("ar", "joint") and self.cfg.ray_weight > 0):
            m.point_encoder.ray_occupancy.requires_grad_(False)  # no loss reads it in this run
        return params

    def _resume(self) -> None:
        state_path = sidecar(self.cfg.output, ".train.safetensors")
        if not (Path(self.cfg.output).exists() and state_path.exists()):
            return
        meta, tensors = read_train_state(state_path)
        if meta.get("stage") != self.cfg.stage:
            raise ValueError(f"{state_path}: a {meta.get('stage')!r} run; cannot resume it as {self.cfg.stage!r}")
        if self.cfg.stage == "encoder":
            self.proxy.load_state_dict({k.removeprefix("proxy."): v for k, v in tensors.items() if k.startswith("proxy.")})
        saved = self.info.get(self.cfg.stage) or {}
        saved_step = saved.get("step")
        if saved_step is not None and int(saved_step) != int(meta["step"]):
            raise ValueError(f"{state_path}: resume state at step {meta['step']} but {self.cfg.output} at step "
                             f"{saved_step} (the run stopped between the two writes); start a new --output with "
                             f"--init {self.cfg.output}")
        load_optimizer_state(self.optimizer, tensors, self.trainable)
        saved_batch = saved.get("effective_batch")
        if saved_batch is not None and int(saved_batch) != self.effective_batch:
            self.log(f"warning: resuming with an effective batch of {self.effective_batch} where the run used "
                     f"{saved_batch}: the data stream continues from step x batch, so some subjects are skipped "
                     f"or seen twice in this epoch")
        if self.precision.load_state_json(meta.get("scaler", "")):
            self.log(f"resumed the fp16 loss scale at {self.precision.scaler.get_scale():g}")
        self.step = int(meta["step"])
        torch.manual_seed(self.cfg.seed + self.step)
        self.log(f"resumed {self.cfg.stage} at step {self.step}")

    def save(self) -> None:
        """Checkpoint + resume sidecar (rank 0 only; both from CPU copies, written atomically)."""
        if not self.dist.is_main:
            return
        from safetensors.torch import save

        stage = {"step": self.step, "config": asdict(self.cfg), "final_loss": self.history[-1]["loss"] if self.history else None,
                 "world_size": self.dist.world_size, "effective_batch": self.effective_batch, "precision": self.precision.mode,
                 "device": self.device.type}
        if self.cfg.stage == "encoder":
            from .encoder_pretraining import proxy_metrics

            stage["heldout"] = proxy_metrics(self.model.image_encoder, self.proxy, self.heldout_bank)
            stage["count_stats"] = list(self.bank.count_stats)
            self.log(json.dumps({"encoder_heldout": stage["heldout"], "step": self.step}))
        save_generator(self.cfg.output, self.model, {**self.info, self.cfg.stage: stage})
        tensors = {f"proxy.{k}": v for k, v in self.proxy.state_dict().items()} if self.cfg.stage == "encoder" else {}
        tensors.update(optimizer_tensors(self.optimizer))
        meta = {"stage": self.cfg.stage, "step": str(self.step), "precision": self.precision.mode}
        if self.precision.scaler:
            meta["scaler"] = self.precision.state_json()
        payload = save(cpu_tensors(tensors), metadata=meta)
        from ..atomic import atomic_write

        atomic_write(sidecar(self.cfg.output, ".train.safetensors"), lambda f: f.write(payload))

    # ------------------------------------------------------------------ batches
    def micro_batches(self, step: int) -> list[list[tuple[int, int]]]:
        """This rank's `accumulate` micro-batches of (stream position, item index) at `step`."""
        n = len(self.bank) if self.cfg.stage == "encoder" else len(self.data)
        return global_batch(n, self.cfg.seed, step, self.cfg.batch_size, self.cfg.accumulate,
                            self.dist.world_size, self.dist.rank)

    def batch_loss(self, batch: list[tuple[int, int]]) -> tuple[torch.Tensor, dict]:
        """The stage's loss over one micro-batch (the forward DDP wraps)."""
        if self.cfg.stage == "encoder":
            return self.encoder_loss(batch)
        records = [self.data[i] for _, i in batch]
        rngs = [sample_rng(self.cfg.seed, pos) for pos, _ in batch]
        if self.cfg.stage == "ar":
            ce = self.ar_loss(records, rngs)
            if not self._trains_rays:
                return ce, {}
            rays = self.ray_occupancy_loss(records)
            return ce + self.cfg.ray_weight * rays, {"ar_ce": float(ce.detach()), "ray_bce": float(rays.detach())}
        if self.cfg.stage == "decoder":
            return self.decoder_loss(records, rngs)
        return self.joint_loss(records, rngs)

    def conditioning_inputs(self, records: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        images, points, probe = conditioning_inputs(self.model, self.head, self.sampler, records)
        return images.to(self.device), points.to(self.device), None if probe is None else probe.to(self.device)

    @property
    def _trains_rays(self) -> bool:
        return self.model.config.points.probe and self.cfg.ray_weight > 0

    def ray_occupancy_loss(self, records: list) -> torch.Tensor:
        """BCE of the head-point encoder's ray-occupancy logits against the truth: is there an avatar point
        within `RAY_HIT_M` of each head sample's ray point (rest pose, token space)?

        Why: through the AR cross-entropy alone, the probe's zero-initialised weights moved ~1e-3 in 700
        steps and the held-out loss did not notice them (it changed by 1e-4 nats). This dense, directly
        predictable target makes the head tokens carry what the rays say about hair volume, where the AR
        transformer already looks."""
        from ..model.portrait_probe import RAY_DISTANCES

        _, points, probe = self.conditioning_inputs(records)
        dist = torch.as_tensor(RAY_DISTANCES, dtype=torch.float32)
        targets = []
        for r, p in zip(records, points.cpu()):
            rays = p[None, :, :3] + dist[:, None, None] * p[None, :, 3:]  # (D, M, 3)
            near, _ = cKDTree(np.asarray(r.ar_points, np.float64)).query(rays.reshape(-1, 3).numpy(), k=1)
            targets.append(torch.as_tensor(near < RAY_HIT_M, dtype=torch.float32).reshape(len(dist), -1).T)
        target = torch.stack(targets).to(self.device)  # (B, M, D)
        enc = self.model.point_encoder
        with self.precision.autocast():
            logits = enc.ray_occupancy(enc(points, probe))
        with self.precision.full_precision():
            return F.binary_cross_entropy_with_logits(logits.float(), target)

    def _rngs(self, records: list, rngs: list | None) -> list[np.random.Generator]:
        return rngs if rngs is not None else [sample_rng(self.cfg.seed, i) for i in range(len(records))]

    def _point_scale(self, rngs: list) -> float | torch.Tensor:
        """Head dropout: per sample, zero the head-mesh tokens with probability `head_dropout`."""
        if self.cfg.head_dropout <= 0:
            return 1.0
        keep = [rng.random() >= self.cfg.head_dropout for rng in rngs]
        return torch.as_tensor(keep, dtype=torch.float32, device=self.device)[:, None, None]

    def encoder_loss(self, batch: list[tuple[int, int]]) -> tuple[torch.Tensor, dict]:
        from .encoder_pretraining import proxy_loss

        idx = torch.as_tensor([i for _, i in batch])
        # augmentation randomness keyed by the first stream position: independent of rank and resumable
        augment = torch.Generator().manual_seed(int(np.random.SeedSequence([self.cfg.seed, _SAMPLE_STREAM, batch[0][0]]).generate_state(1)[0]))
        images, targets = self.bank.batch(idx, augment)
        images = images.to(self.device)
        targets = type(targets)(*(getattr(targets, f).to(self.device) for f in targets.__dataclass_fields__))
        with self.precision.autocast():
            pred = self.proxy(self.model.image_encoder(images))
        with self.precision.full_precision():
            return proxy_loss({k: v.float() for k, v in pred.items()}, targets)

    def ar_loss(self, records: list, rngs: list | None = None, image_scale: float = 1.0) -> torch.Tensor:
        """Teacher-forced CE over one random window per sample: mean over samples of each one's token mean."""
        m = self.model
        rngs = self._rngs(records, rngs)
        window = m.config.ar.window
        images, points, probe = self.conditioning_inputs(records)
        inputs, targets, starts = [], [], []
        for r, rng in zip(records, rngs):
            seq = m.tokenizer.encode(r.ar_points, r.ar_binding).tokens
            if len(seq) - 1 > window:  # a random window starting at a point boundary (or at START)
                num_points = (len(seq) - 2) // 4
                first = int(rng.integers(0, max(1, num_points - window // 4 + 2)))
                start = 0 if first == 0 else 1 + 4 * (first - 1)
                seq = seq[start:start + window + 1]
            else:
                start = 0
            inputs.append(torch.as_tensor(seq[:-1]))
            targets.append(torch.as_tensor(seq[1:]))
            starts.append(start)
        point_scale = self._point_scale(rngs)
        T = max(len(t) for t in inputs)
        pad = m.tokenizer.pad
        tok = torch.full((len(records), T), pad, dtype=torch.long)
        tgt = torch.full((len(records), T), -100, dtype=torch.long)
        for i, (a, b) in enumerate(zip(inputs, targets)):
            tok[i, : len(a)], tgt[i, : len(b)] = a, b
        pos = torch.stack([torch.arange(s, s + T) for s in starts])  # padding runs on; its targets are ignored
        tok, tgt, pos = tok.to(self.device), tgt.to(self.device), pos.to(self.device)
        with self.precision.autocast():
            cond = m.condition(images, points, image_scale=image_scale, point_scale=point_scale, head_probe=probe)
            _, logits = m.ar(tok, cond, positions=pos)
        with self.precision.full_precision():
            ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="none")
            valid = (tgt >= 0).float()
            return ((ce.reshape(tgt.shape) * valid).sum(1) / valid.sum(1).clamp_min(1)).mean()

    def teacher_forced_hidden(self, seq: np.ndarray, cond: torch.Tensor) -> torch.Tensor:
        return teacher_forced_hidden(self.model, seq, cond)

    def decoder_loss(self, records: list, rngs: list | None = None) -> tuple[torch.Tensor, dict]:
        """Photometric + 3D loss of the decoder on teacher-forced hidden states of a frozen AR model."""
        m = self.model
        rngs = self._rngs(records, rngs)
        images, points, probe = self.conditioning_inputs(records)
        total, stats = 0.0, {}
        with torch.no_grad(), self.precision.autocast():
            cond = m.condition(images, points, head_probe=probe)
        for b, (r, rng) in enumerate(zip(records, rngs)):
            own = self.generated.get(r.subject_id)
            # a subject whose every written point was refused has nothing to decode: its true points stand in
            use_own = own is not None and bool(own.kept.any()) and rng.random() < self.cfg.generated_fraction
            if use_own:  # what create decodes: the kept points, hidden states from the context they were written in
                tokens, kept = own.written, torch.as_tensor(own.kept)
                pts, binding = m.tokenizer.decode(own.kept_tokens())
            else:
                enc = m.tokenizer.encode(r.ar_points, r.ar_binding)
                tokens, kept, pts, binding = enc.tokens, slice(None), enc.points, enc.binding
            with torch.no_grad(), self.precision.autocast():
                hidden = teacher_forced_hidden(m, tokens, cond[b:b + 1])[kept]
            loss, s = self._decoder_sample_loss(r, pts, binding, hidden, rng)
            if self.generated:  # the share of samples decoded from the generator's own points
                s["generated"] = float(use_own)
            total = total + loss
            _accumulate(stats, s)
        n = len(records)
        return total / n, {k: v / n for k, v in stats.items()}

    def joint_loss(self, records: list, rngs: list | None = None) -> tuple[torch.Tensor, dict]:
        """`ar_weight · CE + decoder_weight · decoder loss`, per sample, gradients through both models.

        The CE covers each sample's whole sequence (from the same windowed passes whose hidden states the
        decoder reads), so it is the full-sequence teacher-forced loss, not one random window's."""
        m, c = self.model, self.cfg
        rngs = self._rngs(records, rngs)
        images, points, probe = self.conditioning_inputs(records)
        with self.precision.autocast():
            cond = m.condition(images, points, point_scale=self._point_scale(rngs), head_probe=probe)
        total, stats = 0.0, {}
        for b, (r, rng) in enumerate(zip(records, rngs)):
            enc = m.tokenizer.encode(r.ar_points, r.ar_binding)
            with self.precision.autocast():
                hidden, logits = teacher_forced_pass(m, enc.tokens, cond[b:b + 1])
            with self.precision.full_precision():
                ce = F.cross_entropy(logits.float(), torch.as_tensor(enc.tokens[1:], device=self.device))
            dec, s = self._decoder_sample_loss(r, enc.points, enc.binding, hidden, rng)
            total = total + c.ar_weight * ce + c.decoder_weight * dec
            _accumulate(stats, {"ar_ce": float(ce.detach()), "decoder": float(dec.detach()), **s})
        n = len(records)
        total, stats = total / n, {k: v / n for k, v in stats.items()}
        if self._trains_rays:
            rays = self.ray_occupancy_loss(records)
            total, stats["ray_bce"] = total + self.cfg.ray_weight * rays, float(rays.detach())
        return total, stats

    def _decoder_sample_loss(self, r, ar_points: np.ndarray, ar_binding: np.ndarray, hidden: torch.Tensor,
                             rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        """One subject: decode, render `views_per_step` views (fp32) and compare; 3D terms to the truth."""
        m, dev = self.model, self.device
        pts = torch.as_tensor(ar_points, device=dev)
        with self.precision.autocast():
            g = m.decode(pts, hidden, ar_binding, PortraitView.from_record(r), self.head)
        S = self.cfg.render_size
        stats = {"l1": 0.0, "ssim": 0.0, "mask": 0.0}
        with self.precision.full_precision():
            means, quats = g.means[0].float(), g.quats[0].float()
            log_scales = g.log_scales[0].float()
            scales, opac = log_scales.exp(), torch.sigmoid(g.opacity_logits[0].float())
            colours = (0.5 + SH_C0 * g.sh_dc[0].float()).clamp_min(0)
            views = rng.choice(len(r.images), size=min(self.cfg.views_per_step, len(r.images)), replace=False)
            animator = None
            photo = 0.0
            for v in views:
                view_means, view_quats = means, quats
                if r.is_posed(v):  # engine v2's portrait, every real capture: pose the decoded Gaussians like the photo
                    animator = animator or self._animator(r, g, ar_binding)
                    expression = r.expressions[v] if r.expressions.shape[1] else None
                    posed_means, posed_quats, _ = animator.pose_tensors(means, quats, expression, r.poses[v])
                    view_means, view_quats = posed_means[0], posed_quats[0]
                full = r.images[v].shape[0]
                K = torch.as_tensor(r.Ks[v], dtype=torch.float32).clone()
                K[:2] *= S / full
                bg = torch.as_tensor(rng.random(3), dtype=torch.float32, device=dev)
                img = torch.as_tensor(r.images[v], device=dev).float().permute(2, 0, 1)[None] / 255
                mask = torch.as_tensor(r.masks[v], device=dev).float()[None, None] / 255
                img = F.interpolate(img, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
                mask = F.interpolate(mask, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
                # the dataset's own background is replaced by a random one through the matte
                target = img * mask + bg.view(1, 3, 1, 1) * (1 - mask)
                out = rasterize(view_means, view_quats, scales, opac, viewmat=torch.as_tensor(r.viewmats[v], dtype=torch.float32, device=dev),
                                K=K.to(dev), width=S, height=S, colors=colours, background=bg, backend="torch")
                pred = out.rgb.permute(2, 0, 1)[None]
                l1 = (pred - target).abs().mean()
                s = ssim(pred, target)
                mk = (out.alpha - mask[0, 0]).abs().mean()
                photo = photo + l1 + 0.5 * (1 - s) + 0.1 * mk
                stats["l1"] += float(l1.detach()) / len(views)
                stats["ssim"] += float(s.detach()) / len(views)
                stats["mask"] += float(mk.detach()) / len(views)
            # 3D terms against the true Gaussians: cheap, strong signals while renders are small
            visible = r.opacity_logits > -3.0
            true_means = r.means[visible]
            means_np = means.detach().cpu().numpy()
            _, nearest = cKDTree(true_means).query(means_np)
            true_rgb = torch.as_tensor(0.5 + SH_C0 * r.sh_dc[visible][nearest], dtype=torch.float32, device=dev).clamp_min(0)
            colour = (colours - true_rgb).abs().mean()
            true_pos = torch.as_tensor(true_means[nearest], device=dev)
            _, covering = cKDTree(means_np).query(true_means)
            chamfer = 100 * ((means - true_pos).norm(dim=-1).mean()
                             + (means[torch.as_tensor(covering, device=dev)] - torch.as_tensor(true_means, device=dev)).norm(dim=-1).mean())
            true_log_scale = torch.as_tensor(r.log_scales[visible][nearest], device=dev)
            scale = (log_scales.sort(dim=-1).values - true_log_scale.sort(dim=-1).values).abs().mean()
            loss = photo / len(views) + self.cfg.colour_weight * colour + self.cfg.chamfer_weight * chamfer + 0.1 * scale
        stats["colour"] = float(colour.detach())
        stats["chamfer_cm"] = float(chamfer.detach()) / 2
        return loss, stats

    def _animator(self, r, g, ar_binding: np.ndarray) -> AvatarAnimator:
        """The rig of the decoded Gaussians (each point's triangle, barycentrics on the subject's identity mesh),
        built from detached values: posing with it stays differentiable in the Gaussians themselves."""
        arrays = GaussianArrays.from_decoder(g, ar_binding, g.means.shape[1] // len(ar_binding))
        return AvatarAnimator(make_avatar(arrays, self.head, r.shape), self.head, device=self.device)

    # ------------------------------------------------------------------ loop
    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        progress = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def train_step(self) -> dict:
        """One optimizer step over `accumulate` micro-batches; returns the step's row (rank means)."""
        c = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        t0 = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        micro = self.micro_batches(self.step)
        forward = self.ddp if self.ddp is not None else self.loss_module
        sums: dict[str, float] = {}
        for a, batch in enumerate(micro):
            last = a == len(micro) - 1
            with (self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()):
                loss, extra = forward(batch)
                self.precision.backward(loss / len(micro))  # the mean over micro-batches
            _accumulate(sums, {"loss": float(loss.detach()), **extra})
        self.precision.unscale(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, 1.0))
        self.precision.step(self.optimizer)
        self.step += 1
        keys = list(sums)
        means = self.dist.mean([sums[k] / len(micro) for k in keys] + [grad_norm])
        row = {"stage": c.stage, "step": self.step, "loss": means[0], "lr": self.lr_at(self.step - 1),
               "seconds": round(time.perf_counter() - t0, 3), "effective_batch": self.effective_batch,
               "grad_norm": round(means[-1], 5), **{k: round(v, 5) for k, v in zip(keys[1:], means[1:-1])}}
        return row

    def run(self, should_stop=lambda: False) -> None:
        from .scalars import ScalarLog

        c = self.cfg
        main = self.dist.is_main
        scalars = None
        if main:
            scalars = ScalarLog(sidecar(c.output, ".log.csv"), sidecar(c.output, ".tb") if c.tensorboard else None, self.step)
        self.log(json.dumps({"stage": c.stage, "from_step": self.step, "steps": c.steps, "world_size": self.dist.world_size,
                             "batch_size": c.batch_size, "accumulate": c.accumulate, "effective_batch": self.effective_batch,
                             "precision": self.precision.mode, "device": str(self.device)}))
        started = time.perf_counter()
        saved_at = self.step
        try:
            while self.step < c.steps and not self._stop(should_stop):
                row = self.train_step()
                self.history.append(row)
                if scalars is not None:
                    scalars.write(row)
                if self.step % c.log_every == 0 or self.step == 1:
                    self.log(json.dumps(row))
                if self.step % c.save_every == 0 or self.step == c.steps:
                    self.save()
                    saved_at = self.step
                if c.sample_every and (self.step % c.sample_every == 0 or self.step == c.steps) and main:
                    self.write_sample(scalars)
            if self.history and saved_at != self.step:
                self.save()
        finally:
            if scalars is not None:
                scalars.close()
        self.log(f"{c.stage}: {self.step} steps, {time.perf_counter() - started:.0f} s this run")

    def _stop(self, should_stop) -> bool:
        """Every rank stops at the same step (any rank asking is enough)."""
        return max(self.dist.mean([float(bool(should_stop()))])) > 0

    def write_sample(self, scalars=None) -> Path:
        """`<checkpoint>.samples/step_NNNNNN.png`: a fixed held-out subject's target view | the render of
        its decoded avatar (decoder on the true AR points and teacher-forced hidden states)."""
        from ..preview import save_png
        from .samples import heldout_subject, sample_sheet

        if not hasattr(self, "_sample_record"):
            self._sample_record = heldout_subject(self.dataset)
        sheet = sample_sheet(self.model, self.head, self.sampler, self._sample_record, size=max(128, self.cfg.render_size))
        path = sidecar(self.cfg.output, ".samples") / f"step_{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(sheet, path)
        if scalars is not None:
            scalars.add_image("sample", sheet, self.step)
        return path


def _accumulate(into: dict, values: dict) -> None:
    for k, v in values.items():
        into[k] = into.get(k, 0.0) + float(v)


# ---------------------------------------------------------------------- resume state (device-free)
def cpu_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: what a safetensors file holds, whatever device trained them."""
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state as flat tensors `{i}.step / {i}.exp_avg / {i}.exp_avg_sq` (i = parameter index)."""
    out = {}
    for i, st in optimizer.state_dict()["state"].items():
        out[f"{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).detach().to("cpu").reshape(1)
        out[f"{i}.exp_avg"] = st["exp_avg"]
        out[f"{i}.exp_avg_sq"] = st["exp_avg_sq"]
    return cpu_tensors(out)


def read_train_state(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a resume sidecar, read onto the CPU whatever device wrote it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         params: list[torch.nn.Parameter]) -> None:
    """Restore AdamW state; `Optimizer.load_state_dict` moves each moment to its parameter's device and
    dtype, so CPU tensors from the file serve a CUDA run and the reverse. State is stored by parameter index,
    so a run whose trainable parameters differ (other options than the run being resumed, e.g. without
    `--dinov2-weights`) is refused rather than given another parameter's moments."""
    saved = {int(k.split(".")[0]) for k in tensors if k.endswith(".exp_avg")}
    wrong = sorted(i for i in saved if i >= len(params) or tensors[f"{i}.exp_avg"].shape != params[i].shape)
    if wrong:
        raise ValueError(f"the resume state does not fit this run's {len(params)} trainable parameters (first "
                         f"mismatch at index {wrong[0]}): resume with the options the run was started with")
    state = optimizer.state_dict()
    for i in range(len(params)):
        if f"{i}.exp_avg" in tensors:
            state["state"][i] = {"step": tensors[f"{i}.step"].reshape(()).clone(), "exp_avg": tensors[f"{i}.exp_avg"],
                                 "exp_avg_sq": tensors[f"{i}.exp_avg_sq"]}
    optimizer.load_state_dict(state)


def _widened(old: torch.nn.Module, new: torch.nn.Module, layer: str) -> torch.nn.Module:
    """`new` carrying all of `old`'s weights, where `layer`'s weight gains zero input columns at its end (the
    added input), so the module computes exactly what `old` did until training moves them."""
    state = new.state_dict()
    for name, value in old.state_dict().items():
        if name == f"{layer}.weight":
            state[name] = torch.cat([value, torch.zeros(value.shape[0], state[name].shape[1] - value.shape[1])], dim=1)
        else:
            state[name] = value
    new.load_state_dict(state)
    return new


def with_probe(model: Generator) -> None:
    """Give a trained decoder the portrait probe in place: every weight is kept and the new input enters
    through zero columns of the fusing layer, so the decoder starts out exactly as it was."""
    from ..model.gaussian_decoder import GaussianDecoder

    model.config.decoder = replace(model.config.decoder, probe=True)
    model.decoder = _widened(model.decoder, GaussianDecoder(model.config.decoder, model.config.tokenizer, model.config.ar.dim), "fuse")


def with_head_probe(model: Generator) -> None:
    """Give a trained head-point encoder the portrait's rays in place, through zero columns of its input
    embedding: the conditioning, and so the AR model, start out exactly as they were."""
    from ..model.point_encoder import PointEncoder

    model.config.points = replace(model.config.points, probe=True)
    model.point_encoder = _widened(model.point_encoder, PointEncoder(model.config.points), "embed")


# ---------------------------------------------------------------------- shared with evaluation
def conditioning_inputs(model: Generator, head: HeadModel, sampler: SurfaceSampler,
                        records: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(images (B, 3, S, S), head points (B, M, 6), ray probe (B, M, F) or None when the head-point encoder
    does not read the portrait) from each subject's portrait view (view 0), on the CPU."""
    size = model.config.image.image_size
    images = torch.stack([torch.as_tensor(r.images[0]).permute(2, 0, 1).float() / 255 for r in records])
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    shapes = torch.as_tensor(np.stack([r.shape for r in records]), dtype=torch.float32)
    with torch.no_grad():
        points = sampler(head.identity_vertices(shapes))
    probe = None
    if model.config.points.probe:
        probe = torch.stack([ray_probe_features(p, sampler.face_index, PortraitView.from_record(r), head)
                             for p, r in zip(points, records)])
    return images, points, probe


