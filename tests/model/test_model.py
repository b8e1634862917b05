"""AR transformer (KV cache, sliding window), grammar sampling, decoder, encoders and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pointillist.model.checkpoint import (
    load_generator,
    read_generator_info,
    save_generator,
)
from pointillist.model.config import (
    ARConfig,
    DecoderConfig,
    GeneratorConfig,
    ImageEncoderConfig,
    PointEncoderConfig,
    TokenizerConfig,
)
from pointillist.model.generator import Generator
from pointillist.model.image_encoder import (
    CheckpointError,
    ImageEncoder,
    load_dinov2_weights,
)
from pointillist.model.point_encoder import SurfaceSampler
from pointillist.model.sampling import Grammar, SamplingOptions, generate, generate_batch
from pointillist.model.tokenizer import PointTokenizer


def tiny_config(window: int = 64, max_points: int = 40, k: int = 2) -> GeneratorConfig:
    return GeneratorConfig(
        tokenizer=TokenizerConfig(num_faces=50),
        image=ImageEncoderConfig(image_size=28, patch_size=14, dim=32, depth=2, heads=2),
        points=PointEncoderConfig(num_points=16, dim=32, depth=1, heads=2, frequencies=2),
        ar=ARConfig(dim=32, depth=2, heads=4, window=window, max_points=max_points),
        decoder=DecoderConfig(dim=32, depth=1, heads=2, frequencies=2, gaussians_per_point=k),
    )


def _model(seed=0, **kw) -> Generator:
    torch.manual_seed(seed)
    model = Generator(tiny_config(**kw)).eval()
    with torch.no_grad():  # random weights far from zero so every path matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _cond(model: Generator, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.condition(torch.rand(1, 3, 28, 28, generator=g), torch.randn(1, 16, 6, generator=g))


@pytest.mark.parametrize("window", [64, 24])  # 24 < sequence length: the sliding window is exercised
def test_kv_cached_decoding_equals_the_uncached_pass(window):
    model = _model(window=window)
    with torch.no_grad():
        cond = _cond(model)
        gen = generate(model.ar, model.tokenizer, cond, SamplingOptions(temperature=0, max_points=12))
        tokens = torch.as_tensor(gen.tokens[:-1])[None]
        _, full = model.ar(tokens, cond)
        cache = model.ar.new_cache(cond)
        _, first = model.ar.prefill(tokens[:, :5], cache)
        steps = [first[0]] + [model.ar.decode_one(tokens[:, i], cache)[1] for i in range(5, tokens.shape[1])]
        cached = torch.cat(steps, dim=0)
    assert (cached - full[0]).abs().max() <= 1e-4
    # greedy generation (which computes only the allowed logits) picked the grammar-masked argmax of the full ones
    grammar = Grammar(model.tokenizer, max_points=12)
    for i, token in enumerate(gen.tokens[1:]):
        allowed = grammar.mask(model.ar.vocab_size)
        assert token == int(full[0, i].masked_fill(~allowed, float("-inf")).argmax())
        if grammar.push(int(token)):
            break
    assert len(gen.binding) >= 1


def test_grammar_masked_sampling_always_decodes():
    model = _model(seed=3)
    tok = model.tokenizer
    with torch.no_grad():
        cond = _cond(model, seed=4)
        for seed in range(6):
            for temperature in (0.0, 1.0, 3.0):
                gen = generate(model.ar, tok, cond, SamplingOptions(temperature=temperature, top_p=1.0, max_points=30, seed=seed))
                points, binding = tok.decode(gen.tokens)  # raises if the grammar let anything through
                assert len(points) == len(gen.binding) == gen.hidden.shape[0] <= 30
                assert gen.tokens[-1] == tok.end
                assert gen.hidden.shape[1:] == (4, 32)


def test_the_first_point_is_taken_at_the_mode_unless_asked_otherwise():
    """The y-z-x order never goes back, so the first point is greedy: every seed, even at a high temperature,
    starts where temperature 0 starts; sampled first points (the option off) differ between seeds."""
    model = _model(seed=3)
    tok = model.tokenizer
    with torch.no_grad():
        cond = _cond(model, seed=4)
        first = lambda **kw: tuple(generate(model.ar, tok, cond, SamplingOptions(top_p=1.0, max_points=2, min_points=2, **kw)).tokens[1:5])
        greedy = first(temperature=0.0)
        assert {first(temperature=3.0, seed=s) for s in range(5)} == {greedy}
        assert len({first(temperature=3.0, seed=s, greedy_first_point=False) for s in range(5)}) > 1


def test_grammar_never_leaves_a_slot_without_a_legal_token():
    tok = PointTokenizer(TokenizerConfig(num_faces=5))
    L = tok.levels
    g = Grammar(tok, max_points=10)
    for token in (L - 1, L - 1, L - 1, tok.bind_offset):  # a point in the far corner of the box
        g.push(token)
    lo, hi, end = g.allowed()
    assert lo >= hi and end  # nothing can follow it except END
    g = Grammar(tok, max_points=10)
    for token in (7, L - 1, L - 1, tok.bind_offset):
        g.push(token)
    g.push(3)  # x smaller than before: y = L-1 and z = L-1 cannot hold it
    lo, hi, _ = g.allowed()
    assert lo >= hi  # the x slot must have excluded it...
    g = Grammar(tok, max_points=10)
    for token in (7, L - 1, L - 1, tok.bind_offset):
        g.push(token)
    assert g.allowed()[0] == 8  # ...and it does


def test_top_k_and_budget():
    model = _model(seed=5)
    with torch.no_grad():
        gen = generate(model.ar, model.tokenizer, _cond(model), SamplingOptions(temperature=1.0, top_k=3, max_points=5, min_points=5))
    assert len(gen.binding) == 5 and not gen.ended


@pytest.mark.parametrize("window", [64, 24])
def test_a_batch_samples_what_each_row_samples_alone(window):
    """Lockstep batching (one transformer step for every live sequence, finished ones leave the batch) gives
    each row the sequence `generate` gives it alone: its own seed, budget and refusals included."""
    model = _model(seed=6, window=window)
    tok = model.tokenizer
    refuse_some = lambda xyz, tri: tri % 3 != 0  # noqa: E731 -- refuses a third, so runs and stops happen
    rows = [(1, SamplingOptions(temperature=1.0, top_p=1.0, max_points=9, seed=0), None),
            (2, SamplingOptions(temperature=0.0, max_points=30, seed=1), None),
            (3, SamplingOptions(temperature=2.0, top_p=0.9, max_points=30, seed=2, refused_run=2), refuse_some),
            (4, SamplingOptions(temperature=1.0, top_p=1.0, max_points=3, min_points=3, seed=3), None)]
    with torch.no_grad():
        conds = [_cond(model, seed=c) for c, _, _ in rows]
        alone = [generate(model.ar, tok, cond, o, keep_point=k) for cond, (_, o, k) in zip(conds, rows)]
        batch = generate_batch(model.ar, tok, torch.cat(conds), [o for _, o, _ in rows], [k for _, _, k in rows])
    assert len({len(g.written) for g in alone}) > 1  # the rows finish at different steps
    assert any(g.refused for g in alone) and not alone[3].ended
    for a, b in zip(alone, batch):
        assert np.array_equal(a.written, b.written) and np.array_equal(a.kept, b.kept)
        assert np.array_equal(a.tokens, b.tokens) and (a.ended, a.refused_stop) == (b.ended, b.refused_stop)
        assert torch.allclose(a.hidden, b.hidden, atol=1e-4)
    with pytest.raises(ValueError, match="options"):
        generate_batch(model.ar, tok, torch.cat(conds), [rows[0][1]])


def test_decoder_shapes_and_activations():
    model = _model(k=3)
    P = 7
    pts = torch.rand(2, P, 3) * 0.1
    out = model.decoder(pts, torch.randn(2, P, 4, 32))
    assert out.means.shape == (2, P * 3, 3) and out.quats.shape == (2, P * 3, 4) and out.sh_dc.shape == (2, P * 3, 3)
    assert out.opacity_logits.shape == (2, P * 3) and out.log_scales.shape == (2, P * 3, 3)
    assert torch.allclose(out.quats.norm(dim=-1), torch.ones(2, P * 3), atol=1e-5)
    spread = (out.means - pts.repeat_interleave(3, dim=1)).abs().max()
    assert spread <= model.config.decoder.child_radius + 1e-6
    assert torch.equal(out.parent, torch.arange(P).repeat_interleave(3))


def test_surface_sampler_follows_the_mesh(head):
    sampler = SurfaceSampler(head.data, 64, seed=0)
    v = torch.as_tensor(head.data.vertices)[None]
    a = sampler(v)
    b = sampler(v + torch.tensor([0.0, 0.01, 0.0]))
    assert torch.allclose(b[..., :3] - a[..., :3], torch.tensor([0.0, 0.01, 0.0]), atol=1e-6)
    assert torch.allclose(a[..., 3:].norm(dim=-1), torch.ones(1, 64), atol=1e-5)
    assert np.array_equal(SurfaceSampler(head.data, 64, seed=0).face_index, sampler.face_index)


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    model = _model()
    path = tmp_path / "gen.safetensors"
    save_generator(path, model, {"steps": 3})
    loaded, info = load_generator(path)
    assert info == {"steps": 3} and read_generator_info(path)[0] == model.config
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert loaded.ar.head.weight is loaded.ar.tok_emb.weight  # tying survives the round trip
    half = tmp_path / "half.safetensors"
    save_generator(half, model, dtype=torch.float16)
    small, _ = load_generator(half)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    for (k, a), b in zip(model.state_dict().items(), small.state_dict().values()):
        assert b.dtype == torch.float32 and torch.allclose(a, b, atol=1e-3, rtol=1e-3), k
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_generator(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable"):
        load_generator(tmp_path / "junk.safetensors")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_generator(truncated)
    pickle_file = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1)}, pickle_file)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_generator(pickle_file)


def test_official_dinov2_layout_loads_from_a_local_file(tmp_path):
    """A Meta-layout state dict (as in dinov2_vits14_pretrain.pth, 37x37 position grid) loads by name."""
    torch.manual_seed(0)
    ref = ImageEncoder(ImageEncoderConfig(image_size=518, patch_size=14, dim=64, depth=2, heads=1, num_registers=4))
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in ref.state_dict().items()}
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(state, path)
    enc = load_dinov2_weights(path, image_size=518)
    assert enc.config.dim == 64 and enc.config.depth == 2 and enc.config.num_registers == 4
    ref.load_state_dict(state)
    x = torch.rand(1, 3, 518, 518)
    with torch.no_grad():
        assert torch.allclose(enc(x), ref(x), atol=1e-5)
        small = load_dinov2_weights(path, image_size=224)
        assert small(torch.rand(1, 3, 224, 224)).shape == (1, 1 + 4 + 256, 64)
    (tmp_path / "vitg.pth").write_bytes(b"")
    torch.save({**state, "blocks.0.mlp.w12.weight": torch.zeros(1)}, tmp_path / "vitg.pth")
    with pytest.raises(CheckpointError, match="SwiGLU"):
        load_dinov2_weights(tmp_path / "vitg.pth")
