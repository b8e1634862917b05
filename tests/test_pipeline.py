"""`pointillist create` end to end with a tiny generator on a generated portrait, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pointillist.avatar.animate import AvatarAnimator
from pointillist.avatar.bundle import read_bundle
from pointillist.avatar.controls import FaceControls
from pointillist.avatar.gaussians import validate_avatar
from pointillist.cli import main
from pointillist.completeness import CompletenessCheck
from pointillist.model.checkpoint import save_generator
from pointillist.pipeline import Cancelled, CreateOptions, IncompleteAvatar, create_avatar
from pointillist.preview import ViewSpec, render_frame
from pointillist.synth.procedural import make_procedural_avatar

from .generators import FALLBACK_POINTS, complete_by_fallback, tiny_generator


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, head):
    """A tiny generator whose avatars are complete only through `create`'s fallback (tests/generators.py)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_generator(path, complete_by_fallback(tiny_generator(head)), {"name": "tiny, complete by fallback"})
    return path


@pytest.fixture(scope="module")
def scatter_checkpoint(tmp_path_factory, head):
    """A random tiny generator: its points land all over the box, its Gaussians are half transparent."""
    path = tmp_path_factory.mktemp("ckpt") / "scatter.safetensors"
    save_generator(path, tiny_generator(head), {"name": "tiny random"})
    return path


@pytest.fixture(scope="module")
def portrait(tmp_path_factory, head):
    avatar = make_procedural_avatar(4, head, hair_style="short")
    image = render_frame(AvatarAnimator(avatar, head), FaceControls(), ViewSpec(yaw_deg=10, width=512, height=512, radius=0.7))
    path = tmp_path_factory.mktemp("portrait") / "portrait.png"
    Image.fromarray(image).save(path)
    return path


@pytest.mark.slow
def test_create_writes_a_valid_rigged_bundle_and_a_comparison_sheet(tmp_path, tiny_checkpoint, portrait, head, capsys):
    out = tmp_path / "avatar"
    code = main(["create", str(portrait), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "--max-points",
                 str(FALLBACK_POINTS), "--refine-steps", "2", "--seed", "3"])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    avatar = read_bundle(out)
    validate_avatar(avatar, num_faces=head.num_faces, num_vertices=head.num_vertices)
    k = 8
    anchor = avatar.meta["anchor"]  # the face layer replaced the decoder's Gaussians on the fitted face
    assert anchor["face_layer"] > 0 and anchor["photo_colours"] and anchor["mirror"]
    assert 64 <= summary["points"] <= FALLBACK_POINTS
    assert avatar.gaussians.num == summary["points"] * k - anchor["dropped_decoder_gaussians"] + anchor["face_layer"]
    assert set(summary["seconds"]) >= {"understand", "fit", "encode", "generate", "decode", "anchor", "refine", "bundle"}
    assert avatar.source.image.shape == (512, 512, 3) and avatar.source.camera["width"] == 512
    assert avatar.meta["creation_options"]["max_points"] == FALLBACK_POINTS and avatar.meta["refine_steps"] == 2
    # the sampled tries fell short, so the avatar came from the fitted head's surface, and every channel says so
    assert summary["points_from"] == "template" == avatar.meta["points_from"]
    assert summary["coverage"]["face"] >= 0.95 and summary["coverage"]["head"] >= 0.75
    assert any("fitted head's surface" in w for w in summary["warnings"])
    assert "warning: the first sampled points did not make a complete avatar" in captured.err
    assert avatar.meta["warnings"] == summary["warnings"]
    assert (out / "preview.png").exists()
    # every Gaussian is bound to the triangle of the point it came from, at the closest point on it
    assert np.all(avatar.binding.barycentrics >= -1e-6) and np.allclose(avatar.binding.barycentrics.sum(1), 1, atol=1e-5)
    sheet = tmp_path / "sheet.png"
    assert main(["compare", str(out), "-o", str(sheet), "--tile", "96"]) == 0
    assert Image.open(sheet).size == (96 * 5, 96 + 22)


def test_create_is_deterministic_for_a_seed(tiny_checkpoint, portrait, head):
    options = CreateOptions(checkpoint=str(tiny_checkpoint), max_points=FALLBACK_POINTS, refine_steps=0, seed=7)
    a = create_avatar(portrait, options, head=head).avatar
    b = create_avatar(portrait, options, head=head).avatar
    assert np.array_equal(a.gaussians.means, b.gaussians.means) and np.array_equal(a.binding.triangles, b.binding.triangles)


