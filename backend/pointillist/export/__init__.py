"""Exports of an avatar bundle for tools outside Pointillist (DESIGN §7 "Exports", issue 7).

One module per concept:

- `posing`       an expression/pose for one frame, and the avatar's Gaussians posed by it (SH rotated too)
- `motion`       per-frame poses: the built-in talking motion, a FaceControls JSON or a FLAME parameter file
- `sh_rotation`  rotating SH bands 1-3 with each Gaussian, so posed exports look right in any viewer
- `inria_ply`    Inria 3DGS PLY at rest or posed, and a PLY sequence over a frame range
- `gltf_document` a minimal glTF 2.0 / GLB writer (accessors, buffer views, atomic .glb)
- `gltf_splats`  the `KHR_gaussian_splatting` point primitive
- `gltf_rig`     the skinned proxy: head mesh, 5-joint skin, expression morph targets, animation clip
- `glb`          both of the above in one .glb
- `gaussian_avatars_export`  GaussianAvatars' point_cloud.ply + flame_param.npz (FLAME heads only)
- `names`        the format names the CLI offers (stdlib only)
- `formats`      one dispatch function over them
- `errors`       `ExportError`, for problems a user can fix

Submodules import torch, so nothing is imported here.
"""
