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

    config = TrainConfig(stage=stage, data=str(data), output=str(out), steps=steps, batch_size=2, save_every=2,
                         log_every=100, lr=1e-2, warmup=1, render_size=32, model=MODEL_PRESETS["tiny"], **kw)
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
