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


@pytest.mark.slow
def test_decoder_probe_is_added_to_a_trained_checkpoint_trained_and_evaluated(data, tmp_path):
    ar = tmp_path / "ar.safetensors"
    _train(data, ar, "ar", 2)
    with pytest.raises(ValueError, match="decoder or joint stage"):
        _train(data, tmp_path / "bad.safetensors", "ar", 1, init=str(ar), decoder_probe=True)
    out = tmp_path / "probe.safetensors"
    _train(data, out, "decoder", 3, init=str(ar), decoder_probe=True)
    model, info = load_generator(out)
    assert model.config.decoder.probe and info["decoder"]["config"]["decoder_probe"]
    fuse = model.decoder.fuse.weight
    assert fuse.shape[1] == 3 * model.config.decoder.dim and fuse[:, 2 * model.config.decoder.dim:].abs().sum() > 0
    # resuming keeps the probe (the checkpoint now has it), and evaluation feeds it the portrait
    _train(data, out, "decoder", 4, init=str(ar), decoder_probe=True)
    summary = evaluate(EvalConfig(checkpoint=str(out), data=str(data), subjects=1, max_points=64, render_size=32), log=lambda s: None)
    assert np.isfinite(summary["rows"][0]["psnr"]) and np.isfinite(summary["rows"][0]["psnr_template_positions"])


def test_head_probe_is_added_to_a_trained_ar_checkpoint_trained_and_evaluated(data, tmp_path):
    from pointillist.model.point_encoder import PointEncoder

    ar = tmp_path / "ar.safetensors"
    _train(data, ar, "ar", 2)
    with pytest.raises(ValueError, match="ar or joint stage"):
        _train(data, tmp_path / "bad.safetensors", "decoder", 1, init=str(ar), head_probe=True)
    out = tmp_path / "head_probe.safetensors"
    _train(data, out, "ar", 3, init=str(ar), head_probe=True)
    model, info = load_generator(out)
    assert model.config.points.probe and info["ar"]["config"]["head_probe"]
    added = model.point_encoder.embed.weight[:, PointEncoder.geometry_features(model.config.points):]
    assert added.shape[1] > 0 and added.abs().sum() > 0  # the new columns started at zero and trained
    rows = list(csv.DictReader(open(sidecar(out, ".log.csv"))))
    assert all(0 < float(r["ray_bce"]) < 2 and float(r["loss"]) > float(r["ar_ce"]) for r in rows)  # the ray loss is in the total
    summary = evaluate(EvalConfig(checkpoint=str(out), data=str(data), subjects=1, max_points=64, render_size=32), log=lambda s: None)
    row = summary["rows"][0]
    assert np.isfinite(row["ar_loss"]) and row["ar_loss_no_image"] != row["ar_loss"]


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
    # four logs wrap into rows of three panels, the last row padded with white
    log = str(sidecar(out, ".log.csv"))
    assert main(["checkpoint", "curves", log, log, log, log, "-o", str(png)]) == 0
    grid = np.asarray(Image.open(png))
    assert grid.shape[:2] == (600, 1560) and (grid[300:, 520:] == 255).all() and (grid[300:, :520] != 255).any()


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


def test_the_pose_target_is_the_camera_as_the_turned_face_sees_it():
    from pointillist.train.encoder_pretraining import face_yaw_pitch

    orbit = np.array([[0.0, 0.0], [20.0, -5.0], [0.0, 0.0], [0.0, 0.0], [15.0, 0.0]])
    poses = np.zeros((5, 5, 3))
    poses[2, 1] = (0.0, np.radians(10), 0.0)  # neck turned 10° toward +x: the camera at yaw 0 now sits at -10°
    poses[3, 0] = (np.radians(12), 0.0, 0.0)  # root pitched 12° (chin down): the camera looks 12° from above
    poses[4, 1] = (0.0, np.radians(15), 0.0)  # the face turns to follow a camera at yaw 15°: seen head-on
    seen = face_yaw_pitch(orbit, poses)
    np.testing.assert_allclose(seen[:2], orbit[:2], atol=1e-9)  # no turn: the orbit itself
    np.testing.assert_allclose(seen[2:], [[-10.0, 0.0], [0.0, 12.0], [0.0, 0.0]], atol=1e-9)


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
    images, points, probe = trainer.conditioning_inputs(records)
    real = lambda recs: (images, points, probe)  # noqa: E731 - the same rendered view every call
    shifted = lambda recs: (images, points + 0.05, probe)  # noqa: E731 - a different fitted head
    trainer.conditioning_inputs = real

    def loss() -> float:
        rngs = [np.random.default_rng(0)]  # the same token window every call
        return float(trainer.ar_loss(records, rngs))

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