def test_carving_keeps_only_points_on_the_portraits_matte(scatter_checkpoint, portrait, head):
    """An untrained model scatters points over the whole box: carving keeps those the matte allows (posed and
    projected like the photo), in the order written, and says how many it dropped."""
    from pointillist.model.portrait_probe import PortraitView
    from pointillist.model.silhouette import SilhouetteCarver

    base = dict(checkpoint=str(scatter_checkpoint), max_points=64, refine_steps=0, seed=5, quality="draft", anchor=False)
    anything = CompletenessCheck(face=0.0, head=0.0, min_points=1)  # the first try is returned, whatever it covers
    plain = create_avatar(portrait, CreateOptions(**base, carve=False), head=head, check=anything).avatar
    carved = create_avatar(portrait, CreateOptions(**base, carve=True), head=head, check=anything).avatar
    assert plain.meta["carved_points"] == 0 and carved.meta["carved_points"] > 0
    assert carved.meta["creation_options"]["carve"] is True
    src = carved.source
    view = PortraitView.from_arrays(src.image, np.array(src.camera["K"]), np.array(src.camera["viewmat"]),
                                    carved.identity.shape, src.pose, src.matte)
    k = carved.gaussians.num // carved.meta["generated_points"]
    # same seed, same context: the carved run writes the plain run's points (until a run of refusals stops it)
    # and keeps a subsequence of them
    written = carved.meta["generated_points"] + carved.meta["carved_points"]
    assert written <= plain.meta["generated_points"]
    plain_tris, kept_tris = list(plain.binding.triangles[::k][:written]), list(carved.binding.triangles[::k])
    it = iter(plain_tris)
    assert all(t in it for t in kept_tris)
    # and the matte really splits the plain run's points (first Gaussian of each, within the child radius)
    keep = SilhouetteCarver(view, head).keep(plain.gaussians.means[::k][:written], plain_tris)
    assert 0 < keep.sum() < written


def test_cancel_stops_between_stages_and_writes_nothing(tiny_checkpoint, portrait, head, tmp_path):
    from pointillist.pipeline import create_bundle

    seen = []

    def progress(stage, fraction):
        seen.append(stage)

    with pytest.raises(Cancelled):
        create_bundle(portrait, tmp_path / "out", CreateOptions(checkpoint=str(tiny_checkpoint), max_points=64),
                      head=head, progress=progress, cancelled=lambda: "encode" in seen)
    assert not (tmp_path / "out").exists() and "generate" not in seen


@pytest.mark.parametrize("case", ["not-an-image", "missing-checkpoint", "corrupt-checkpoint", "bad-option", "no-face",
                                  "too-few-points"])
