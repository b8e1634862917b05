"""`pointillist eval`: metrics against references, reenactment AKD, and the side-by-side outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pointillist.avatar.controls import FaceControls
from pointillist.cli import main
from pointillist.head.model import HeadModel
from pointillist.model.checkpoint import save_generator
from pointillist.model.config import MODEL_PRESETS, GeneratorConfig
from pointillist.model.generator import Generator
from pointillist.train import metrics
from pointillist.train.dataset import (
    DatasetConfig,
    DatasetIndex,
    build_dataset,
    load_subject,
)
from pointillist.train.eval_reenact import (
    GaussianArrays,
    detect,
    make_avatar,
    posed_renders,
    reenactment_akd,
    scaled_K,
)
from pointillist.train.evaluate import (
    TABLE_ROWS,
    EvalConfig,
    evaluate_many,
    json_safe,
    select_subjects,
)

# two held-out subjects (4 and 9) of different styles
TINY_DATA = DatasetConfig(subjects=10, views=2, image_size=56, shard_size=5, density=0.4, ar_voxel_m=0.03, heldout_every=5)


@pytest.fixture(scope="module")
def head():
    return HeadModel.load()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    build_dataset(root, TINY_DATA)
    return root


def _fresh_checkpoint(path, head, seed: int) -> str:
    """A freshly initialised tiny generator, saved the way training saves one."""
    torch.manual_seed(seed)
    base = GeneratorConfig().to_json()
    for part, values in MODEL_PRESETS["tiny"].items():
        base[part].update(values)
    base["tokenizer"]["num_faces"] = head.data.num_faces
    base["head_model_id"] = head.model_id
    model = Generator(GeneratorConfig.from_json(base))
    model.ar.set_triangles(torch.as_tensor(head.data.vertices[head.data.faces].mean(1)))
    save_generator(path, model, {"name": f"fresh-{seed}"})
    return str(path)


# ------------------------------------------------------------------------------------------ metrics
def test_ssim_matches_skimage_and_is_one_for_identical_images():
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(rng.random((40, 48, 3)), (2, 2, 0))  # smooth, like a render
    a = (a - a.min()) / (a.max() - a.min())
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    c = np.clip(0.6 * a + 0.2, 0, 1)  # contrast and brightness change, no noise
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(a, b) < 0.9
    skimage_metrics = pytest.importorskip("skimage.metrics")
    for x, y in ((a, b), (a, c), (a[..., 0], b[..., 0])):
        ref = skimage_metrics.structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=False, channel_axis=-1 if x.ndim == 3 else None)
        assert metrics.ssim(x, y) == pytest.approx(ref, abs=1e-6)
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(a[:8], a[:8])


def test_chamfer_binding_psnr_and_count_statistics():
    pts = np.random.default_rng(1).random((50, 3)).astype(np.float32) * 0.1
    bind = np.arange(50)
    assert metrics.chamfer_and_binding(pts, bind, pts, bind) == (0.0, 1.0)
    shifted, _ = metrics.chamfer_and_binding(pts + np.float32([0.001, 0, 0]), bind, pts, bind)
    assert shifted == pytest.approx(0.1, abs=1e-4)  # 1 mm = 0.1 cm each way
    img = np.zeros((16, 16, 3))
    assert metrics.psnr(img, img + 0.1) == pytest.approx(20.0)
    stats = metrics.count_statistics([100, 200, 300], [10, 20, 30])
    assert stats["pearson"] == pytest.approx(1.0) and stats["generated_mean"] == 200
    assert metrics.count_statistics([100, 100, 100], [10, 20, 30])["pearson"] is None  # a count that never adapts


def test_subjects_are_balanced_across_styles_and_deterministic(data):
    index = DatasetIndex.load(data)
    chosen = select_subjects(index, "heldout", 2, seed=0)
    assert sorted(chosen) == [4, 9] and chosen == select_subjects(index, "heldout", 2, seed=0)
    assert len({index.subjects[i]["style"] for i in chosen}) == 2
    assert all(index.subjects[i]["split"] == "heldout" for i in select_subjects(index, "heldout", 10, seed=3))


# ------------------------------------------------------------------------------------------ AKD
@pytest.mark.slow
def test_akd_is_zero_for_the_same_render_and_positive_when_the_jaw_opens(data, head):
    record = load_subject(data, 9)
    avatar = make_avatar(GaussianArrays.from_record(record), head, record.shape)
    K = scaled_K(record.Ks[0], record.images.shape[1], 512)
    neutral, same, jaw = posed_renders(avatar, head, [FaceControls(), FaceControls(), FaceControls(jaw_deg=20.0)],
                                       record.viewmats[0], K, 512)
    assert np.array_equal(neutral, same)
    a, b, c = detect(neutral), detect(same), detect(jaw)
    assert a is not None and c is not None, "MediaPipe must find the synthetic face at 512²"
    assert reenactment_akd([a], [b])["akd_px"] == 0.0
    moved = reenactment_akd([a], [c])
    assert 0.5 < moved["akd_px"] < 40.0, moved
    assert moved["detection_failures"] == 0
    # the chin (152) drops; the forehead (10) stays
    assert c[152, 1] - a[152, 1] > 5.0 and abs(c[10, 1] - a[10, 1]) < 0.5 * (c[152, 1] - a[152, 1])
    blank = np.full((512, 512, 3), 255, np.uint8)
    assert reenactment_akd([a], [detect(blank)]) == {"akd_px": None, "akd_frames": 0, "frames": 1, "akd_per_frame_px": [None],
                                                     "detection_failures": 1, "truth_detection_failures": 0}


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_eval_cli_writes_a_side_by_side_table_json_and_sheet(data, head, tmp_path, capsys):
    a = _fresh_checkpoint(tmp_path / "a.safetensors", head, 0)
    b = _fresh_checkpoint(tmp_path / "b.safetensors", head, 1)
    prefix = tmp_path / "out" / "eval"
    prefix.parent.mkdir()
    args = ["--data", str(data), "--subjects", "2", "--max-points", "24", "--render-size", "32", "--reenact-size", "256",
            "--frames", "1", "--sheet-tile", "48", "--threads", "1", "-o", str(prefix)]
    assert main(["eval", "--checkpoint", f"first={a}", "--checkpoint", b, *args]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in printed["checkpoints"]] == ["first", "b"]

    summary = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert summary["subject_ids"] == printed["subject_ids"] and len(summary["subject_ids"]) == 2
    for ckpt in summary["checkpoints"]:
        assert ckpt["subjects"] == 2 and len(ckpt["rows"]) == 2
        for key in ("psnr", "ssim", "psnr_template_positions", "ssim_template_positions", "psnr_true_points",
                    "ssim_true_points", "psnr_anchored", "ssim_anchored", "chamfer_cm", "binding_accuracy", "ar_loss",
                    "ar_loss_no_image"):
            assert np.isfinite(ckpt[key]), key
        # an untrained generator's colours are noise; anchored to the portrait, its face is the subject's
        assert ckpt["psnr_anchored"] > ckpt["psnr"] + 1.0, (ckpt["psnr_anchored"], ckpt["psnr"])
        assert 0 <= ckpt["ssim"] <= 1 and 0 <= ckpt["binding_accuracy"] <= 1
        assert "akd_px" in ckpt and "akd_median_px" in ckpt and 0 <= ckpt["detection_failure_rate"] <= 1
        assert all(len(r["akd_per_frame_px"]) == r["frames"] == 1 for r in ckpt["rows"])
        assert set(ckpt["points_by_style"]) == {r["style"] for r in ckpt["rows"]}
        assert all(1 <= r["points"] <= 24 for r in ckpt["rows"])
    assert summary["reference"]["truth_psnr"] > 20  # the ground truth reproduces its own views

    table = (tmp_path / "out" / "eval.md").read_text()
    lines = table.splitlines()
    assert lines[0] == "| metric | first | b |"
    for key, label, _ in TABLE_ROWS:
        if key == "akd_px":
            label = "reenactment AKD (px at 256²)"
        row = next(line for line in lines if line.startswith(f"| {label}"))
        assert row.count("|") == 4, row  # a cell for every checkpoint
    assert any(line.startswith("| correlation of generated with true count") for line in lines)

    sheet = np.asarray(Image.open(tmp_path / "out" / "eval.png"))
    assert sheet.shape == (2 * 18 + 2 * 48, 48 * (1 + 3 * 3), 3)

    # deterministic: the library call with the same settings gives the same rows
    config = EvalConfig(checkpoint=a, data=str(data), subjects=2, max_points=24, render_size=32, reenact_size=256,
                        frames=1, sheet_tile=48)
    again = evaluate_many([a], config, head=head, log=lambda s: None).summary["checkpoints"][0]["rows"]
    assert json.dumps(json_safe(again)) == json.dumps(summary["checkpoints"][0]["rows"])


def test_eval_refuses_missing_checkpoints_and_the_old_name_still_works(data, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tmp_path / "nope.safetensors"), "--data", str(data)])
    assert code == 2 and "nope.safetensors" in capsys.readouterr().err


def test_posed_views_are_compared_with_the_avatar_posed_alike(data, head):
    """Engine v2 poses most portraits and a real capture poses every view: a view is compared with the avatar
    posed by the view's stored controls. The subject's own Gaussians posed so reproduce its posed portrait."""
    from pointillist.train import metrics
    from pointillist.train.dataset import SubjectDataset
    from pointillist.train.eval_reenact import GaussianArrays, render_view, target_view
    from pointillist.train.evaluate import _novel_views

    record = next(r for r in SubjectDataset(data, "all") if r.is_posed(0) and np.abs(r.poses[0, 2]).max() > 0.05)
    assert _novel_views(record) == list(range(1, record.num_views))
    g = GaussianArrays.from_record(record)
    size = record.images.shape[1]
    target = target_view(record, 0, size)
    posed = metrics.psnr(render_view(g, record, 0, size, head), target)
    at_rest = metrics.psnr(render_view(g, record, 0, size), target)
    assert posed > 30 and posed > at_rest + 2, (posed, at_rest)