# ---------------------------------------------------------------------------------- training at scale
def _weights(path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.slow
def test_gradient_accumulation_matches_the_larger_batch(data, tmp_path):
    """batch 1 × accumulate 2 makes the update batch 2 makes: per-sample mean losses, same samples."""
    big = _train(data, tmp_path / "big.safetensors", "ar", 2, lr=3e-3)
    acc = _train(data, tmp_path / "acc.safetensors", "ar", 2, lr=3e-3, batch_size=1, accumulate=2)
    assert [r["effective_batch"] for r in acc.history] == [2, 2]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in acc.history] == pytest.approx([r[key] for r in big.history], rel=1e-4)
    init = _weights(_fresh(data, tmp_path))
    big_w, acc_w = _weights(tmp_path / "big.safetensors"), _weights(tmp_path / "acc.safetensors")
    assert _max_diff(big_w, init) > 1e-3
    # over all weights (AdamW turns float noise in near-zero gradients into small steps of single weights)
    num = sum(float(((acc_w[k] - big_w[k]).astype(np.float64) ** 2).sum()) for k in big_w)
    den = sum(float(((big_w[k] - init[k]).astype(np.float64) ** 2).sum()) for k in big_w)
    assert (num / den) ** 0.5 < 1e-3


def _fresh(data, tmp_path):
    from pointillist.model.checkpoint import save_generator
    from pointillist.model.config import MODEL_PRESETS

    out = tmp_path / "fresh.safetensors"
    t = Trainer(TrainConfig(stage="ar", data=str(data), output=str(tmp_path / "unused.safetensors"), model=MODEL_PRESETS["tiny"]),
                log=lambda line: None)
    save_generator(out, t.model)
    return out