def test_bad_input_is_refused_cleanly(case, tmp_path, tiny_checkpoint, portrait, capsys):
    args = [str(portrait), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint), "--max-points", "64"]
    expect = {"not-an-image": "not", "missing-checkpoint": "no such checkpoint", "corrupt-checkpoint": "bad.safetensors",
              "bad-option": "temperature", "no-face": "no face", "too-few-points": "max_points must be between 64"}[case]
    if case == "not-an-image":
        (tmp_path / "notes.png").write_text("hello")
        args[0] = str(tmp_path / "notes.png")
    elif case == "missing-checkpoint":
        args[4] = str(tmp_path / "none.safetensors")
    elif case == "corrupt-checkpoint":
        (tmp_path / "bad.safetensors").write_bytes(tiny_checkpoint.read_bytes()[:1000])
        args[4] = str(tmp_path / "bad.safetensors")
    elif case == "bad-option":
        args += ["--temperature", "-1"]
    elif case == "too-few-points":
        args[-1] = "63"
    elif case == "no-face":
        Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(tmp_path / "wall.png")
        args[0] = str(tmp_path / "wall.png")
    assert main(["create", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expect in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_avatar_that_no_try_completes_is_refused_and_nothing_is_written(scatter_checkpoint, portrait, head,
                                                                           tmp_path, capsys):
    """Half-transparent scattered points, and too few of them on the head surface to cover it: every try
    fails the check, and `create` refuses with the coverage it reached instead of writing a broken avatar."""
    with pytest.raises(IncompleteAvatar, match="could not make a complete avatar.*best of 4 tries.*face"):
        create_avatar(portrait, CreateOptions(checkpoint=str(scatter_checkpoint), max_points=96, refine_steps=0),
                      head=head)
    out = tmp_path / "avatar"
    code = main(["create", str(portrait), "-o", str(out), "--checkpoint", str(scatter_checkpoint), "--max-points", "96",
                 "--refine-steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "error: could not make a complete avatar" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_every_try_is_recorded_in_order_until_one_passes(tiny_checkpoint, portrait, head):
    options = CreateOptions(checkpoint=str(tiny_checkpoint), max_points=FALLBACK_POINTS, refine_steps=0, seed=4)
    result = create_avatar(portrait, options, head=head)
    tries = result.avatar.meta["completeness"]["attempts"]
    assert [t["points"] for t in tries] == ["sampled by the generator", "sampled again without silhouette carving",
                                             "sampled again with seed 5", "the fitted head's surface, decoded by the generator"]
    assert all(t["failures"] for t in tries[:3]) and not tries[3]["failures"]
    assert result.coverage.face >= 0.95 and result.coverage.head >= 0.75
    # without carving asked for, there is no carving-free retry
    result = create_avatar(portrait, CreateOptions(**{**options.__dict__, "carve": False}), head=head)
    assert len(result.avatar.meta["completeness"]["attempts"]) == 3


@pytest.fixture(scope="module")
def tight_portrait(tmp_path_factory, head):
    """A head shot cut by the frame just under the chin, as press photos and face crops are: the aligned crop
    runs past the photo's lower edge, and the neck the generator writes first lies over the crop's grey fill."""
    avatar = make_procedural_avatar(11, head, hair_style="short")
    image = render_frame(AvatarAnimator(avatar, head), FaceControls(), ViewSpec(yaw_deg=8, width=512, height=512, radius=0.55))
    path = tmp_path_factory.mktemp("tight") / "tight.png"
    Image.fromarray(image[60:400, 60:452]).save(path)  # the crown and everything under the chin cut off
    return path


def test_the_neck_of_a_head_cut_by_the_frame_is_not_carved_away(tight_portrait, head):
    """The real-photo failure, reproduced: judged against the crop's fill, the fitted neck lands off the matte;
    judged only where the photo speaks, it is kept."""
    import torch
    from pointillist.head.fit import fit_head
    from pointillist.model.portrait_probe import PortraitView
    from pointillist.model.silhouette import SilhouetteCarver
    from pointillist.model.template_points import template_points
    from pointillist.preprocess.portrait import understand_portrait

    inputs = understand_portrait(tight_portrait)
    assert not inputs.photo[-1].any() and inputs.photo[200:300, 200:300].all()  # the crop's bottom rows are fill
    fit = fit_head(inputs.landmarks, head, 512, 512)
    view = PortraitView.from_arrays(inputs.crop, fit.K, fit.viewmat, fit.shape, fit.pose, inputs.matte)
    points, triangles = template_points(head, fit.shape)
    neck = points[:, 1] < np.quantile(points[:, 1], 0.1)  # the lowest tenth: what the y-z-x order writes first
    with torch.no_grad():
        blind = SilhouetteCarver(view, head).keep(points[neck], triangles[neck])
        aware = SilhouetteCarver(view, head, photo=inputs.photo).keep(points[neck], triangles[neck])
    assert blind.mean() < 0.5 and aware.mean() > 0.9


@pytest.mark.slow
def test_the_shipped_generator_makes_a_whole_head_of_a_head_cut_by_the_frame(tight_portrait, head):
    """With the shipped generator: complete on the first try (before the fix: 24 points under the chin)."""
    result = create_avatar(tight_portrait, CreateOptions(quality="draft"), head=head)
    tries = result.avatar.meta["completeness"]["attempts"]
    assert len(tries) == 1 and result.avatar.meta["points_from"] == "generator", tries
    assert result.points > 400 and result.coverage.face >= 0.95 and result.coverage.head >= 0.75


def test_an_anchored_avatar_that_fails_the_check_is_anchored_again_then_left_unanchored(tiny_checkpoint, portrait, head,
                                                                                       monkeypatch):
    """The anchored avatar passes the completeness check or is not returned: first without the shape prior, then
    the generator's own avatar with a warning."""
    import dataclasses

    import pointillist.anchor as anchor

    real = anchor.anchor_to_photo
    seen_options = []

    def empty_when(predicate):
        def anchored(avatar, head, **kw):
            seen_options.append(kw["options"])
            out = real(avatar, head, **kw)
            if predicate(kw["options"]):  # an avatar the portrait camera sees nothing of
                g = dataclasses.replace(out.gaussians, opacity_logits=np.full(out.gaussians.num, -20.0, np.float32))
                out = dataclasses.replace(out, gaussians=g)
            return out
        return anchored

    options = CreateOptions(checkpoint=str(tiny_checkpoint), max_points=FALLBACK_POINTS, refine_steps=0, seed=7)
    monkeypatch.setattr(anchor, "anchor_to_photo", empty_when(lambda o: o.shape_prior))
    result = create_avatar(portrait, options, head=head)
    assert [o.shape_prior for o in seen_options] == [True, False]
    assert result.avatar.meta["anchor"]["shape_prior"] is False
    assert not any("anchoring" in w for w in result.warnings)

    seen_options.clear()
    monkeypatch.setattr(anchor, "anchor_to_photo", empty_when(lambda o: True))
    result = create_avatar(portrait, options, head=head)
    assert len(seen_options) == 2 and "anchor" not in result.avatar.meta
    assert any("anchoring to the photo left the avatar incomplete" in w for w in result.warnings)
    assert result.coverage.face >= 0.95 and result.coverage.head >= 0.75
