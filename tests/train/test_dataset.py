"""The sharded synthetic dataset: layout, determinism, resume / grow, splits, AR targets, cameras, damage."""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pointillist.preprocess.align import crop_transform
from pointillist.render.camera import project_points
from pointillist.render.rasterize import rasterize
from pointillist.synth.procedural import SYNTH_STYLES, make_procedural_avatar
from pointillist.train import dataset as ds
from pointillist.train.dataset import (
    DatasetConfig,
    DatasetError,
    DatasetIndex,
    SubjectDataset,
    SubjectRecord,
    build_dataset,
    load_subject,
    read_subjects,
    subject_landmarks,
    subject_plan,
    voxel_subsample,
)
from pointillist.train.dataset_cli import add_dataset_commands

TINY = DatasetConfig(subjects=4, views=2, image_size=64, shard_size=2, density=0.5)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shard_hashes(root: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(root.glob("shard-*.npz"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "data"
    events = []
    summary = build_dataset(root, TINY, progress=events.append)
    assert summary.built_shards == 2 and summary.kept_shards == 0 and summary.built_subjects == 4
    assert [(e.file, e.done, e.total, e.kept) for e in events] == [("shard-00000.npz", 1, 2, False), ("shard-00001.npz", 2, 2, False)]
    return root


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------- layout
def test_tiny_build_writes_index_and_shards(tiny):
    index_json = json.loads((tiny / "index.json").read_text())
    assert index_json["format"] == ds.FORMAT and index_json["format_version"] == ds.FORMAT_VERSION
    assert index_json["config"] == TINY.to_json()
    assert [s["file"] for s in index_json["shards"]] == ["shard-00000.npz", "shard-00001.npz"]
    assert [s["subject_ids"] for s in index_json["shards"]] == [[0, 1], [2, 3]]
    for s in index_json["shards"]:
        path = tiny / s["file"]
        assert s["sha256"] == _sha(path) and s["bytes"] == path.stat().st_size
        with np.load(path, allow_pickle=False) as z:  # plain arrays only, no pickled objects
            assert z["images"].shape == (2, 2, 64, 64, 3) and z["images"].dtype == np.uint8
            assert z["gaussian_offsets"][-1] == len(z["means"]) and z["ar_offsets"][-1] == len(z["ar_points"])
    assert sorted(p.name for p in tiny.iterdir() if not p.name.startswith(".")) == ["index.json", "shard-00000.npz", "shard-00001.npz"]
    assert not [p for p in tiny.iterdir() if p.name.endswith(".tmp")]

    index = DatasetIndex.load(tiny)
    for sid in range(4):
        rec = load_subject(tiny, sid)
        plan = subject_plan(TINY, sid)
        meta = index.subjects[sid]
        assert (rec.subject_id, rec.style, rec.beard, rec.split) == (sid, plan.style, plan.beard, plan.split)
        assert meta == {k: v for k, v in rec.meta().items() if k != "id"}
        assert {"split", "style", "beard", "num_gaussians", "num_ar_points", "beard_style", "glasses", "fitzpatrick",
                "expression_magnitude", "jaw_deg"} <= set(meta)
        assert rec.expressions.shape == (2, 42) and rec.poses.shape == (2, 5, 3)
        assert not rec.is_posed(1) and meta["expression_preset"] == rec.attributes["expression_preset"]
        N, P = rec.num_gaussians, rec.num_ar_points
        expected = {"shape": ((26,), np.float32), "means": ((N, 3), np.float32), "log_scales": ((N, 3), np.float32),
                    "quats": ((N, 4), np.float32), "opacity_logits": ((N,), np.float32), "sh_dc": ((N, 3), np.float32),
                    "binding": ((N,), np.int32), "ar_points": ((P, 3), np.float32), "ar_binding": ((P,), np.int32),
                    "images": ((2, 64, 64, 3), np.uint8), "masks": ((2, 64, 64), np.uint8), "viewmats": ((2, 4, 4), np.float32),
                    "Ks": ((2, 3, 3), np.float32), "view_yaw_pitch": ((2, 2), np.float32)}
        for name, (shape, dtype) in expected.items():
            arr = getattr(rec, name)
            assert arr.shape == shape and arr.dtype == dtype, name
            assert np.all(np.isfinite(arr)), name
        # the stored subject is exactly the procedural avatar of seed + id
        avatar = make_procedural_avatar(TINY.seed + sid, hair_style=plan.style, beard=plan.beard, density=TINY.density,
                                        beard_style=plan.beard_style if plan.beard else None, glasses=plan.glasses,
                                        appearance=plan.appearance)
        assert np.array_equal(rec.means, avatar.gaussians.means) and np.array_equal(rec.sh_dc, avatar.gaussians.sh_dc)
        assert np.array_equal(rec.binding, avatar.binding.triangles) and np.array_equal(rec.shape, avatar.identity.shape)
        assert 0 < P < N


def test_record_matches_direct_build(tiny):
    direct = ds.make_subject(TINY, 3)
    stored = load_subject(tiny, 3)
    for f in SubjectRecord.__dataclass_fields__:
        a, b = getattr(direct, f), getattr(stored, f)
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, f


def test_determinism_two_builds_identical(tiny, tmp_path):
    build_dataset(tmp_path / "again", TINY)
    assert _shard_hashes(tmp_path / "again") == _shard_hashes(tiny)
    other = build_dataset(tmp_path / "seed1", DatasetConfig(**{**TINY.to_json(), "seed": 1, "subjects": 2}))
    assert other.built_subjects == 2
    assert not np.array_equal(load_subject(tmp_path / "seed1", 0).images, load_subject(tiny, 0).images)


# ------------------------------------------------------------------------------------------- resume
def test_resume_after_deleted_shard_and_stray_temp_file(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    (root / "shard-00001.npz").unlink()
    stray = root / ".shard-00000.npz.abc123.tmp"  # what atomic_write leaves when killed mid-write
    stray.write_bytes(b"half a shard")
    events = []
    summary = build_dataset(root, TINY, progress=events.append)
    assert not stray.exists()
    assert [(e.file, e.kept) for e in events] == [("shard-00000.npz", True), ("shard-00001.npz", False)]
    assert (summary.kept_shards, summary.built_shards) == (1, 1)
    assert _shard_hashes(root) == _shard_hashes(tiny)
    assert json.loads((root / "index.json").read_text()) == json.loads((tiny / "index.json").read_text())


def test_resume_rebuilds_a_shard_whose_hash_is_wrong(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    data = bytearray((root / "shard-00000.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "shard-00000.npz").write_bytes(bytes(data))
    events = []
    build_dataset(root, TINY, progress=events.append)
    assert [(e.file, e.kept) for e in events] == [("shard-00001.npz", True), ("shard-00000.npz", False)]
    assert _shard_hashes(root) == _shard_hashes(tiny)


def test_different_config_is_refused_and_names_the_fields(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    before = _shard_hashes(root)
    with pytest.raises(DatasetError, match=r"image_size.*ar_voxel_m|ar_voxel_m.*image_size") as err:
        build_dataset(root, DatasetConfig(**{**TINY.to_json(), "image_size": 32, "ar_voxel_m": 0.02}))
    assert "views" not in str(err.value)
    with pytest.raises(DatasetError, match="only grows"):
        build_dataset(root, DatasetConfig(**{**TINY.to_json(), "subjects": 3}))
    assert _shard_hashes(root) == before


def test_growing_appends_and_equals_a_fresh_build(tiny, tmp_path):
    root = tmp_path / "grow"
    build_dataset(root, DatasetConfig(**{**TINY.to_json(), "subjects": 3}))
    assert read_subjects(root, "all") == [0, 1, 2]
    events = []
    build_dataset(root, TINY, progress=events.append)  # 3 -> 4 subjects: shard 1 goes from [2] to [2, 3]
    assert [(e.file, e.kept) for e in events] == [("shard-00000.npz", True), ("shard-00001.npz", False)]
    assert _shard_hashes(root) == _shard_hashes(tiny)
    assert read_subjects(root, "all") == [0, 1, 2, 3]


def test_bad_config_values_are_refused(tmp_path):
    for change in ({"subjects": 0}, {"image_size": -1}, {"ar_voxel_m": 0.0}, {"beard_rate": 1.5}, {"fov_max_deg": 5.0}):
        with pytest.raises(DatasetError, match=next(iter(change))):
            build_dataset(tmp_path / "bad", DatasetConfig(**{**TINY.to_json(), **change}))
    with pytest.raises(DatasetError, match="workers"):
        build_dataset(tmp_path / "bad", TINY, workers=0)


# ------------------------------------------------------------------------------------------- splits and plans
def test_split_rule_fixed_by_subject_id(tiny):
    config = DatasetConfig(subjects=35)
    heldout = [i for i in range(35) if subject_plan(config, i).split == "heldout"]
    assert heldout == [9, 19, 29]
    small = DatasetConfig(subjects=12)
    assert all(subject_plan(small, i) == subject_plan(config, i) for i in range(12))  # growing moves nobody
    assert subject_plan(DatasetConfig(heldout_every=4), 3).split == "heldout"
    assert read_subjects(tiny, "train") == [0, 1, 2, 3] and read_subjects(tiny, "heldout") == []
    with pytest.raises(DatasetError, match="split"):
        read_subjects(tiny, "test")


def test_styles_balanced_and_beards_seeded():
    config = DatasetConfig(subjects=1000)
    plans = [subject_plan(config, i) for i in range(1000)]
    n = len(SYNTH_STYLES)
    for b in range(0, 1000, n):  # every block of len(SYNTH_STYLES) holds every style once
        assert sorted(p.style for p in plans[b:b + n]) == sorted(SYNTH_STYLES)
    assert 0.25 < np.mean([p.beard for p in plans]) < 0.35
    heldout_styles = {p.style for p in plans if p.split == "heldout"}
    assert heldout_styles == set(SYNTH_STYLES)  # the held-out slot is not tied to one style
    assert [p.style for p in plans[:20]] != [subject_plan(DatasetConfig(seed=5), i).style for i in range(20)]


# ------------------------------------------------------------------------------------------- AR targets
def test_voxel_subsample_picks_the_gaussian_nearest_each_voxel_mean():
    means = np.array([[0.001, 0.001, 0.001], [0.004, 0.004, 0.004], [0.009, 0.009, 0.009],  # voxel (0,0,0), mean 0.00467
                      [0.015, 0.001, 0.001],  # voxel x = 1
                      [0.001, 0.015, 0.001],  # voxel y = 1
                      [0.015, 0.002, 0.002]], np.float32)  # voxel x = 1, but transparent
    logits = np.array([5.0, 5.0, 5.0, 5.0, 5.0, -5.0], np.float32)
    binding = np.arange(6, dtype=np.int32) + 100
    pts, bnd, idx = voxel_subsample(means, logits, binding, 0.01, 0.05)
    assert idx.tolist() == [1, 3, 4]  # sorted by voxel (y, z, x): (0,0,0), (0,0,1), (1,0,0)
    assert np.array_equal(pts, means[[1, 3, 4]]) and bnd.tolist() == [101, 103, 104]
    pts2, _, _ = voxel_subsample(means, logits, binding, 0.1, 0.05)
    assert len(pts2) == 1
    assert len(voxel_subsample(means, np.full(6, -9.0, np.float32), binding, 0.01)[0]) == 0


def test_ar_points_grow_with_hair(head):
    counts = {}
    for style in ("bald", "short", "long"):
        a = make_procedural_avatar(7, head, hair_style=style, beard=False, density=0.5)
        counts[style] = len(voxel_subsample(a.gaussians.means, a.gaussians.opacity_logits, a.binding.triangles, 0.01)[0])
    assert counts["bald"] < counts["short"] < counts["long"], counts
    assert counts["long"] > 2 * counts["bald"]


# ------------------------------------------------------------------------------------------- cameras
def test_stored_cameras_reproduce_the_portrait_crop(tiny, head):
    posed_seen = 0
    for sid in read_subjects(tiny, "all"):
        rec = load_subject(tiny, sid)
        rest = subject_landmarks(head, rec.shape)
        S = rec.images.shape[1]
        for v in range(rec.num_views):
            # a posed view is framed on the *posed* landmarks, exactly as a rest view on the rest ones
            lm = ds.posed_landmarks(head, rec.shape, rec.expressions[v], rec.poses[v]) if rec.is_posed(v) else rest
            if rec.is_posed(v):
                posed_seen += 1
                assert np.abs(lm - rest).max() > 1e-3  # the pose really moved the face
            uv, z = project_points(lm, rec.viewmats[v], rec.Ks[v])
            assert np.all(z > 0.1)
            # The crop rule applied to the stored view is the identity: eyes levelled at (50 %, 42 %),
            # the face at 45 % of the side -- exactly the framing the portrait pipeline produces.
            again = crop_transform(uv * (ds.CROP_SIZE / S), ds.CROP_SIZE).matrix
            assert np.allclose(again[:, :2], np.eye(2), atol=2e-5), again
            assert np.allclose(again[:, 2], 0.0, atol=0.02), again
            R = rec.viewmats[v][:3, :3].astype(np.float64)
            assert np.allclose(R @ R.T, np.eye(3), atol=1e-5) and np.linalg.det(R) > 0
    assert posed_seen >= 1  # TINY's four subjects include posed portraits (expression_rate 0.8)


def test_aligned_camera_equals_cropping_the_source_photo(head):
    config = DatasetConfig(roll_deg=20.0)
    shape = make_procedural_avatar(4, head, density=0.2).identity.shape
    lm = subject_landmarks(head, shape)
    rng = np.random.default_rng(0)
    for portrait in (True, False, False):
        src_view, src_K, _, _ = ds.sample_source_camera(rng, config, lm, portrait)
        uv_src, _ = project_points(lm, src_view, src_K)
        crop = crop_transform(uv_src, 512)
        assert abs(crop.rotation_deg) > 0.5  # the source roll is real and gets undone
        for size in (512, 100):
            view, K = ds.aligned_camera(lm, src_view, src_K, size)
            uv, _ = project_points(lm, view, K)
            assert np.allclose(uv, crop.apply(uv_src) * size / 512, atol=1e-6)
            # and any other point, e.g. the back of the head, maps the same way
            pts = np.array([[0.0, 0.1, -0.1], [0.08, -0.05, 0.0]])
            a, _ = project_points(pts, view, K)
            b, _ = project_points(pts, src_view, src_K)
            assert np.allclose(a, crop.apply(b) * size / 512, atol=1e-6)


def test_face_gaussians_project_inside_the_mask_and_lighting_is_baked(head):
    """The stored Gaussians (animated with a view's stored controls) rasterize to the stored pixels."""
    from pointillist.avatar.animate import AvatarAnimator
    from pointillist.avatar.binding import closest_point_barycentrics
    from pointillist.avatar.gaussians import Avatar, Binding, Gaussians, HeadIdentity

    config = DatasetConfig(views=2, image_size=96, density=0.4, expression_rate=1.0)
    rec = ds.make_subject(config, 2)
    assert rec.is_posed(0) and not rec.is_posed(1)
    # barycentrics are not stored: recover them as the synthesiser made them (closest point on the bound triangle)
    with torch.no_grad():
        verts = head.identity_vertices(torch.as_tensor(rec.shape)[None])[0].double().numpy()
    bary = closest_point_barycentrics(rec.means, verts[head.data.faces[rec.binding]]).astype(np.float32)
    avatar = Avatar(Gaussians(rec.means, rec.log_scales, rec.quats, rec.opacity_logits, rec.sh_dc,
                              np.zeros((rec.num_gaussians, 0, 3), np.float32)),
                    Binding(rec.binding.astype(np.int64), bary), HeadIdentity(head.model_id, rec.shape, None), {})
    animator = AvatarAnimator(avatar, head)
    data = head.data
    face_regions = [data.region_names.index(n) for n in ("nose", "cheeks", "forehead", "mouth")]
    face_tris = np.isin(data.vertex_regions[data.faces], face_regions).all(1)
    opaque = 1 / (1 + np.exp(-rec.opacity_logits)) > 0.9
    pick = face_tris[rec.binding] & opaque
    assert pick.sum() > 200
    for v in range(rec.num_views):
        posed = animator(expression=rec.expressions[v], pose=rec.poses[v])
        means, quats = posed.means[0], posed.quats[0]
        if v > 0:
            assert torch.equal(means, torch.as_tensor(rec.means))  # rest views: the canonical Gaussians as stored
        uv, _ = project_points(means.numpy()[pick], rec.viewmats[v], rec.Ks[v])
        px = np.floor(uv).astype(int)
        inside = (px >= 0).all(1) & (px < 96).all(1)
        assert inside.mean() > 0.99
        hit = rec.masks[v][px[inside, 1], px[inside, 0]] >= 128
        assert hit.mean() > 0.98, (v, hit.mean())
        m = rec.masks[v]
        assert 0.1 < (m > 128).mean() < 0.8  # a head, and background around it
        assert (m == 0).any()
        # the pixels are the rasterizer's view through exactly the stored camera, with the stored (lit) colours
        out = rasterize(means, quats, torch.as_tensor(rec.log_scales).exp(),
                        torch.sigmoid(torch.as_tensor(rec.opacity_logits)),
                        (0.5 + ds.SH_C0 * torch.as_tensor(rec.sh_dc)).clamp_min(0.0), backend="torch",
                        viewmat=torch.as_tensor(rec.viewmats[v]), K=torch.as_tensor(rec.Ks[v]), width=96, height=96)
        alpha = out.alpha.numpy()
        assert np.abs(alpha * 255 - m).max() < 3
        solid = m == 255
        assert np.abs(out.rgb.numpy()[solid] * 255 - rec.images[v][solid]).max() < 3


# ------------------------------------------------------------------------------------------- reading and damage
def test_subject_dataset_reads_split_and_pickles(tiny):
    data = SubjectDataset(tiny, "train")
    assert len(data) == 4 and data.ids == [0, 1, 2, 3]
    first = data[0]
    assert isinstance(first, SubjectRecord) and first.subject_id == 0
    assert np.array_equal(data[3].images, load_subject(tiny, 3).images)
    assert data[-1].subject_id == 3
    with pytest.raises(IndexError):
        data[4]
    clone = pickle.loads(pickle.dumps(data))
    assert clone[1].subject_id == 1
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=True, collate_fn=list,
                                         generator=torch.Generator().manual_seed(0))
    assert sorted(r.subject_id for batch in loader for r in batch) == [0, 1, 2, 3]
    assert len(SubjectDataset(tiny, "heldout")) == 0


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "flipped"])
def test_damaged_shard_raises_dataset_error_naming_the_file(tiny, tmp_path, damage):
    root = _copy(tiny, tmp_path)
    path = root / "shard-00001.npz"
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:  # same size, one byte changed inside the image data: only the hash sees it
        changed = bytearray(data)
        changed[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(changed))
    verify = damage == "flipped"
    with pytest.raises(DatasetError, match="shard-00001.npz"):
        load_subject(root, 2, verify=verify)
    with pytest.raises(DatasetError, match="shard-00001.npz"):
        SubjectDataset(root, "all", verify=verify)[3]
    assert SubjectDataset(root, "all", verify=verify)[0].subject_id == 0  # the intact shard still reads
    assert any("shard-00001.npz" in p for p in ds.verify_dataset(root))


def test_bad_index_raises_dataset_error(tiny, tmp_path):
    with pytest.raises(DatasetError, match="index.json"):
        DatasetIndex.load(tmp_path)
    root = _copy(tiny, tmp_path)
    (root / "index.json").write_text("{not json")
    with pytest.raises(DatasetError, match="index.json"):
        read_subjects(root)
    (root / "index.json").write_text(json.dumps({"format": ds.FORMAT, "format_version": 1, "config": {"subjects": 2, "colour": 1}}))
    with pytest.raises(DatasetError, match="colour"):
        read_subjects(root)
    with pytest.raises(DatasetError, match="not in the dataset"):
        load_subject(tiny, 99)


def test_contact_sheet(tiny, tmp_path):
    sheet = ds.contact_sheet(tiny, n=4)
    assert sheet.shape == (128, 128, 3) and sheet.dtype == np.uint8
    assert np.array_equal(ds.contact_sheet(tiny, n=4, label=False)[:64, 64:], load_subject(tiny, 1).images[0])
    picked = ds.contact_sheet(tiny, n=2, random=True, seed=3, label=False)
    assert picked.shape == (64, 128, 3)
    assert np.array_equal(picked, ds.contact_sheet(tiny, n=2, random=True, seed=3, label=False))  # seeded
    tiles = {sid: load_subject(tiny, sid).images[0] for sid in range(4)}
    assert any(np.array_equal(picked[:, :64], t) for t in tiles.values())
    Image.fromarray(sheet).save(tmp_path / "sheet.png")
    assert ds.contact_sheet(tiny, n=3, view=1).shape == (128, 128, 3)
    with pytest.raises(DatasetError, match="view"):
        ds.contact_sheet(tiny, view=2)


# ------------------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointillist")
    add_dataset_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_build_resume_card_and_errors(tiny, tmp_path, capsys):
    root = _copy(tiny, tmp_path)
    args = _parser().parse_args(["dataset", "build", "-o", str(root)])  # bare: resume with the index's settings
    summary = args.func(args)
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == summary
    assert summary["kept_shards"] == 2 and summary["built_shards"] == 0
    assert err.count("kept (verified)") == 2

    args = _parser().parse_args(["dataset", "build", "-o", str(root), "--image-size", "32"])
    with pytest.raises(DatasetError, match="image_size"):
        args.func(args)

    args = _parser().parse_args(["dataset", "card", str(root)])
    card = args.func(args)
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == card
    assert "| style | subjects | AR points mean |" in out and card["subjects"] == 4
    assert sum(s["subjects"] for s in card["styles"].values()) == 4 and card["splits"] == {"train": 4, "heldout": 0}

    sheet = tmp_path / "sheet.png"
    args = _parser().parse_args(["dataset", "contact-sheet", str(root), "-o", str(sheet), "-n", "2"])
    args.func(args)
    assert Image.open(sheet).size == (128, 64)

    args = _parser().parse_args(["dataset", "verify", str(root)])
    args.func(args)
    (root / "shard-00000.npz").write_bytes(b"x")
    with pytest.raises(DatasetError, match="damaged"):
        args.func(args)
    with pytest.raises(SystemExit):
        _parser().parse_args(["dataset", "build", "-o", str(root), "--subjects", "0"])


def test_cli_fresh_build(tmp_path, capsys):
    args = _parser().parse_args(["dataset", "build", "-o", str(tmp_path / "d"), "--subjects", "1", "--views", "1",
                                 "--image-size", "32", "--shard-size", "4", "--seed", "3", "--ar-voxel", "0.02"])
    summary = args.func(args)
    assert summary["subjects"] == 1 and summary["built_subjects"] == 1
    config = DatasetIndex.load(tmp_path / "d").config
    assert (config.seed, config.ar_voxel_m, config.image_size, config.views) == (3, 0.02, 32, 1)


@pytest.mark.slow
def test_parallel_build_equals_serial(tiny, tmp_path):
    build_dataset(tmp_path / "par", TINY, workers=2)
    assert _shard_hashes(tmp_path / "par") == _shard_hashes(tiny)
    assert json.loads((tmp_path / "par" / "index.json").read_text()) == json.loads((tiny / "index.json").read_text())


def test_a_second_concurrent_build_is_refused(tiny, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    root = _copy(tiny, tmp_path)
    with open(root / ".build.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build holds it
        with pytest.raises(DatasetError, match="another"):
            build_dataset(root, TINY)
    assert build_dataset(root, TINY).kept_shards == 2  # released: builds again


# ------------------------------------------------------------------------------------------- engine v2
def test_plan_variety_covers_the_ranges():
    """Cheap draws of 3000 plans: skin bins, hair colours, beard styles, glasses, posing all covered."""
    from pointillist.synth.appearance import BEARD_STYLES, FITZPATRICK, HAIR_COLOR_NAMES

    config = DatasetConfig(subjects=3000)
    plans = [subject_plan(config, i) for i in range(3000)]
    looks = [p.appearance for p in plans]
    bins = [a.fitzpatrick for a in looks]
    assert all(0.12 < bins.count(b) / len(bins) < 0.22 for b in FITZPATRICK), {b: bins.count(b) for b in FITZPATRICK}
    tones = np.array([a.skin_tone for a in looks])
    assert tones.min() < 0.01 and tones.max() > 0.99 and len(np.unique(np.round(tones, 3))) > 900  # continuous
    hair = [a.hair_color for a in looks]
    assert all(hair.count(h) >= 30 for h in HAIR_COLOR_NAMES), {h: hair.count(h) for h in HAIR_COLOR_NAMES}
    # darker skin draws black hair more often than the lightest skin
    assert np.mean([h == "black" for h, t in zip(hair, tones) if t > 0.8]) > 2 * np.mean([h == "black" for h, t in zip(hair, tones) if t < 0.2])
    beards = [p.beard_style for p in plans if p.beard]
    assert all(beards.count(b) >= 40 for b in BEARD_STYLES) and all(p.beard_style == "none" for p in plans if not p.beard)
    assert 0.12 < np.mean([p.glasses for p in plans]) < 0.18
    assert 0.77 < np.mean([p.posed for p in plans]) < 0.83
    assert len({a.glasses for a in looks}) == 3 and np.ptp([a.brow_thickness for a in looks]) > 0.7
    assert np.ptp([a.lighting.kelvin for a in looks]) > 4000 and min(a.lighting.direction[0] for a in looks) < -0.8
    # the portrait controls: every preset occurs, the jaw opens up to ~20 deg, the neck stays within ± neck_deg
    from pointillist.head.model import HeadModel
    from pointillist.synth.expressions import PRESET_NAMES

    names = list(HeadModel.load().data.expr_names)
    controls = [ds.plan_controls(config, p, names) for p in plans[:1500]]
    presets = [c.preset for c in controls]
    assert set(presets) == set(PRESET_NAMES) | {"rest"}
    jaw = np.array([c.jaw_deg for c in controls])
    assert jaw.max() > 17 and (jaw == 0).mean() > 0.15
    neck = np.array([np.abs(np.degrees(c.pose[1])).max() for c in controls])
    assert neck.max() <= config.neck_deg + 1e-4 and neck.max() > 0.8 * config.neck_deg
    mags = np.array([c.expression_magnitude for c in controls])
    assert mags.max() > 1.0 and np.all(np.isfinite(mags))


def test_same_seed_same_subject_other_seed_other_look():
    a, b = subject_plan(TINY, 2), subject_plan(TINY, 2)
    assert a == b
    other = subject_plan(DatasetConfig(**{**TINY.to_json(), "seed": 9}), 2)
    assert other.appearance != a.appearance


def _as_v1(src: Path, dst: Path) -> None:
    """Rewrite a v2 folder as the v1 engine wrote it: no v2 shard members, base meta only, generator 1."""
    dst.mkdir()
    index = json.loads((src / "index.json").read_text())
    for entry in index["shards"]:
        with np.load(src / entry["file"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in ("expressions", "poses", "beard_styles", "attributes")}
        buf = __import__("io").BytesIO()
        np.savez(buf, **arrays)
        (dst / entry["file"]).write_bytes(buf.getvalue())
        entry["bytes"] = len(buf.getvalue())
        entry["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    index["generator_version"] = 1
    index["subjects"] = [{k: s[k] for k in ("id", "split", "style", "beard", "num_gaussians", "num_ar_points")} for s in index["subjects"]]
    (dst / "index.json").write_text(json.dumps(index))


def test_v1_datasets_still_load_and_are_not_resumed_by_v2(tiny, tmp_path):
    v1 = tmp_path / "v1"
    _as_v1(tiny, v1)
    rec = load_subject(v1, 1, verify=True)
    new = load_subject(tiny, 1)
    assert np.array_equal(rec.images, new.images) and np.array_equal(rec.means, new.means)
    assert rec.expressions.shape == (2, 0) and not rec.poses.any() and rec.beard_style == "" and rec.attributes == {}
    assert not rec.is_posed(0) and rec.meta() == {"id": 1, "split": rec.split, "style": rec.style, "beard": rec.beard,
                                                  "num_gaussians": rec.num_gaussians, "num_ar_points": rec.num_ar_points}
    card = ds.dataset_card(v1)
    assert card["subjects"] == 4 and card["generator_version"] == 1 and "skin_tones" not in card
    assert "| style |" in ds.card_markdown(card)
    assert ds.contact_sheet(v1, n=4).shape == (128, 128, 3)
    with pytest.raises(DatasetError, match=r"generator_version \(1 in the index, 2 here\)"):
        build_dataset(v1, TINY)


def test_the_stored_v1_dataset_loads():
    root = Path("/work/data/synth")
    if not (root / "index.json").exists():
        pytest.skip("no v1 dataset on this machine")
    index = DatasetIndex.load(root)
    rec = load_subject(root, index.subject_ids()[0])
    assert rec.poses.shape == (rec.num_views, 5, 3) and rec.attributes == {}


def test_card_counts_match_the_index(tiny):
    card = ds.dataset_card(tiny)
    subs = json.loads((tiny / "index.json").read_text())["subjects"]
    for key, field in (("beard_styles", "beard_style"), ("skin_tones", "fitzpatrick"), ("hair_colors", "hair_color"),
                       ("expression_presets", "expression_preset")):
        expect = {}
        for s in subs:
            expect[s[field]] = expect.get(s[field], 0) + 1
        assert card[key] == expect, key
    assert card["glasses"] == {g or "none": sum((s["glasses"] or "none") == (g or "none") for s in subs) for g in {s["glasses"] for s in subs}}
    mags = [s["expression_magnitude"] for s in subs]
    assert card["expression_magnitude"] == {"min": round(min(mags), 3), "mean": round(float(np.mean(mags)), 3), "max": round(max(mags), 3)}
    assert card["jaw_deg"]["max"] == round(max(s["jaw_deg"] for s in subs), 2)
    assert card["ar_points"]["max"] == max(s["num_ar_points"] for s in subs)
    text = ds.card_markdown(card)
    for title in ("| beard style |", "| skin tone (Fitzpatrick-like) |", "| glasses |", "| portrait control |", "jaw opening"):
        assert title in text


def test_cli_contact_sheet_random_and_synth(tiny, tmp_path, capsys):
    out = tmp_path / "r.png"
    args = _parser().parse_args(["dataset", "contact-sheet", str(tiny), "-n", "3", "--random", "--seed", "2", "-o", str(out)])
    args.func(args)
    assert Image.open(out).size == (128, 128) and Image.open(out).format == "PNG"
    out = tmp_path / "s.png"
    args = _parser().parse_args(["dataset", "contact-sheet", "--synth", "-n", "2", "--image-size", "32", "-o", str(out)])
    args.func(args)
    img = Image.open(out)
    assert img.size == (64, 32) and img.mode == "RGB"
    assert np.asarray(img).std() > 10  # not blank
    with pytest.raises(DatasetError, match="--synth"):
        args = _parser().parse_args(["dataset", "contact-sheet", "-o", str(out)])
        args.func(args)


@pytest.mark.slow
def test_a_killed_parallel_build_leaves_no_worker_processes(tmp_path):
    """SIGKILL the builder mid-way: its spawned pool workers notice and exit instead of sleeping forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not Path("/proc").is_dir():
        pytest.skip("reads children from /proc")

    def children(pid: int) -> set[int]:
        out = set()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
        return out

    proc = subprocess.Popen([sys.executable, "-m", "pointillist.cli", "dataset", "build", "-o", str(tmp_path / "d"),
                             "--subjects", "400", "--views", "1", "--image-size", "32", "--shard-size", "2",
                             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(workers := children(proc.pid) - {proc.pid}) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) >= 2, "the pool never started"
        while not list((tmp_path / "d").glob("shard-*.npz")) and time.monotonic() < deadline:
            time.sleep(0.2)  # workers are busy building, not just starting
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 30
        while (alive := {w for w in workers if Path(f"/proc/{w}").exists()
                         and (Path(f"/proc/{w}") / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, f"orphaned pool workers: {sorted(alive)}"
    finally:
        if proc.poll() is None:
            proc.kill()
