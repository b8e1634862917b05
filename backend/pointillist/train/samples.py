"""Periodic sample renders during training: one fixed held-out subject, target view | decoded avatar.

The avatar is decoded from the subject's true AR points with the AR model's teacher-forced hidden states
(what the decoder trains on), so the picture shows how the decoder and the hidden states it reads are
doing without waiting for a full autoregressive sample. The view is the subject's first novel view (not
the portrait the model was conditioned on), on white, as `pointillist evaluate` renders it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..head.model import HeadModel
from ..model.generator import Generator
from ..model.point_encoder import SurfaceSampler
from ..model.portrait_probe import PortraitView
from .eval_reenact import GaussianArrays, render_view, target_view


def heldout_subject(dataset):
    """The first held-out subject (training never sees it); the first training one if no split exists.
    `dataset(split)` opens a split (the trainer's, so shards kept elsewhere are found)."""
    held = dataset("heldout")
    return held[0] if len(held) else dataset("train")[0]


def sample_sheet(model: Generator, head: HeadModel, sampler: SurfaceSampler, record, size: int = 128) -> np.ndarray:
    """(size, 2·size + 4, 3) uint8: target view | render of the decoded avatar, a grey bar between."""
    from ..model.teacher_forcing import teacher_forced_hidden
    from .train_generator import conditioning_inputs

    view = 1 if record.num_views > 1 else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            images, points, probe = conditioning_inputs(model, head, sampler, [record])
            cond = model.condition(images.to(device), points.to(device), head_probe=None if probe is None else probe.to(device))
            enc = model.tokenizer.encode(record.ar_points, record.ar_binding)
            hidden = teacher_forced_hidden(model, enc.tokens, cond)
            g = model.decode(torch.as_tensor(enc.points, device=device), hidden, enc.binding,
                             PortraitView.from_record(record), head)
            arrays = GaussianArrays.from_decoder(g, enc.binding, model.config.decoder.gaussians_per_point)
            render = render_view(arrays, record, view, size, head)  # posed like the view when it was posed
    finally:
        model.train(was_training)
    target = target_view(record, view, size)
    bar = torch.full((size, 4, 3), 0.5)
    return (torch.cat([target, bar, render], dim=1).numpy() * 255).round().astype(np.uint8)
