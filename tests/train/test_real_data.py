"""GaussianAvatars + NeRSemble-style cameras -> dataset shards, on a fixture written here.

The fixture: a FLAME-format head (synthetic FLAME arrays from tests/head/flame_fixture.py, with 478
landmark vertices moved onto our template's face landmarks so the portrait crop is a real face
crop), 300 Gaussians bound to it and saved by GaussianAvatars' writer, a two-timestep
``flame_param.npz`` (timestep 0 smiling, timestep 1 neutral with a head turn + translation) and
``transforms_train.json`` with two cameras per timestep, whose images are rendered here with our own
rasterizer from the GaussianAvatars-posed Gaussians (camera 0: square pixels, RGBA, global
``camera_angle_x``; camera 1: fx != fy, off-centre principal point, RGB + ``fg_mask_path``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pointillist.avatar.binding import closest_point_barycentrics
from pointillist.avatar.gaussian_avatars import (
    canonical_to_local,
    local_to_canonical,
    write_gaussian_avatars,
)
from pointillist.avatar.gaussians import Avatar, Binding, Gaussians, HeadIdentity
from pointillist.head.fit import model_landmarks
from pointillist.head.flame import convert_flame
from pointillist.head.model import HeadModel
from pointillist.preprocess import align
from pointillist.render.camera import K_from_focal, orbit_viewmat, project_points
from pointillist.render.rasterize import rasterize
from pointillist.train.dataset import (
    SH_C0,
    DatasetIndex,
    SubjectDataset,
    load_subject,
    subject_landmarks,
    verify_dataset,
)
from pointillist.train.dataset_cli import add_dataset_commands
from pointillist.train.real_data import (
    RealDataError,
    import_gaussian_avatars,
    read_transforms,
)
from pointillist.train.real_data_cli import add_real_data_commands
from pointillist.train.streaming import StreamingSubjects

from tests.head.flame_fixture import flame_arrays, write_chumpy_pickle

W, H = 200, 160  # source images
S = 64  # stored crops
ROOT_POSE = np.array([0.08, -0.25, 0.05])  # the neutral timestep's head turn (axis-angle, radians)
TRANSLATION = np.array([0.01, -0.02, 0.03])


# ------------------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def flame_head(tmp_path_factory) -> HeadModel:
    arrays = flame_arrays(seed=5)
    faces = arrays["f"].astype(np.int64)
    firsts, lm_faces = set(), []
    for f in range(len(faces)):
        if faces[f, 0] not in firsts:
            firsts.add(faces[f, 0])
            lm_faces.append(f)
        if len(lm_faces) == 478:
            break
    template = HeadModel.load()
    lm = subject_landmarks(template, np.zeros(template.num_shape))
    arrays["v_template"][faces[lm_faces, 0]] = lm  # the landmark vertices sit on a real face
    pkl = write_chumpy_pickle(tmp_path_factory.mktemp("flame") / "generic_model.pkl", arrays)
    data = convert_flame(pkl, n_shape=10, n_expr=10)
    bary = np.zeros((478, 3), np.float32)
    bary[:, 0] = 1.0
    data = dataclasses.replace(data, landmark_faces=np.asarray(lm_faces, np.int64), landmark_barycentrics=bary)
    return HeadModel(data)


def _viewmat_to_gl_c2w(viewmat: np.ndarray) -> np.ndarray:
    c2w = np.linalg.inv(viewmat)
    c2w[:3, 1:3] *= -1.0
    return c2w


def _render(g: Gaussians, means: np.ndarray, quats: np.ndarray, viewmat: np.ndarray, K: np.ndarray, w: int, h: int):
    out = rasterize(torch.as_tensor(means, dtype=torch.float32), torch.as_tensor(quats, dtype=torch.float32),
                    torch.as_tensor(g.log_scales, dtype=torch.float32).exp(), torch.sigmoid(torch.as_tensor(g.opacity_logits)),
                    (0.5 + SH_C0 * torch.as_tensor(g.sh_dc)).clamp_min(0.0),
                    viewmat=torch.as_tensor(viewmat, dtype=torch.float32), K=torch.as_tensor(K, dtype=torch.float32), width=w, height=h)
    return out.rgb.numpy().astype(np.float64), out.alpha.numpy().astype(np.float64)


@dataclasses.dataclass
class Fixture:
    model: Path
    head_path: Path
    avatar: Avatar
    world: dict  # timestep -> (GA-posed world means (N, 3), world landmarks (478, 3))
    cams: dict  # camera -> (world->camera viewmat, K)


def _params(head: HeadModel, shape, offsets) -> dict[str, np.ndarray]:
    T, V = 2, head.num_vertices
    expr = np.zeros((T, 100), np.float32)
    expr[0, :3] = [2.0, -1.5, 1.0]  # timestep 0 is expressive
    rotation = np.zeros((T, 3), np.float32)
    rotation[0] = [0.0, 0.3, 0.0]
    rotation[1] = ROOT_POSE
    jaw = np.zeros((T, 3), np.float32)
    jaw[0] = [0.2, 0.0, 0.0]
    translation = np.zeros((T, 3), np.float32)
    translation[1] = TRANSLATION
    return {"shape": np.pad(shape, (0, 300 - len(shape))).astype(np.float32), "expr": expr, "rotation": rotation,
            "neck_pose": np.zeros((T, 3), np.float32), "jaw_pose": jaw, "eyes_pose": np.zeros((T, 6), np.float32),
            "translation": translation, "static_offset": offsets[None].astype(np.float32),
            "dynamic_offset": np.zeros((T, V, 3), np.float32)}


def _posed_world(head: HeadModel, avatar: Avatar, params: dict, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GaussianAvatars' posing: (means, quats, landmarks) in world at timestep t, from the triangle-local Gaussians."""
    shape = torch.as_tensor(avatar.identity.shape)[None]
    offsets = torch.as_tensor(avatar.identity.vertex_offsets)[None]
    with torch.no_grad():
        canon = head.identity_vertices(shape, offsets)[0].double().numpy()
        pose = np.stack([params["rotation"][t], params["neck_pose"][t], params["jaw_pose"][t],
                         params["eyes_pose"][t, :3], params["eyes_pose"][t, 3:]])
        out = head(shape=shape, expression=torch.as_tensor(params["expr"][t, :head.num_expr])[None],
                   pose=torch.as_tensor(pose)[None], translation=torch.as_tensor(params["translation"][t])[None], offsets=offsets)
        posed = out.vertices[0].double().numpy()
        landmarks = model_landmarks(head, out.vertices)[0].double().numpy()
    tri = avatar.binding.triangles
    local = canonical_to_local(avatar.gaussians, tri, canon, head.data.faces)
    g = local_to_canonical(local, tri, posed, head.data.faces)
    return g.means.astype(np.float64), g.quats.astype(np.float64), landmarks