@pytest.mark.slow
def test_every_trainable_parameter_gets_a_gradient_in_each_stage(data, tmp_path):
    """DDP runs with find_unused_parameters=False: that is only valid if each stage's forward reaches
    every parameter the optimizer trains (unused ones, like DINOv2's mask token, are frozen)."""
    import torch

    ar = tmp_path / "ar.safetensors"
    _train(data, ar, "ar", 1)
    for stage in ("ar", "decoder", "joint"):
        t = Trainer(TrainConfig(stage=stage, data=str(data), output=str(tmp_path / f"{stage}.safetensors"), init=str(ar),
                                batch_size=1, render_size=24), log=lambda line: None)
        t.optimizer.zero_grad(set_to_none=True)
        loss, _ = t.batch_loss(t.micro_batches(0)[0])
        loss.backward()
        missing = [n for n, p in t.model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (stage, missing[:5])
        assert not t.model.image_encoder.mask_token.requires_grad
        trained = {n.split(".")[0] for n, p in t.model.named_parameters() if p.requires_grad}
        expected = {"decoder"} if stage == "decoder" else {"source_emb", "point_encoder", "image_proj", "point_proj", "ar", "image_encoder"}
        if stage == "joint":
            expected.add("decoder")
        assert trained == expected, stage
        assert all(torch.isfinite(p.grad).all() for p in t.model.parameters() if p.grad is not None)


@pytest.mark.slow
def test_joint_stage_sends_the_decoder_loss_into_the_transformer_and_resumes(data, tmp_path):
    import torch

    ar = tmp_path / "ar.safetensors"
    _train(data, ar, "ar", 2)
    out = tmp_path / "joint.safetensors"
    # decoder loss alone: the AR blocks must still receive gradient (through the hidden states)
    t = Trainer(TrainConfig(stage="joint", data=str(data), output=str(out), init=str(ar), ar_weight=0.0, decoder_weight=1.0,
                            batch_size=1, render_size=32, model={}), log=lambda line: None)
    with torch.no_grad():  # past the decoder's zero-initialised output layer, which blocks all upstream gradient
        t.model.decoder.out.weight.normal_(0, 0.01)
    loss, stats = t.batch_loss(t.micro_batches(0)[0])
    loss.backward()
    block = t.model.ar.blocks[0]
    assert float(block.ff.fc1.weight.grad.abs().sum()) > 0
    assert loss.item() == pytest.approx(stats["decoder"], rel=1e-5) and stats["ar_ce"] > 1.0
    # the default weights: CE + decoder loss; runs, logs both terms, and resumes as a joint run
    first = _train(data, out, "joint", 2, init=str(ar), batch_size=1)
    row = first.history[-1]
    assert row["loss"] == pytest.approx(row["ar_ce"] + row["decoder"], rel=1e-4)
    _, info = load_generator(out)
    assert info["joint"]["step"] == 2 and info["ar"]["step"] == 2
    resumed = _train(data, out, "joint", 3, init=str(ar), batch_size=1)
    assert resumed.history[0]["step"] == 3
    with pytest.raises(ValueError, match="cannot resume it as 'ar'"):
        _train(data, out, "ar", 4)
    with pytest.raises(ValueError, match="not both 0"):
        TrainConfig(stage="joint", data=str(data), output=str(out), ar_weight=0.0, decoder_weight=0.0)


def test_precision_modes_on_cpu_and_the_fp16_loss_scale_resumes(data, tmp_path):
    import torch
    from safetensors import safe_open

    from pointillist.train.precision import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))
    bf = _train(data, tmp_path / "bf16.safetensors", "ar", 1, precision="bf16")
    assert bf.precision.mode == "bf16" and np.isfinite(bf.history[0]["loss"])
    model, _ = load_generator(tmp_path / "bf16.safetensors")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast never lowers the weights
    out = tmp_path / "fp16.safetensors"
    half = _train(data, out, "ar", 2, precision="fp16")
    scale = half.precision.scaler.get_scale()
    with safe_open(str(sidecar(out, ".train.safetensors")), framework="pt") as f:
        meta = f.metadata()
    assert meta["precision"] == "fp16" and json.loads(meta["scaler"])["scale"] == scale
    half.precision.scaler.update(scale / 8)  # a different value in memory: resuming must restore the saved one
    resumed = Trainer(TrainConfig(stage="ar", data=str(data), output=str(out), steps=3, precision="fp16",
                                  model={}), log=lambda line: None)
    assert resumed.step == 2 and resumed.precision.scaler.get_scale() == scale


