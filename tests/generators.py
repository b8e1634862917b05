"""Tiny generators for tests that drive `create` end to end in seconds.

A random tiny generator writes points all over the box, and `create` rightly refuses what it makes (its
completeness check). `complete_by_fallback` shapes one so that every sampled try ends after one point
(END is the only likely token once a point is whole) and every Gaussian it decodes is opaque: `create` then
goes through its real fallback chain to the fitted head's surface, whose avatar passes the check. Tests of
plumbing (jobs, bundles, the add-on) get a real, complete avatar from the real code path.
"""

from __future__ import annotations

import math

import torch

#: enough points for the fitted head's surface at the training targets' spacing (≈ 610 points)
FALLBACK_POINTS = 700


def tiny_generator(head, **ar_overrides):
    from pointillist.model.config import MODEL_PRESETS, GeneratorConfig
    from pointillist.model.generator import Generator

    torch.manual_seed(0)
    base = GeneratorConfig().to_json()
    for part, values in MODEL_PRESETS["tiny"].items():
        base[part].update(values)
    base["ar"].update(ar_overrides)
    base["tokenizer"]["num_faces"] = head.num_faces
    base["decoder"]["probe"] = True  # the decoder reads the portrait under each point, as the shipped one does
    base["points"]["probe"] = True  # and the head-point tokens read its matte and colour along rays out of the head
    return Generator(GeneratorConfig.from_json(base))


def complete_by_fallback(model):
    """`model`, shaped in place: one point then END per sampled try, opaque Gaussians (see module doc)."""
    ar, end = model.ar, model.tokenizer.end
    with torch.no_grad():
        direction = torch.nn.functional.normalize(torch.randn(ar.config.dim), dim=0) * 5
        ar.norm.weight.zero_()  # every hidden state is `direction`
        ar.norm.bias.copy_(direction)
        ar.tok_emb.weight[end] = 10 * direction  # so END outscores every other token
    return opaque_gaussians(model)


def opaque_gaussians(model):
    """`model`, shaped in place: every Gaussian its decoder makes has opacity sigmoid(4) = 0.98 and twice the
    decoder's base size (so the fitted head's surface also covers hair that lies close to the scalp, as in
    the astronaut portrait)."""
    from pointillist.model.gaussian_decoder import OUT_PER_GAUSSIAN

    with torch.no_grad():
        out = model.decoder.out
        first = torch.arange(model.config.decoder.gaussians_per_point) * OUT_PER_GAUSSIAN
        opacity, scales = first + 10, (first[:, None] + torch.arange(3, 6)).reshape(-1)
        out.weight[opacity] = 0
        out.bias[opacity] = 4.0
        out.weight[scales] = 0
        out.bias[scales] = math.log(2.0)
    return model
