"""The generator's own sequences for decoder training: what `create` decodes is what the file replays."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pointillist.cli import main
from pointillist.model.config import MODEL_PRESETS
from pointillist.model.sampling import SamplingOptions, generate
from pointillist.train.generated_points import GeneratedSequence, load_generated, save_generated
from pointillist.model.teacher_forcing import teacher_forced_hidden
from pointillist.train.train_generator import TrainConfig, Trainer, sidecar
from tests.model.test_model import _model
from tests.train.test_train import data  # noqa: F401  (the tiny dataset fixture)

@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "ar.safetensors"
    config = TrainConfig(stage="ar", data=str(data), output=str(out), steps=2, batch_size=2, save_every=2, log_every=100,
                         lr=1e-2, warmup=1, model=MODEL_PRESETS["tiny"], tensorboard=False)
    Trainer(config, log=lambda line: None).run()
    return out


def test_written_and_kept_replay_the_hidden_states_create_decodes():
    """A teacher-forced pass over everything the model wrote, refused points included, gives the hidden states
    of the kept points that sampling returned; the kept tokens are the returned sequence."""
    model = _model(window=256)  # the whole sequence in one window: a teacher-forced pass is then exact
    cond = torch.randn(1, 8, model.config.ar.dim)
    verdicts = iter(np.random.default_rng(1).random(10_000) < 0.7)
    with torch.no_grad():
        gen = generate(model.ar, model.tokenizer, cond, SamplingOptions(max_points=40, min_points=40, refused_run=1000),
                       keep_point=lambda xyz, tri: bool(next(verdicts)))
    assert gen.refused > 0 and len(gen.kept) == (len(gen.written) - 2) // 4 == gen.refused + len(gen.points)
    seq = GeneratedSequence(gen.written, gen.kept)
    np.testing.assert_array_equal(seq.kept_tokens(), gen.tokens)
    with torch.no_grad():
        replay = teacher_forced_hidden(model, gen.written, cond)[torch.as_tensor(gen.kept)]
    torch.testing.assert_close(replay, gen.hidden, atol=1e-4, rtol=1e-4)


def test_generate_without_a_check_keeps_everything():
    model = _model()
    with torch.no_grad():
        gen = generate(model.ar, model.tokenizer, torch.randn(1, 8, model.config.ar.dim), SamplingOptions(max_points=12))
    assert gen.kept.all() and np.array_equal(gen.written, gen.tokens)


def test_file_round_trip_and_refusals(tmp_path):
    written = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=np.int64)  # START, two points, END
    seqs = {3: GeneratedSequence(written, np.array([True, False])), 11: GeneratedSequence(written, np.array([True, True]))}
    path = tmp_path / "g.npz"
    save_generated(path, seqs, {"checkpoint": "c.safetensors"})
    back, meta = load_generated(path)
    assert meta == {"checkpoint": "c.safetensors"} and sorted(back) == [3, 11]
    np.testing.assert_array_equal(back[3].kept_tokens(), [1, 2, 3, 4, 5, 10])
    with np.load(path, allow_pickle=False) as f:  # plain arrays: readable without pickle
        assert set(f.files) == {"meta", "written_3", "kept_3", "written_11", "kept_11"}
    bad = tmp_path / "bad.npz"
    save_generated(bad, {3: GeneratedSequence(written, np.array([True]))}, {})
    with pytest.raises(ValueError, match="subject 3's sequence and keep mask disagree"):
        load_generated(bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a generated-points file"):
        load_generated(tmp_path / "junk.npz")


@pytest.mark.slow
def test_sample_points_cli_resumes_and_the_decoder_trains_on_them(data, checkpoint, tmp_path, capsys):
    out = tmp_path / "own.npz"
    args = ["dataset", "sample-points", str(data), "--checkpoint", str(checkpoint), "-o", str(out), "--subjects", "3"]
    assert main(args) == 0
    seqs, meta = load_generated(out)
    assert len(seqs) == 3 and meta["checkpoint"] == str(checkpoint) and meta["sampling"]["max_points"] == 2048
    assert all(s % 10 != 9 for s in seqs)  # training subjects only (the tiny set holds out every tenth)
    capsys.readouterr()
    assert main(args) == 0  # resumes: nothing left to sample
    assert "3 of 3 subjects already sampled" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    shutil.copy(checkpoint, other)
    assert main([*args[:4], str(other), *args[5:]]) == 2  # the file was built from another checkpoint
    assert "was built from" in capsys.readouterr().err
    assert main([*args, "--part", "2/2"]) == 2
    one = tmp_path / "one_at_a_time.npz"
    assert main([*args[:6], str(one), *args[7:], "--batch", "1"]) == 0  # the default batches all three
    alone, _ = load_generated(one)
    assert sorted(alone) == sorted(seqs)
    for sid, seq in alone.items():  # a batch samples what each subject samples alone
        assert np.array_equal(seq.written, seqs[sid].written) and np.array_equal(seq.kept, seqs[sid].kept)
    capsys.readouterr()

    dec = tmp_path / "dec.safetensors"
    config = TrainConfig(stage="decoder", data=str(data), output=str(dec), init=str(checkpoint), steps=4, batch_size=2,
                         save_every=2, log_every=100, lr=1e-2, warmup=1, render_size=32, tensorboard=False,
                         generated_points=[str(out)], generated_fraction=0.5)
    trainer = Trainer(config, log=lambda line: None)
    assert sorted(trainer.data.ids) == sorted(seqs)  # it trains on the subjects that have them
    trainer.run()
    shares = [row["generated"] for row in trainer.history]
    assert 0 < np.mean(shares) < 1  # some samples decoded from the generator's points, some from the truth
    assert all(np.isfinite(row["loss"]) for row in trainer.history)
    assert "generated" in sidecar(dec, ".log.csv").read_text().splitlines()[0].split(",")
    with pytest.raises(ValueError, match="decoder stage"):
        TrainConfig(stage="ar", data=str(data), output=str(dec), generated_points=[str(out)])
    with pytest.raises(ValueError, match="generated_fraction"):
        TrainConfig(stage="decoder", data=str(data), output=str(dec), generated_fraction=1.5)