def _read_events(folder) -> dict[str, list[tuple[int, float]]]:
    """Scalars of TensorBoard event files (TFRecord framing: length, crc, Event proto, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        i = 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i:i + 8])
            event = Event.FromString(raw[i + 12:i + 12 + n])
            i += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                # TensorBoard's purge: a restart at step P drops what was logged at steps >= P before it
                scalars = {tag: [(s, v) for s, v in values if s < event.step] for tag, values in scalars.items()}
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


def test_scalars_go_to_csv_and_tensorboard_and_a_resume_drops_unsaved_rows(data, tmp_path):
    out = tmp_path / "ar.safetensors"
    _train(data, out, "ar", 4, save_every=4)
    events = _read_events(sidecar(out, ".tb"))
    assert [s for s, _ in events["ar/loss"]] == [1, 2, 3, 4]
    rows = list(csv.DictReader(open(sidecar(out, ".log.csv"))))
    assert [float(r["loss"]) for r in rows] == pytest.approx([v for _, v in events["ar/loss"]], rel=1e-6)
    assert "ar/grad_norm" in events and "ar/effective_batch" in events
    # a run that logged steps 5-6 but stopped before saving them: resuming from step 4 logs them again
    with open(sidecar(out, ".log.csv"), "a") as f:
        f.write("ar,5,9.0,0.01,0.1,2,1.0\nar,6,9.0,0.01,0.1,2,1.0\n")
    _train(data, out, "ar", 6, save_every=10)
    steps = [int(r["step"]) for r in csv.DictReader(open(sidecar(out, ".log.csv")))]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in _read_events(sidecar(out, ".tb"))["ar/loss"]] == [1, 2, 3, 4, 5, 6]  # the saved step stays


def test_sample_renders_show_the_target_beside_the_decoded_avatar(data, tmp_path):
    from PIL import Image

    out = tmp_path / "ar.safetensors"  # an AR run's decoder is untrained: grey Gaussians, but where the head is
    _train(data, out, "ar", 1, sample_every=1)
    png = sidecar(out, ".samples") / "step_000001.png"
    img = np.asarray(Image.open(png)).astype(float)
    assert img.shape == (128, 260, 3)
    target, render = img[:, :128], img[:, 132:]
    for half in (target, render):  # a head on white: some pixels far from white, the corners white
        assert (half.sum(-1) < 600).mean() > 0.05 and half[:4, :4].min() > 240
    assert np.abs(target - render).mean() > 1  # two pictures, not one copied


def test_gpu_written_state_loads_on_cpu(tmp_path, data):
    """What a GPU run writes must load on a CPU. Resume state: safetensors stores no device, the writer
    copies to the CPU and the reader asks for "cpu"; the optimizer moments then follow their parameters'
    device (checked here with parameters on the 'meta' device, standing in for 'cuda'). DINOv2 `.pth`
    files (pickled tensors tagged with their device): a file claiming CUDA storage loads on a CPU."""
    import torch

    from pointillist.train.train_generator import load_optimizer_state, optimizer_tensors, read_train_state

    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    from safetensors.torch import save_file

    save_file(optimizer_tensors(opt), str(tmp_path / "state.safetensors"), metadata={"step": "1"})
    meta, tensors = read_train_state(tmp_path / "state.safetensors")
    assert meta["step"] == "1" and all(t.device.type == "cpu" for t in tensors.values())
    on_other = torch.nn.Parameter(torch.empty(3, 2, device="meta"))
    opt2 = torch.optim.AdamW([on_other], lr=0.1)
    load_optimizer_state(opt2, tensors, [on_other])
    st = opt2.state_dict()["state"][0]
    assert st["exp_avg"].device.type == "meta" and float(st["step"]) == 1.0
    # a run with other trainable parameters (other options than the run it resumes) is refused, not misfed
    other = [torch.nn.Parameter(torch.empty(4, 2)), on_other]
    with pytest.raises(ValueError, match="does not fit this run's 2 trainable parameters"):
        load_optimizer_state(torch.optim.AdamW(other, lr=0.1), tensors, other)

    from pointillist.model.config import ImageEncoderConfig
    from pointillist.model.image_encoder import ImageEncoder, load_dinov2_weights

    enc = ImageEncoder(ImageEncoderConfig(image_size=28, dim=32, depth=1, heads=2))
    pth = tmp_path / "dinov2_cuda.pth"
    real_tag = torch.serialization.location_tag
    try:  # torch.save records each storage's device via location_tag: make it say CUDA
        torch.serialization.location_tag = lambda storage: "cuda:0"
        torch.save(enc.state_dict(), pth)
    finally:
        torch.serialization.location_tag = real_tag
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(pth, weights_only=True)  # the file really asks for CUDA
    loaded = load_dinov2_weights(pth, image_size=28)
    assert all(v.device.type == "cpu" for v in loaded.state_dict().values())
    assert torch.equal(loaded.state_dict()["cls_token"], enc.state_dict()["cls_token"])


def test_train_cli_refuses_bad_scale_options_with_a_message(data, tmp_path, capsys):
    import torch

    out = str(tmp_path / "x.safetensors")
    assert main(["train", "ar", "--data", str(data), "-o", out, "--accumulate", "0"]) == 2
    assert "accumulate" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "ar", "--data", str(data), "-o", out, "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["train", "joint", "--data", str(data), "-o", out, "--ar-weight", "0", "--decoder-weight", "0"]) == 2
    assert "not both 0" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_a_checkpoint_newer_than_its_resume_state_is_refused(data, tmp_path):
    """A run killed between writing the checkpoint and its sidecar must not resume newer weights with older
    optimizer moments and step."""
    out = tmp_path / "ar.safetensors"
    _train(data, out, "ar", 2)
    state = sidecar(out, ".train.safetensors")
    stale = state.read_bytes()
    _train(data, out, "ar", 4)
    state.write_bytes(stale)  # as if killed after the checkpoint's write, before the sidecar's
    with pytest.raises(ValueError, match="resume state at step 2 but .* at step 4"):
        _train(data, out, "ar", 6)


@pytest.mark.slow
def test_posed_views_are_compared_with_the_decoded_avatar_posed_alike(data, tmp_path, monkeypatch):
    """Engine v2 renders most portraits with an expression and pose, and every view of a real capture carries
    its tracked expression: the decoder's Gaussians are posed with the view's stored controls (through the
    head rig, differentiably) before they are compared, and rest views render them as decoded."""
    import dataclasses

    import torch
    from pointillist.train import train_generator
    from pointillist.train.dataset import SubjectDataset

    ar = tmp_path / "ar.safetensors"
    _train(data, ar, "ar", 1)
    t = Trainer(TrainConfig(stage="decoder", data=str(data), output=str(tmp_path / "dec.safetensors"), init=str(ar),
                            batch_size=1, render_size=24, views_per_step=2), log=lambda line: None)
    seen = []
    real = train_generator.rasterize

    def spy(means, *args, viewmat, **kw):
        seen.append((viewmat.cpu().numpy().copy(), means.detach().cpu().numpy().copy()))
        return real(means, *args, viewmat=viewmat, **kw)

    monkeypatch.setattr(train_generator, "rasterize", spy)
    posed = next(r for r in SubjectDataset(data, "train") if r.is_posed(0) and not r.is_posed(1))
    jaw_open = posed.poses.copy()
    jaw_open[0, 2] = (0.35, 0.0, 0.0)  # a clearly open jaw on the portrait
    posed = dataclasses.replace(posed, poses=jaw_open)
    loss, _ = t.decoder_loss([posed])
    loss.backward()
    assert torch.isfinite(loss)
    by_view = {int(np.argmin([np.abs(vm - m).max() for m in posed.viewmats])): means for vm, means in seen}
    assert set(by_view) == {0, 1}
    moved = np.linalg.norm(by_view[0] - by_view[1], axis=1)
    assert moved.max() > 0.005 and np.median(moved) < moved.max()  # the jaw region moved, not everything alike
    # a capture whose every view is posed (tracked expressions are never exactly zero) still trains
    seen.clear()
    all_posed = dataclasses.replace(posed, poses=np.repeat(jaw_open[:1], len(posed.poses), axis=0))
    with torch.no_grad():
        assert torch.isfinite(t.decoder_loss([all_posed])[0])
    assert len(seen) == 2


def test_real_captures_have_no_style_target_and_still_train_the_encoder():
    """Imported GaussianAvatars subjects carry style "real": the style loss skips them instead of failing."""
    import torch
    from pointillist.train.encoder_pretraining import IGNORE_STYLE, ProxyHeads, ProxyTargets, proxy_loss

    heads = ProxyHeads(dim=8, hidden=16)
    pred = heads(torch.randn(3, 5, 8))
    g, c = pred["occupancy"].shape[1], pred["colour"].shape[1] // 3

    def targets(style):
        grid = round(g ** (1 / 3))
        cg = round(c ** (1 / 3))
        return ProxyTargets(torch.tensor(style), torch.zeros(3), torch.zeros(3), torch.zeros(3, grid, grid, grid),
                            torch.zeros(3, cg, cg, cg, 3), torch.ones(3, cg, cg, cg), torch.zeros(3, 2))

    _, mixed = proxy_loss(pred, targets([0, IGNORE_STYLE, 2]))
    _, known = proxy_loss({k: v[[0, 2]] for k, v in pred.items()}, ProxyTargets(*(
        getattr(targets([0, IGNORE_STYLE, 2]), f)[[0, 2]] for f in ProxyTargets.__dataclass_fields__)))
    assert mixed["style"] == pytest.approx(known["style"], rel=1e-6)  # the real capture adds nothing to it
    total, only_real = proxy_loss(pred, targets([IGNORE_STYLE] * 3))
    assert only_real["style"] == 0.0 and torch.isfinite(total)


def test_resuming_with_another_effective_batch_says_so(data, tmp_path):
    from pointillist.model.config import MODEL_PRESETS

    out = tmp_path / "ar.safetensors"
    _train(data, out, "ar", 2)  # batch 2
    lines: list[str] = []
    Trainer(TrainConfig(stage="ar", data=str(data), output=str(out), steps=3, batch_size=1, save_every=2, log_every=100,
                        lr=1e-2, warmup=1, render_size=32, model=MODEL_PRESETS["tiny"]), log=lines.append)
    assert any("effective batch of 1 where the run used 2" in line for line in lines), lines


def test_training_reads_shards_kept_on_another_disk(data, tmp_path, capsys):
    """index.json in one folder, the shards in another (`--shard-root`): training finds and checks them; without
    the root it stops with the missing shard's name."""
    import shutil

    index_only, elsewhere = tmp_path / "index", tmp_path / "disk2"
    index_only.mkdir()
    shutil.copy(data / "index.json", index_only / "index.json")
    shutil.copytree(data, elsewhere, ignore=shutil.ignore_patterns("index.json"))
    args = ["train", "ar", "--data", str(index_only), "--model-size", "tiny", "--steps", "1", "--batch-size", "1",
            "--no-tensorboard", "-o"]
    assert main([*args, str(tmp_path / "missing.safetensors")]) == 2
    assert "shard-00000.npz" in capsys.readouterr().err
    out = tmp_path / "ar.safetensors"
    assert main([*args, str(out), "--shard-root", str(elsewhere)]) == 0
    assert out.exists() and not (tmp_path / "missing.safetensors").exists()