@pytest.fixture(scope="module")
def fixture(flame_head, tmp_path_factory) -> Fixture:
    head = flame_head
    root = tmp_path_factory.mktemp("ga")
    head_path = root / "flame.npz"
    head.data.save(head_path)
    rng = np.random.default_rng(9)
    shape = (rng.normal(size=head.num_shape) * 0.5).astype(np.float32)
    offsets = rng.normal(0, 0.0005, (head.num_vertices, 3)).astype(np.float32)
    with torch.no_grad():
        canon = head.identity_vertices(torch.as_tensor(shape)[None], torch.as_tensor(offsets)[None])[0].double().numpy()
    n = 300
    tri = rng.integers(0, head.num_faces, n)
    corners = canon[head.data.faces[tri]]
    means = (corners * rng.dirichlet(np.ones(3), n)[..., None]).sum(1)
    q = rng.normal(size=(n, 4))
    g = Gaussians(means=means.astype(np.float32), log_scales=rng.normal(-4.3, 0.2, (n, 3)).astype(np.float32),
                  quats=(q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
                  opacity_logits=rng.normal(2.0, 0.5, n).astype(np.float32), sh_dc=rng.normal(0, 1.0, (n, 3)).astype(np.float32),
                  sh_rest=np.zeros((n, 0, 3), np.float32))
    avatar = Avatar(gaussians=g, binding=Binding(tri.astype(np.int64), closest_point_barycentrics(means, corners).astype(np.float32)),
                    identity=HeadIdentity(head.model_id, shape, offsets))
    model = root / "model"
    iteration = model / "point_cloud" / "iteration_600"
    write_gaussian_avatars(avatar, iteration, head)
    params = _params(head, shape, offsets)
    np.savez(iteration / "flame_param.npz", **params)  # GaussianAvatars' per-timestep parameters
    (iteration.parent / "iteration_100").mkdir()  # an older iteration without files: the newest wins

    world, cams = {}, {}
    for t in (0, 1):
        world[t] = _posed_world(head, avatar, params, t)
    centre = world[1][2].mean(0)
    f0 = 300.0
    cams[0] = (orbit_viewmat(8.0, 4.0, 0.6, centre), K_from_focal(f0, f0, W / 2, H / 2))
    cams[1] = (orbit_viewmat(-40.0, -6.0, 0.55, centre), K_from_focal(290.0, 290.0 * 0.9, W / 2 + 7.0, H / 2 - 5.0))
    frames = []
    (model / "images").mkdir()
    for t in (0, 1):
        means_w, quats_w, _ = world[t]
        for c in (0, 1):
            viewmat, K = cams[c]
            rgb, alpha = _render(g, means_w, quats_w, viewmat, K, W, H)
            rgb8 = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
            a8 = (np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8)
            stem = f"images/{t:05d}_{c:02d}"
            frame = {"file_path": stem, "transform_matrix": _viewmat_to_gl_c2w(viewmat).tolist(), "timestep_index": t,
                     "camera_index": c, "flame_param_path": f"flame_param/{t:05d}.npz"}
            if c == 0:
                Image.fromarray(np.dstack([rgb8, a8]), "RGBA").save(model / f"{stem}.png")
            else:
                Image.fromarray(rgb8).save(model / f"{stem}.png")
                (model / "fg_masks").mkdir(exist_ok=True)
                Image.fromarray(a8).save(model / f"fg_masks/{t:05d}_{c:02d}.png")
                frame.update({"fg_mask_path": f"fg_masks/{t:05d}_{c:02d}.png", "fl_x": K[0, 0], "fl_y": K[1, 1],
                              "cx": K[0, 2], "cy": K[1, 2], "w": W, "h": H})
            frames.append(frame)
    transforms = {"camera_angle_x": 2 * math.atan(W / 2 / f0), "w": W, "h": H, "frames": frames}
    (model / "transforms_train.json").write_text(json.dumps(transforms))
    return Fixture(model, head_path, avatar, world, cams)


@pytest.fixture(scope="module")
def imported(fixture, flame_head, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real") / "data"
    summary = import_gaussian_avatars([fixture.model, fixture.model], out, flame_head, views=2, image_size=S, shard_size=1,
                                      heldout_every=2, background="keep")
    assert summary.to_json()["subjects"] == 2 and summary.shards == 2 and summary.splits == {"train": 1, "heldout": 1}
    return out


# ------------------------------------------------------------------------------------------- the record
def test_transforms_are_parsed_with_gaussian_avatars_conventions(fixture):
    frames = read_transforms(fixture.model)
    assert [(f.timestep, f.camera) for f in frames] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for f in frames:
        viewmat, K = fixture.cams[f.camera]
        np.testing.assert_allclose(f.world_to_camera, viewmat, atol=1e-9)  # OpenGL c2w -> OpenCV w2c
        np.testing.assert_allclose(f.K, K, atol=1e-9)  # camera 0 from the global camera_angle_x
        assert f.image.name == f"{f.timestep:05d}_{f.camera:02d}.png"  # ".png" appended like GaussianAvatars
    assert frames[1].mask is not None and frames[0].mask is None


def test_neutral_timestep_views_and_posed_gaussians_match(fixture, imported):
    rec = load_subject(imported, 0)
    sources = json.loads((imported / "sources.json").read_text())["subjects"][0]
    assert [v["timestep_index"] for v in sources["views"]] == [1, 1]  # the neutral timestep, not the smiling one
    assert [v["camera_index"] for v in sources["views"]] == [0, 1]  # view 0 = the frontal camera
    assert sources["point_cloud"].endswith("iteration_600/point_cloud.ply")
    assert not rec.expressions.any() and not rec.poses.any()  # root folded into the camera, the rest neutral
    means_w = fixture.world[1][0]
    for v, cam in enumerate((0, 1)):
        w2c, _ = fixture.cams[cam]
        want = means_w @ w2c[:3, :3].T + w2c[:3, 3]  # GaussianAvatars-posed, in the real camera
        got = rec.means.astype(np.float64) @ rec.viewmats[v, :3, :3].T.astype(np.float64) + rec.viewmats[v, :3, 3]
        # the crop camera is the real one rolled about its optical axis: same depth, same distance from the axis
        np.testing.assert_allclose(got[:, 2], want[:, 2], atol=2e-5)
        np.testing.assert_allclose(np.linalg.norm(got[:, :2], axis=1), np.linalg.norm(want[:, :2], axis=1), atol=2e-5)
    np.testing.assert_allclose(rec.means, fixture.avatar.gaussians.means, atol=2e-5)  # canonical = what was bound
    np.testing.assert_array_equal(rec.binding, fixture.avatar.binding.triangles)
    assert 0 < rec.num_ar_points <= rec.num_gaussians and rec.style == "real"


def test_crop_camera_puts_the_landmarks_where_the_portrait_pipeline_does(fixture, imported, flame_head):
    rec = load_subject(imported, 0)
    landmarks_w = fixture.world[1][2]
    # view 0 has square pixels: the pipeline's crop of the real photo, from the landmarks seen in it
    w2c, K = fixture.cams[0]
    uv_src, _ = project_points(landmarks_w, w2c, K)
    expected = align.crop_transform(uv_src, 512).apply(uv_src) * (S / 512)
    root = np.eye(4)
    with torch.no_grad():
        out = flame_head(shape=torch.as_tensor(rec.shape)[None],
                         pose=torch.as_tensor(np.stack([ROOT_POSE, *np.zeros((4, 3))]), dtype=torch.float32)[None],
                         translation=torch.as_tensor(TRANSLATION, dtype=torch.float32)[None],
                         offsets=torch.as_tensor(fixture.avatar.identity.vertex_offsets)[None])
        root = out.joint_transforms[0, 0].double().numpy()
    landmarks_head = (landmarks_w - root[:3, 3]) @ root[:3, :3]  # world -> head space
    got, _ = project_points(landmarks_head, rec.viewmats[0], rec.Ks[0])
    np.testing.assert_allclose(got, expected, atol=2e-3)
    # both views: eyes level, their midpoint at (50 %, 42 %) of the crop, as preprocess.align frames a face
    for v in range(2):
        uv, _ = project_points(landmarks_head, rec.viewmats[v], rec.Ks[v])
        crop = align.crop_transform(uv, S)
        np.testing.assert_allclose(crop.matrix, [[1, 0, 0], [0, 1, 0]], atol=2e-3)


def test_images_land_where_a_direct_render_puts_them(fixture, imported):
    rec = load_subject(imported, 0)
    g = fixture.avatar.gaussians
    for v in range(2):
        rgb, alpha = _render(g, rec.means, rec.quats, rec.viewmats[v].astype(np.float64), rec.Ks[v].astype(np.float64), S, S)
        a_rec = rec.masks[v] / 255.0
        err = np.abs(a_rec - alpha).mean()
        shifted = np.abs(a_rec - np.roll(alpha, 2, axis=1)).mean()
        assert alpha.mean() > 0.05 and err < 0.02 and shifted > 2 * err, (v, err, shifted)
        # background "keep": the source's black (premultiplied), and the pipeline's grey where the photo ends
        fg = alpha > 0.5
        img_err = np.abs(rec.images[v][fg] / 255.0 - np.clip(rgb[fg], 0, 1)).mean()
        assert fg.sum() > 100 and img_err < 0.03, (v, img_err)


def test_random_background_composites_under_the_mask(fixture, flame_head, imported, tmp_path):
    out = tmp_path / "bg"
    import_gaussian_avatars([fixture.model], out, flame_head, views=2, image_size=S, background="random")
    keep, rand = load_subject(imported, 0), load_subject(out, 0)
    np.testing.assert_array_equal(keep.masks, rand.masks)
    solid = keep.masks == 255
    assert np.abs(keep.images[solid].astype(int) - rand.images[solid]).max() <= 1
    empty = keep.masks == 0
    assert np.abs(keep.images[empty].astype(int) - rand.images[empty]).mean() > 20  # the background was replaced


def test_written_folder_reads_everywhere(imported):
    assert verify_dataset(imported) == []
    index = DatasetIndex.load(imported)
    assert index.config.views == 2 and index.config.image_size == S and len(index.shards) == 2
    assert [r.subject_id for r in SubjectDataset(imported, "train")] == [0]
    assert [r.subject_id for r in SubjectDataset(imported, "heldout")] == [1]
    streamed = list(StreamingSubjects(imported, "all", shuffle=False))
    assert [r.subject_id for r in streamed] == [0, 1]
    np.testing.assert_array_equal(streamed[0].images, load_subject(imported, 0).images)
    np.testing.assert_array_equal(streamed[1].means, streamed[0].means)  # the same model imported twice


# ------------------------------------------------------------------------------------------- the command and its errors
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointillist")
    sub = parser.add_subparsers(dest="command", required=True)
    add_real_data_commands(add_dataset_commands(sub))
    return parser


def test_command_writes_a_dataset(fixture, tmp_path, capsys):
    out = tmp_path / "cli"
    args = _parser().parse_args(["dataset", "import-gaussian-avatars", str(fixture.model), "-o", str(out),
                                 "--head", str(fixture.head_path), "--views", "2", "--image-size", "32"])
    args.func(args)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["subjects"] == 1 and verify_dataset(out) == []
    assert load_subject(out, 0).images.shape == (2, 32, 32, 3)
    with pytest.raises(RealDataError, match="exists: import into a new folder"):
        args.func(args)


def _broken_copy(fixture: Fixture, tmp_path: Path) -> Path:
    dst = tmp_path / "broken"
    shutil.copytree(fixture.model, dst)
    return dst


def test_errors_name_the_file_and_field(fixture, flame_head, tmp_path):
    def run(model: Path, **kw):
        return import_gaussian_avatars([model], tmp_path / f"out{len(list(tmp_path.iterdir()))}", flame_head,
                                       views=kw.pop("views", 2), image_size=16, **kw)

    model = _broken_copy(fixture, tmp_path)
    tf = model / "transforms_train.json"
    data = json.loads(tf.read_text())
    del data["frames"][2]["transform_matrix"]
    tf.write_text(json.dumps(data))
    with pytest.raises(RealDataError, match=r"transforms_train\.json frames\[2\]: field 'transform_matrix' missing"):
        run(model)
    data["frames"][2]["transform_matrix"] = [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    tf.write_text(json.dumps(data))
    with pytest.raises(RealDataError, match=r"frames\[2\]: field 'transform_matrix' is not a rigid"):
        run(model)
    shutil.rmtree(model)

    model = _broken_copy(fixture, tmp_path)
    (model / "fg_masks" / "00001_01.png").unlink()
    with pytest.raises(RealDataError, match=r"frames\[3\]: mask .*00001_01\.png not found \(field 'fg_mask_path'\)"):
        run(model)
    shutil.rmtree(model)

    model = _broken_copy(fixture, tmp_path)
    Image.open(model / "images" / "00001_00.png").convert("RGB").save(model / "images" / "00001_00.png")
    with pytest.raises(RealDataError, match=r"frames\[2\]: no foreground alpha"):
        run(model)
    shutil.rmtree(model)

    model = _broken_copy(fixture, tmp_path)
    npz = model / "point_cloud" / "iteration_600" / "flame_param.npz"
    with np.load(npz) as z:
        params = {k: z[k] for k in z.files}
    params["rotation"] = params["rotation"][:1]
    np.savez(npz, **params)
    with pytest.raises(RealDataError, match=r"flame_param\.npz: per-timestep keys disagree"):
        run(model)
    npz.unlink()
    with pytest.raises(RealDataError, match=r"flame_param\.npz: missing"):
        run(model)
    shutil.rmtree(model)

    with pytest.raises(RealDataError, match="4 frame\\(s\\), 5 view\\(s\\) asked"):
        run(fixture.model, views=5)
    nolm = HeadModel(dataclasses.replace(flame_head.data, landmark_faces=None, landmark_barycentrics=None))
    with pytest.raises(RealDataError, match="no MediaPipe landmark mapping"):
        import_gaussian_avatars([fixture.model], tmp_path / "nolm", nolm, views=2, image_size=16)


def test_more_views_than_neutral_cameras_take_the_next_timestep_with_its_controls(fixture, flame_head, tmp_path):
    from pointillist.avatar.animate import AvatarAnimator

    out = tmp_path / "three"
    import_gaussian_avatars([fixture.model], out, flame_head, views=3, image_size=S, background="keep")
    rec = load_subject(out, 0)
    views = json.loads((out / "sources.json").read_text())["subjects"][0]["views"]
    assert [v["timestep_index"] for v in views] == [1, 1, 0]
    np.testing.assert_allclose(rec.expressions[2, :3], [2.0, -1.5, 1.0])
    np.testing.assert_allclose(rec.poses[2, 2], [0.2, 0.0, 0.0], atol=1e-7)
    assert not rec.poses[:, 0].any()  # the root is always in the camera
    assert rec.is_posed(2) and not rec.is_posed(0)
    # the pose contract: animate the canonical Gaussians with the view's controls, then use its camera
    posed = AvatarAnimator(fixture.avatar, flame_head)(expression=rec.expressions[2], pose=rec.poses[2])
    means = posed.means[0].double().numpy()
    cam = views[2]["camera_index"]
    w2c, _ = fixture.cams[cam]
    want = fixture.world[0][0] @ w2c[:3, :3].T + w2c[:3, 3]
    got = means @ rec.viewmats[2, :3, :3].T.astype(np.float64) + rec.viewmats[2, :3, 3]
    # GaussianAvatars moves a Gaussian with its triangle's frame, AvatarAnimator with blended LBS; on this
    # fixture's huge random triangles a few Gaussians differ by centimetres, the typical one by < 1 mm
    # (the crop camera is the real one rolled about its axis: compare depth and distance from the axis)
    err = np.hypot(got[:, 2] - want[:, 2], np.linalg.norm(got[:, :2], axis=1) - np.linalg.norm(want[:, :2], axis=1))
    assert np.median(err) < 2e-3, np.median(err)


def test_frame_flame_param_path_is_used_when_the_model_lacks_the_timestep(fixture, flame_head, imported, tmp_path):
    model = _broken_copy(fixture, tmp_path)
    npz = model / "point_cloud" / "iteration_600" / "flame_param.npz"
    with np.load(npz) as z:
        params = {k: z[k] for k in z.files}
    per_t = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")
    (model / "flame_param").mkdir()
    np.savez(model / "flame_param" / "00001.npz", **{k: params[k][1:2] for k in per_t})  # VHAP's per-timestep file
    np.savez(npz, **{k: (v[:1] if k in per_t else v) for k, v in params.items()})  # the model only knows timestep 0
    out = tmp_path / "fallback"
    import_gaussian_avatars([model], out, flame_head, views=2, image_size=S, background="keep")
    np.testing.assert_allclose(load_subject(out, 0).viewmats, load_subject(imported, 0).viewmats, atol=1e-6)
    (model / "flame_param" / "00001.npz").unlink()
    with pytest.raises(RealDataError, match=r"flame_param/00001\.npz: FLAME parameter file not found"):
        import_gaussian_avatars([model], tmp_path / "none", flame_head, views=2, image_size=S)
