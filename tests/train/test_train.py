"""Training loops and held-out evaluation on a tiny dataset: they run, learn, resume and never pickle."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pointillist.cli import main
from pointillist.model.checkpoint import load_generator
from pointillist.train.dataset import DatasetConfig, build_dataset
from pointillist.train.evaluate import EvalConfig, evaluate
from pointillist.train.train_generator import TrainConfig, Trainer, sidecar

TINY_DATA = DatasetConfig(subjects=10, views=2, image_size=56, shard_size=5, density=0.4, ar_voxel_m=0.03)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    build_dataset(root, TINY_DATA)
    return root


def _train(data, out, stage, steps, **kw):
    from pointillist.model.config import MODEL_PRESETS

    settings = dict(batch_size=2, save_every=2, log_every=100, lr=1e-2, warmup=1, render_size=32, model=MODEL_PRESETS["tiny"])
    config = TrainConfig(stage=stage, data=str(data), output=str(out), steps=steps, **{**settings, **kw})
    trainer = Trainer(config, log=lambda line: None)
    trainer.run()
    return trainer


@pytest.mark.slow
def test_ar_training_learns_and_resumes_exactly_where_it_stopped(data, tmp_path):
    out = tmp_path / "ar.safetensors"
    first = _train(data, out, "ar", 16)
    rows = list(csv.DictReader(open(sidecar(out, ".log.csv"))))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 16 and np.mean(losses[-3:]) < losses[0] - 1.0  # it learns the token statistics
    model, info = load_generator(out)
    assert info["ar"]["step"] == 16
    # resume: a longer run continues at step 16 with the saved optimizer state
    resumed = _train(data, out, "ar", 18)
    assert resumed.step == 18 and len(list(csv.DictReader(open(sidecar(out, ".log.csv"))))) == 18
    assert first.model.config == resumed.model.config


@pytest.mark.slow
def test_decoder_stage_trains_only_the_decoder_and_evaluation_reports_everything(data, tmp_path):
    ar = tmp_path / "ar.safetensors"
    _train(data, ar, "ar", 4)
    out = tmp_path / "gen.safetensors"
    before, _ = load_generator(ar)
    trainer = _train(data, out, "decoder", 3, init=str(ar))
    after, info = load_generator(out)
    changed = {k.split(".")[0] for k, v in after.state_dict().items() if not np.array_equal(v.numpy(), before.state_dict()[k].numpy())}
    assert changed == {"decoder"}
    assert info["ar"]["step"] == 4 and info["decoder"]["step"] == 3
    assert {"l1", "ssim", "colour", "chamfer_cm"} <= set(trainer.history[-1])
    summary = evaluate(EvalConfig(checkpoint=str(out), data=str(data), subjects=1, max_points=64, render_size=32), log=lambda s: None)
    row = summary["rows"][0]
    assert summary["split"] == "heldout" and row["subject"] % 10 == 9
    for key in ("ar_loss", "ar_loss_no_image", "chamfer_cm", "binding_accuracy", "psnr", "psnr_template_positions"):
        assert np.isfinite(row[key]), key
    assert 1 <= row["points"] <= 64


def test_decoder_stage_needs_an_ar_checkpoint_and_bad_data_is_named(data, tmp_path, capsys):
    with pytest.raises(ValueError, match="--init"):
        Trainer(TrainConfig(stage="decoder", data=str(data), output=str(tmp_path / "x.safetensors")))
    code = main(["train", "ar", "--data", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.safetensors"), "--steps", "1"])
    assert code == 2 and "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_train_cli_writes_a_checkpoint_that_create_can_load(data, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    code = main(["train", "ar", "--data", str(data), "-o", str(out), "--model-size", "tiny", "--steps", "2", "--save-every", "1"])
    assert code == 0 and json.loads(capsys.readouterr().out)["checkpoint"] == str(out)
    model, info = load_generator(out)
    assert info["ar"]["config"]["steps"] == 2 and model.config.ar.dim == 32


def test_checkpoint_pack_info_and_loss_curves(data, tmp_path, capsys):
    out = tmp_path / "ar.safetensors"
    _train(data, out, "ar", 3)
    packed = tmp_path / "packed.safetensors"
    assert main(["checkpoint", "pack", str(out), "-o", str(packed), "--name", "test"]) == 0
    assert packed.stat().st_size < 0.6 * out.stat().st_size
    capsys.readouterr()
    assert main(["checkpoint", "info", str(packed)]) == 0
    assert json.loads(capsys.readouterr().out)["info"]["name"] == "test"
    png = tmp_path / "curves.png"
    assert main(["checkpoint", "curves", str(sidecar(out, ".log.csv")), "-o", str(png)]) == 0
    from PIL import Image

    assert Image.open(png).size == (520, 300)


@pytest.mark.slow
def test_encoder_pretraining_learns_resumes_and_the_ar_stage_then_keeps_the_encoder_frozen(data, tmp_path):
    import torch

    enc = tmp_path / "enc.safetensors"
    first = _train(data, enc, "encoder", 30, batch_size=8, lr=2e-3, save_every=10)
    losses = [float(r["loss"]) for r in csv.DictReader(open(sidecar(enc, ".log.csv")))]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    _, info = load_generator(enc)
    heldout = info["encoder"]["heldout"]
    assert 0 <= heldout["style_accuracy"] <= 1 and 0 <= heldout["occupancy_iou"] <= 1 and heldout["pose_error_deg"] >= 0
    from pointillist.model.config import MODEL_PRESETS

    resumed = Trainer(TrainConfig(stage="encoder", data=str(data), output=str(enc), steps=32, batch_size=8, lr=2e-3,
                                  model=MODEL_PRESETS["tiny"]), log=lambda line: None)
    assert resumed.step == 30  # weights, optimizer state and the proxy heads come back from the sidecar
    for name, p in first.proxy.state_dict().items():
        assert torch.equal(p, resumed.proxy.state_dict()[name]), name
    resumed.run()
    assert resumed.step == 32
    ar = tmp_path / "ar.safetensors"
    before, _ = load_generator(enc)
    trainer = _train(data, ar, "ar", 2, init=str(enc))
    assert trainer.image_encoder_frozen
    after, info = load_generator(ar)
    for k, v in after.image_encoder.state_dict().items():
        assert np.array_equal(v.numpy(), before.image_encoder.state_dict()[k].numpy()), k
    assert not torch.equal(after.image_proj.weight, before.image_proj.weight)
    assert info["encoder"]["step"] == 32 and info["ar"]["step"] == 2


def test_proxy_targets_mirror_with_the_image():
    import torch

    from pointillist.train.encoder_pretraining import ProxyTargets, augment_views

    B, G, C = 2, 8, 4
    occ = torch.zeros(B, G, G, G)
    occ[:, 0] = 1  # everything on the -x side
    colour = torch.rand(B, C, C, C, 3)
    t = ProxyTargets(torch.zeros(B, dtype=torch.long), torch.zeros(B), torch.zeros(B), occ, colour,
                     torch.ones(B, C, C, C), torch.tensor([[0.5, 0.1], [-0.3, 0.2]]))
    m = t.mirrored(torch.tensor([True, False]))
    assert m.occupancy[0, -1].all() and not m.occupancy[0, 0].any() and m.occupancy[1, 0].all()
    assert torch.equal(m.colour[0], colour[0].flip(0)) and torch.equal(m.colour[1], colour[1])
    assert torch.allclose(m.pose, torch.tensor([[-0.5, 0.1], [-0.3, 0.2]]))
    # the image flips with the targets: a left-half-white image becomes right-half-white
    img = torch.zeros(1, 3, 16, 16)
    img[..., :8] = 1
    rng = torch.Generator().manual_seed(0)
    for _ in range(8):
        out, tt = augment_views(img, ProxyTargets(*(getattr(t, f)[:1] for f in t.__dataclass_fields__)), rng, 0.0, 0.0)
        flipped = bool(tt.occupancy[0, -1].all())
        assert (out[0, 0, 8, 12] > 0.5) == flipped and (out[0, 0, 8, 3] > 0.5) != flipped


def test_head_dropout_hides_the_fitted_head_from_the_ar_loss(data, tmp_path):
    """With head dropout the AR loss of a hidden sample cannot depend on the head-mesh tokens (so the
    transformer must read the image); without it, it does."""
    import torch

    trainer = _train(data, tmp_path / "ar.safetensors", "ar", 1, head_dropout=1.0)
    trainer.model.eval()  # no attention dropout: equal inputs give equal losses
    records = [trainer.data[0]]
    images, points = trainer.conditioning_inputs(records)
    real = lambda recs: (images, points)  # noqa: E731 - the same rendered view every call
    shifted = lambda recs: (images, points + 0.05)  # noqa: E731 - a different fitted head
    trainer.conditioning_inputs = real

    def loss() -> float:
        trainer.rng = np.random.default_rng(0)  # the same token window every call
        return float(trainer.ar_loss(records))

    with torch.no_grad():
        hidden = [loss() for _ in range(2)]
        trainer.conditioning_inputs = shifted
        hidden_shifted = loss()
        trainer.cfg.head_dropout = 0.0
        seen_shifted = loss()
        trainer.conditioning_inputs = real
        seen = loss()
    assert hidden[0] == pytest.approx(hidden[1], abs=1e-6) == pytest.approx(hidden_shifted, abs=1e-6)
    assert abs(seen - seen_shifted) > 1e-4
    with pytest.raises(ValueError, match="head_dropout"):
        TrainConfig(stage="ar", data=str(data), output=str(tmp_path / "x.safetensors"), head_dropout=1.5)