def test_ray_occupancy_targets_mark_ray_points_near_the_avatar(data, tmp_path):
    """The ray loss's targets: the skin sample itself is near the avatar's points, and the target rate falls
    with distance from the head; an encoder trained on it lowers the loss."""
    import torch
    from pointillist.model.portrait_probe import RAY_DISTANCES

    trainer = _train(data, tmp_path / "rays.safetensors", "ar", 1, head_probe=True)
    records = [trainer.data[i] for i in range(2)]
    first = float(trainer.ray_occupancy_loss(records).detach())
    enc = trainer.model.point_encoder
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss = trainer.ray_occupancy_loss(records)
        loss.backward()
        opt.step()
    assert float(loss) < 0.8 * first
    # the targets themselves: measured through a perfectly confident encoder would be circular, so rebuild them
    from scipy.spatial import cKDTree
    from pointillist.train.train_generator import RAY_HIT_M

    _, points, _ = trainer.conditioning_inputs(records[:1])
    p = points[0]
    near, _ = cKDTree(records[0].ar_points).query(p[:, :3].numpy())
    assert (near < RAY_HIT_M).mean() > 0.5  # most skin samples have an avatar point within 15 mm
    far = p[:, :3] + RAY_DISTANCES[-1] * p[:, 3:]
    assert (cKDTree(records[0].ar_points).query(far.numpy())[0] < RAY_HIT_M).mean() < (near < RAY_HIT_M).mean()
