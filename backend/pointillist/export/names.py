"""Export format names and what each writes: stdlib only, so the CLI's parser (and --help) loads no torch."""

from __future__ import annotations

FORMATS: dict[str, str] = {
    "ply": "Inria 3DGS PLY at rest or posed (OUT is a .ply file)",
    "ply-seq": "PLY sequence over a frame range (OUT is a folder of frame_0001.ply ...)",
    "glb": "glTF binary: KHR_gaussian_splatting splats + skinned proxy with shape keys (+ a clip with --frames)",
    "gaussianavatars": "GaussianAvatars point_cloud.ply + flame_param.npz (OUT is a folder; FLAME heads only)",
}
