"""GLB export: the KHR_gaussian_splatting primitive read back by hand, the skinned proxy deformed with glTF's
own skinning rules (implemented here from the glTF spec) against the head model, and the Khronos validator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pointillist.avatar.controls import FaceControls
from pointillist.avatar.point_rig import identity_vertices
from pointillist.export.glb import build_glb, export_glb
from pointillist.export.gltf_document import accessor_array, read_glb
from pointillist.export.motion import FrameRange, load_motion
from pointillist.export.posing import FramePose

from .web_readers import validate_gltf

KHR = "KHR_gaussian_splatting"
SH_C0 = 0.28209479177387814


def load(doc) -> tuple[dict, bytes]:
    return read_glb(doc.glb_bytes())


def splat_primitive(gltf: dict) -> dict:
    (node,) = [n for n in gltf["nodes"] if n.get("name") == "splats"]
    return gltf["meshes"][node["mesh"]]["primitives"][0]


def test_splat_primitive_follows_the_extension(sh3_avatar, head):
    gltf, binary = load(build_glb(sh3_avatar, head))
    prim = splat_primitive(gltf)
    assert prim["mode"] == 0  # POINTS
    assert prim["extensions"][KHR] == {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}
    assert KHR in gltf["extensionsUsed"] and KHR not in gltf.get("extensionsRequired", [])
    sh_names = [f"{KHR}:SH_DEGREE_0_COEF_0"] + [f"{KHR}:SH_DEGREE_{l}_COEF_{n}" for l in (1, 2, 3) for n in range(2 * l + 1)]
    assert list(prim["attributes"]) == ["POSITION", "COLOR_0", f"{KHR}:SCALE", f"{KHR}:ROTATION", f"{KHR}:OPACITY", *sh_names]
    g = sh3_avatar.gaussians
    get = lambda name: accessor_array(gltf, binary, prim["attributes"][name])  # noqa: E731
    np.testing.assert_array_equal(get("POSITION"), g.means)
    pos_acc = gltf["accessors"][prim["attributes"]["POSITION"]]
    np.testing.assert_array_equal(pos_acc["min"], g.means.min(0))
    np.testing.assert_allclose(get(f"{KHR}:SCALE"), np.exp(g.log_scales), rtol=1e-6)
    np.testing.assert_allclose(get(f"{KHR}:OPACITY"), 1 / (1 + np.exp(-g.opacity_logits)), rtol=1e-6)
    q = get(f"{KHR}:ROTATION")  # x, y, z, w
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    w_first = g.quats / np.linalg.norm(g.quats, axis=1, keepdims=True)
    np.testing.assert_allclose(q, w_first[:, [1, 2, 3, 0]], atol=1e-6)
    np.testing.assert_array_equal(get(f"{KHR}:SH_DEGREE_0_COEF_0"), g.sh_dc)
    # Coefficient n of degree l is Inria's f_rest coefficient index (l^2 - 1 + n).
    np.testing.assert_array_equal(get(f"{KHR}:SH_DEGREE_1_COEF_0"), g.sh_rest[:, 0])
    np.testing.assert_array_equal(get(f"{KHR}:SH_DEGREE_2_COEF_4"), g.sh_rest[:, 7])
    np.testing.assert_array_equal(get(f"{KHR}:SH_DEGREE_3_COEF_6"), g.sh_rest[:, 14])
    color = get("COLOR_0")
    srgb = np.clip(0.5 + SH_C0 * g.sh_dc, 0, 1)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(color[:, :3], linear, atol=1e-6)
    np.testing.assert_allclose(color[:, 3], get(f"{KHR}:OPACITY"), atol=1e-6)


def test_degree0_avatar_has_only_the_dc_coefficients(procedural_avatar, head):
    gltf, _ = load(build_glb(procedural_avatar, head))
    names = [a for a in splat_primitive(gltf)["attributes"] if "SH_DEGREE" in a]
    assert names == [f"{KHR}:SH_DEGREE_0_COEF_0"]


# ---------------------------------------------------------------------------------------- the rig
def _trs(node: dict) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(node.get("rotation", [0, 0, 0, 1])).as_matrix()
    m[:3, 3] = node.get("translation", [0, 0, 0])
    return m


def skin_proxy(gltf: dict, binary: bytes) -> np.ndarray:
    """Vertices of the skinned proxy as a glTF viewer computes them: morph targets, then linear blend skinning
    with jointMatrix = globalTransform(joint) @ inverseBindMatrix (glTF 2.0 §3.7.3)."""
    (node,) = [n for n in gltf["nodes"] if "skin" in n]
    mesh = gltf["meshes"][node["mesh"]]
    prim = mesh["primitives"][0]
    v = accessor_array(gltf, binary, prim["attributes"]["POSITION"]).astype(np.float64)
    for weight, target in zip(mesh.get("weights", []), prim.get("targets", [])):
        v = v + weight * accessor_array(gltf, binary, target["POSITION"])
    skin = gltf["skins"][node["skin"]]
    parent = {c: i for i, n in enumerate(gltf["nodes"]) for c in n.get("children", [])}

    def global_matrix(i: int) -> np.ndarray:
        return _trs(gltf["nodes"][i]) if i not in parent else global_matrix(parent[i]) @ _trs(gltf["nodes"][i])

    ibm = accessor_array(gltf, binary, skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    joint_mats = np.stack([global_matrix(j) @ ibm[k] for k, j in enumerate(skin["joints"])])
    skin_m = np.zeros((len(v), 4, 4))
    k = 0
    while f"JOINTS_{k}" in prim["attributes"]:
        joints = accessor_array(gltf, binary, prim["attributes"][f"JOINTS_{k}"]).astype(int)
        weights = accessor_array(gltf, binary, prim["attributes"][f"WEIGHTS_{k}"])
        skin_m += np.einsum("vk,vkij->vij", weights, joint_mats[joints])
        k += 1
    return np.einsum("vij,vj->vi", skin_m, np.concatenate([v, np.ones((len(v), 1))], 1))[:, :3]


def test_skinned_proxy_deforms_like_the_head_model(procedural_avatar, head):
    controls = FaceControls(expressions={"mouthSmileLeft": 0.8, "eyeBlinkRight": 1.0}, jaw_deg=12.0,
                            neck_yaw_deg=20.0, neck_pitch_deg=-8.0, gaze_deg=(10.0, 5.0))
    frame = FramePose.from_arrays(head.num_expr, *[x.numpy() for x in controls.to_model(head.expr_names)],
                                  translation=np.array([0.01, -0.02, 0.03]))
    gltf, binary = load(build_glb(procedural_avatar, head, frame))
    ident = procedural_avatar.identity
    with torch.no_grad():
        expected = head(torch.as_tensor(ident.shape)[None], torch.as_tensor(frame.expression)[None],
                        torch.as_tensor(frame.pose)[None], torch.as_tensor(frame.translation)[None],
                        None if ident.vertex_offsets is None else torch.as_tensor(ident.vertex_offsets)[None]).vertices[0].numpy()
    np.testing.assert_allclose(skin_proxy(gltf, binary), expected, atol=2e-5)
    rest_gltf, rest_binary = load(build_glb(procedural_avatar, head))
    np.testing.assert_allclose(skin_proxy(rest_gltf, rest_binary), identity_vertices(procedural_avatar, head.data), atol=1e-6)


def test_proxy_names_joints_and_targets(procedural_avatar, head):
    gltf, binary = load(build_glb(procedural_avatar, head))
    (node,) = [n for n in gltf["nodes"] if "skin" in n]
    skin = gltf["skins"][node["skin"]]
    assert [gltf["nodes"][j]["name"] for j in skin["joints"]] == ["root", "neck", "jaw", "left_eye", "right_eye"]
    root = gltf["nodes"][skin["skeleton"]]
    assert [gltf["nodes"][c]["name"] for c in root["children"]] == ["neck"]
    mesh = gltf["meshes"][node["mesh"]]
    assert mesh["extras"]["targetNames"] == list(head.expr_names)
    assert len(mesh["primitives"][0]["targets"]) == len(mesh["weights"]) == head.num_expr
    weights = accessor_array(gltf, binary, mesh["primitives"][0]["attributes"]["WEIGHTS_0"])
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)


def test_animation_clip_samples_every_frame(procedural_avatar, head):
    motion = load_motion("talk", head.expr_names, head_is_flame=False, fps=25.0)
    gltf, binary = load(build_glb(procedural_avatar, head, animation=(motion, FrameRange(1, 26))))
    (anim,) = gltf["animations"]
    times = accessor_array(gltf, binary, anim["samplers"][0]["input"])
    np.testing.assert_allclose(times, np.arange(26) / 25.0, atol=1e-6)
    paths = sorted((gltf["nodes"][c["target"]["node"]]["name"], c["target"]["path"]) for c in anim["channels"])
    assert paths == sorted([(j, "rotation") for j in ("root", "neck", "jaw", "left_eye", "right_eye")] + [("rig_proxy", "weights")])
    jaw = next(c for c in anim["channels"] if gltf["nodes"][c["target"]["node"]]["name"] == "jaw")
    q = accessor_array(gltf, binary, anim["samplers"][jaw["sampler"]]["output"])
    angles = np.degrees(Rotation.from_quat(q).magnitude())
    expected = [np.degrees(np.linalg.norm(motion.frame(f).pose[2])) for f in range(1, 27)]
    np.testing.assert_allclose(angles, expected, atol=1e-3)
    assert angles.max() > 3.0  # the talking jaw moves


def test_unbound_avatar_exports_splats_only(procedural_avatar, head):
    from dataclasses import replace

    plain = replace(procedural_avatar, binding=None)
    gltf, _ = load(build_glb(plain, head))
    assert [n["name"] for n in gltf["nodes"]] == ["splats"] and "skins" not in gltf
    with pytest.raises(ValueError, match="no binding"):
        build_glb(plain, head, FramePose.from_controls(FaceControls(jaw_deg=5.0), head.expr_names))


# ---------------------------------------------------------------------------------------- Khronos validator
def test_khronos_validator_flags_only_the_splat_attributes(sh3_avatar, head, tmp_path, node):
    motion = load_motion("talk", head.expr_names, head_is_flame=False, fps=25.0)
    frame = FramePose.from_controls(FaceControls(jaw_deg=8.0, neck_yaw_deg=10.0), head.expr_names)
    path = export_glb(sh3_avatar, head, tmp_path / "avatar.glb", frame, animation=(motion, FrameRange(1, 10)))
    report = validate_gltf(path)
    gltf, _ = read_glb(path.read_bytes())
    issues = report["issues"]
    splat_mesh = next(n["mesh"] for n in gltf["nodes"] if n.get("name") == "splats")
    khr_attributes = [a for a in splat_primitive(gltf)["attributes"] if a.startswith(f"{KHR}:")]
    assert len(khr_attributes) == 3 + 16  # SCALE, ROTATION, OPACITY and 16 SH coefficients (degree 3)
    errors = [m for m in issues["messages"] if m["severity"] == 0]
    # The validator predates KHR_gaussian_splatting: its namespaced attributes, and nothing else, are errors.
    assert {m["code"] for m in errors} == {"MESH_PRIMITIVE_INVALID_ATTRIBUTE"}
    assert sorted(m["pointer"] for m in errors) == sorted(f"/meshes/{splat_mesh}/primitives/0/attributes/{a}" for a in khr_attributes)
    assert issues["numErrors"] == len(khr_attributes)
    assert issues["numWarnings"] == 0, [m for m in issues["messages"] if m["severity"] == 1]
    assert report["info"]["hasSkins"] and report["info"]["hasMorphTargets"] and report["info"]["animationCount"] == 1
