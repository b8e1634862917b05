"""Avatar bundles (DESIGN §5): a folder, or a `.zip` of one, holding everything an avatar is.

    avatar.ply             canonical Gaussians, Inria layout + binding_0 / bary_0..2
    avatar.json            format version, counts, head model id + identity, model version, options, meta
    identity_offsets.npy   optional per-vertex identity offsets (e.g. GaussianAvatars' static_offset)
    source/                optional: input.png (aligned), matte.png, camera.json, fit.json
    preview.png            optional

Writers build the whole bundle beside its destination and move it into place in one rename, so readers
never see half a bundle. Readers refuse unsafe zips (absolute or `..` paths, links, bombs) and never
extract to disk.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .gaussians import FORMAT_VERSION, Avatar, AvatarFormatError, HeadIdentity, SourceInfo, validate_avatar
from .ply import atomic_write_bytes, gaussians_from_ply_bytes, gaussians_to_ply_bytes

KNOWN_MEMBERS = {"avatar.ply", "avatar.json", "identity_offsets.npy", "preview.png",
                 "source/input.png", "source/matte.png", "source/camera.json", "source/fit.json"}


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 64
    max_entry_bytes: int = 1 << 30
    max_total_bytes: int = 2 << 30
    max_ratio: float = 200.0  # uncompressed / compressed, for entries over 1 MiB


# ---------------------------------------------------------------------------------------- write
def bundle_members(avatar: Avatar, preview: np.ndarray | None = None) -> dict[str, bytes]:
    """Serialise an avatar to {member name: bytes} (shared by folder and zip writers)."""
    validate_avatar(avatar)
    g = avatar.gaussians
    members: dict[str, bytes] = {"avatar.ply": gaussians_to_ply_bytes(g, avatar.binding)}
    ident = avatar.identity
    manifest = {
        "format_version": FORMAT_VERSION,
        "num_gaussians": g.num,
        "sh_degree": g.sh_degree,
        "bound": avatar.binding is not None,
        "head": None if ident is None else {
            "model_id": ident.model_id,
            "shape": [float(x) for x in np.asarray(ident.shape, dtype=np.float32)],
            "vertex_offsets": ident.vertex_offsets is not None,
        },
        "meta": avatar.meta,
    }
    members["avatar.json"] = json.dumps(manifest, indent=2, allow_nan=False).encode()
    if ident is not None and ident.vertex_offsets is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(ident.vertex_offsets, dtype=np.float32), allow_pickle=False)
        members["identity_offsets.npy"] = buffer.getvalue()
    src = avatar.source
    if src is not None:
        if src.image is not None:
            members["source/input.png"] = _png(src.image)
        if src.matte is not None:
            members["source/matte.png"] = _png(src.matte)
        if src.camera is not None:
            members["source/camera.json"] = json.dumps(src.camera, allow_nan=False).encode()
        if src.expression is not None or src.pose is not None:
            fit = {"expression": None if src.expression is None else np.asarray(src.expression, float).tolist(),
                   "pose": None if src.pose is None else np.asarray(src.pose, float).tolist()}
            members["source/fit.json"] = json.dumps(fit, allow_nan=False).encode()
    if preview is not None:
        members["preview.png"] = _png(preview)
    return members


def write_bundle(avatar: Avatar, path: str | os.PathLike, *, preview: np.ndarray | None = None, overwrite: bool = False) -> Path:
    """Write a bundle folder, or a zip when `path` ends in `.zip`; atomic either way."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (use overwrite=True / --overwrite to replace it)")
    members = bundle_members(avatar, preview)
    if path.suffix.lower() == ".zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, payload in members.items():
                zf.writestr(name, payload)
        atomic_write_bytes(path, buffer.getvalue())
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        for name, payload in members.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(staging, 0o755)
        if path.exists():
            aside = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, aside)
            os.replace(staging, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------- read
def read_bundle(path: str | os.PathLike, limits: ZipLimits = ZipLimits()) -> Avatar:
    """Read a bundle folder or zip; every problem is an `AvatarFormatError` naming it."""
    path = Path(path)
    if path.is_dir():
        members = {}
        for name in KNOWN_MEMBERS:
            file = path / name
            if file.is_file():
                members[name] = file.read_bytes()
    elif path.is_file():
        members = read_zip_members(path, limits)
    else:
        raise AvatarFormatError(f"{path}: no such bundle (expected a folder or a .zip)")
    return avatar_from_members(members, str(path))


def read_zip_members(path: Path, limits: ZipLimits) -> dict[str, bytes]:
    """Safely read the known members of a bundle zip into memory."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AvatarFormatError(f"{path}: not a readable zip ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise AvatarFormatError(f"{path}: {len(infos)} zip entries (a bundle has at most {limits.max_entries})")
        total = 0
        for info in infos:
            name = info.filename
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts or "\\" in name:
                raise AvatarFormatError(f"{path}: unsafe path {name!r} in zip")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise AvatarFormatError(f"{path}: zip entry {name!r} is a symbolic link")
            if info.file_size > limits.max_entry_bytes:
                raise AvatarFormatError(f"{path}: zip entry {name!r} is {info.file_size} bytes uncompressed (limit {limits.max_entry_bytes})")
            if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise AvatarFormatError(f"{path}: zip entry {name!r} compresses {info.file_size / max(info.compress_size, 1):.0f}:1 (zip bomb?)")
            total += info.file_size
            if total > limits.max_total_bytes:
                raise AvatarFormatError(f"{path}: zip holds more than {limits.max_total_bytes} bytes uncompressed")
        names = [i.filename for i in infos if not i.is_dir()]
        prefix = _common_folder(names)
        members = {}
        for info in infos:
            if info.is_dir():
                continue
            name = info.filename[len(prefix):]
            if name in KNOWN_MEMBERS:
                try:
                    with zf.open(info) as fh:
                        payload = fh.read(info.file_size + 1)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                    raise AvatarFormatError(f"{path}: corrupt zip entry {info.filename!r} ({exc})") from None
                if len(payload) != info.file_size:
                    raise AvatarFormatError(f"{path}: zip entry {info.filename!r} does not match its declared size")
                members[name] = payload
        return members


def _common_folder(names: list[str]) -> str:
    """Bundles zipped with their folder ('avatar/avatar.ply') or without ('avatar.ply') both read."""
    if names and all("/" in n for n in names):
        first = names[0].split("/", 1)[0] + "/"
        if all(n.startswith(first) for n in names) and first + "avatar.json" in names:
            return first
    return ""


def avatar_from_members(members: dict[str, bytes], name: str) -> Avatar:
    for required in ("avatar.json", "avatar.ply"):
        if required not in members:
            raise AvatarFormatError(f"{name}: missing {required}")
    try:
        manifest = json.loads(members["avatar.json"])
    except ValueError as exc:
        raise AvatarFormatError(f"{name}: avatar.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise AvatarFormatError(f"{name}: avatar.json must hold an object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise AvatarFormatError(f"{name}: unknown bundle format_version {version!r} (this Pointillist reads {FORMAT_VERSION})")
    gaussians, binding = gaussians_from_ply_bytes(members["avatar.ply"], f"{name}/avatar.ply")
    if manifest.get("num_gaussians") != gaussians.num:
        raise AvatarFormatError(f"{name}: avatar.json says num_gaussians={manifest.get('num_gaussians')!r} but avatar.ply holds {gaussians.num}")
    if bool(manifest.get("bound")) != (binding is not None):
        raise AvatarFormatError(f"{name}: avatar.json 'bound' disagrees with avatar.ply's binding properties")
    if binding is not None and np.isnan(binding.barycentrics).any():
        raise AvatarFormatError(f"{name}/avatar.ply: properties bary_0..2 are missing")
    identity = None
    head = manifest.get("head")
    if head is not None:
        try:
            shape = np.asarray(head["shape"], dtype=np.float32)
            model_id = str(head["model_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise AvatarFormatError(f"{name}: avatar.json field 'head' is malformed ({exc})") from None
        offsets = None
        if head.get("vertex_offsets"):
            if "identity_offsets.npy" not in members:
                raise AvatarFormatError(f"{name}: avatar.json promises identity_offsets.npy but it is missing")
            try:
                offsets = np.load(io.BytesIO(members["identity_offsets.npy"]), allow_pickle=False).astype(np.float32)
            except ValueError as exc:
                raise AvatarFormatError(f"{name}: identity_offsets.npy is unreadable ({exc})") from None
        identity = HeadIdentity(model_id=model_id, shape=shape, vertex_offsets=offsets)
    avatar = Avatar(gaussians=gaussians, binding=binding, identity=identity, source=_source(members, name),
                    meta=dict(manifest.get("meta") or {}))
    validate_avatar(avatar)
    return avatar


def _source(members: dict[str, bytes], name: str) -> SourceInfo | None:
    keys = [k for k in members if k.startswith("source/")]
    if not keys:
        return None
    try:
        image = np.asarray(Image.open(io.BytesIO(members["source/input.png"]))) if "source/input.png" in members else None
        matte = np.asarray(Image.open(io.BytesIO(members["source/matte.png"]))) if "source/matte.png" in members else None
        camera = json.loads(members["source/camera.json"]) if "source/camera.json" in members else None
        fit = json.loads(members["source/fit.json"]) if "source/fit.json" in members else {}
    except (OSError, ValueError) as exc:
        raise AvatarFormatError(f"{name}: unreadable source/ member ({exc})") from None
    expression = None if fit.get("expression") is None else np.asarray(fit["expression"], np.float32)
    pose = None if fit.get("pose") is None else np.asarray(fit["pose"], np.float32)
    return SourceInfo(image=image, matte=matte, camera=camera, expression=expression, pose=pose)
