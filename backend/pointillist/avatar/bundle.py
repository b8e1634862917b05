"""Avatar bundles (DESIGN §5): a folder, or a `.zip` of one, holding everything an avatar is.

    avatar.ply             canonical Gaussians, Inria layout + binding_0 / bary_0..2 (see ply.py)
    avatar.json            format_version, num_gaussians, sh_degree, head (model id, identity shape),
                           model_version, creation_options, source_sha256, meta
    identity_offsets.npy   optional (V, 3) float32 identity vertex offsets (e.g. GaussianAvatars' static_offset)
    source/input.png       optional aligned input image
    source/matte.png       optional foreground matte
    source/camera.json     optional fitted camera {viewmat, K, width, height}
    source/expression.json optional fitted {expression, pose}
    preview.png            optional

Writers build the whole bundle beside its destination and move it into place with renames, so readers
never see half a bundle. Readers refuse unsafe zips (absolute or `..` paths, links, zip bombs, too many
entries) and read members into memory; nothing is ever extracted to disk.

Pillow is imported only where PNGs are encoded or decoded, and `read_source=False` skips the source images,
so the Blender add-on (numpy only) reads bundles with this same code.
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
from pathlib import Path, PurePosixPath

import numpy as np

from .gaussians import FORMAT_VERSION, Avatar, AvatarFormatError, HeadIdentity, SourceInfo, validate_avatar
from .ply import atomic_write, fsync_dir, gaussians_from_ply_bytes, gaussians_to_ply_bytes

__all__ = ["ZipLimits", "read_bundle", "write_bundle", "validate_avatar", "bundle_members", "avatar_from_members"]

PLY, MANIFEST, OFFSETS, PREVIEW = "avatar.ply", "avatar.json", "identity_offsets.npy", "preview.png"
SRC_IMAGE, SRC_MATTE, SRC_CAMERA, SRC_FIT = "source/input.png", "source/matte.png", "source/camera.json", "source/expression.json"
KNOWN_MEMBERS = (PLY, MANIFEST, OFFSETS, PREVIEW, SRC_IMAGE, SRC_MATTE, SRC_CAMERA, SRC_FIT)
#: meta keys that avatar.json stores at its top level (the rest goes under "meta").
PROMOTED_META = ("model_version", "creation_options", "source_sha256")


@dataclass(frozen=True)
class ZipLimits:
    """What a bundle zip may hold before we call it hostile."""

    max_entries: int = 64
    max_entry_bytes: int = 1 << 30  # uncompressed, per entry
    max_total_bytes: int = 2 << 30  # uncompressed, all entries
    max_ratio: float = 200.0  # uncompressed / compressed ...
    ratio_min_bytes: int = 1 << 20  # ... checked for entries bigger than this


# ---------------------------------------------------------------------------------------- write
def bundle_members(avatar: Avatar, preview: np.ndarray | None = None) -> dict[str, bytes]:
    """Serialise an avatar to {member name: bytes}; shared by the folder and zip writers.

    Everything is validated and encoded here, before any file is created, so a bad avatar never leaves
    anything on disk.
    """
    validate_avatar(avatar)
    g = avatar.gaussians
    meta = dict(avatar.meta)
    meta.pop("format_version", None)  # written at the top level, always the current one
    ident = avatar.identity
    manifest: dict = {
        "format_version": FORMAT_VERSION,
        "num_gaussians": g.num,
        "sh_degree": g.sh_degree,
        "bound": avatar.binding is not None,
        "head": None if ident is None else {
            "model_id": ident.model_id,
            # float32 -> Python float -> JSON repr -> float32 is exact, so the round trip is bit-exact
            "shape": np.asarray(ident.shape, dtype=np.float32).tolist(),
            "vertex_offsets": OFFSETS if ident.vertex_offsets is not None else None,
        },
    }
    for key in PROMOTED_META:
        if key in meta:
            manifest[key] = meta.pop(key)
    manifest["meta"] = meta
    members: dict[str, bytes] = {PLY: gaussians_to_ply_bytes(g, avatar.binding), MANIFEST: _json(manifest, "meta")}
    if ident is not None and ident.vertex_offsets is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(ident.vertex_offsets, dtype=np.float32), allow_pickle=False)
        members[OFFSETS] = buffer.getvalue()
    src = avatar.source
    if src is not None:
        if src.image is not None:
            members[SRC_IMAGE] = _png(src.image)
        if src.matte is not None:
            members[SRC_MATTE] = _png(src.matte)
        if src.camera is not None:
            members[SRC_CAMERA] = _json(src.camera, "source.camera")
        if src.expression is not None or src.pose is not None:
            fit = {"expression": None if src.expression is None else np.asarray(src.expression, np.float32).tolist(),
                   "pose": None if src.pose is None else np.asarray(src.pose, np.float32).tolist()}
            members[SRC_FIT] = _json(fit, "source")
    if preview is not None:
        preview = np.asarray(preview)
        if preview.dtype != np.uint8 or preview.ndim not in (2, 3) or (preview.ndim == 3 and preview.shape[2] not in (3, 4)):
            raise AvatarFormatError(f"preview: expected an (H, W), (H, W, 3) or (H, W, 4) uint8 image, got {preview.shape} {preview.dtype}")
        members[PREVIEW] = _png(preview)
    return members


def write_bundle(avatar: Avatar, path: str | os.PathLike, *, preview: np.ndarray | None = None, overwrite: bool = False) -> Path:
    """Write a bundle folder, or a zip when `path` ends in `.zip`; atomic either way.

    Folder: built in a hidden temp sibling, every file fsynced, then renamed into place; with `overwrite`
    the old bundle is renamed aside first and deleted only once the new one is in place (and put back if
    that rename fails). Zip: written to a temp file beside `path`, then `os.replace`d.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} already exists (use overwrite=True / --overwrite to replace it)")
    members = bundle_members(avatar, preview)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".zip":
        if path.is_dir() and not path.is_symlink():
            staged = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            try:
                _write_zip(staged / path.name, members)
                _swap_into_place(staged / path.name, path)
            finally:
                shutil.rmtree(staged, ignore_errors=True)
        else:
            atomic_write(path, lambda fh: _write_zip_stream(fh, members))
        return path
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        for name, payload in members.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
        if (staging / "source").is_dir():
            fsync_dir(staging / "source")
        fsync_dir(staging)
        os.chmod(staging, 0o755)
        _swap_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _swap_into_place(new: Path, path: Path) -> None:
    """Rename `new` to `path`; an existing `path` (file or folder) is moved aside, then deleted."""
    if not (path.exists() or path.is_symlink()):
        os.rename(new, path)
    elif path.is_file() and new.is_file():
        os.replace(new, path)
    else:
        aside = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(path, aside)
        try:
            os.rename(new, path)
        except BaseException:
            os.rename(aside, path)  # put the old bundle back
            raise
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink()
    fsync_dir(path.parent)


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with open(path, "wb") as fh:
        _write_zip_stream(fh, members)
        fh.flush()
        os.fsync(fh.fileno())


def _write_zip_stream(fh, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(fh, "w") as zf:
        for name, payload in members.items():
            # PNGs are already compressed; deflating them again only costs time
            method = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
            zf.writestr(name, payload, compress_type=method)


def _json(value, field: str) -> bytes:
    try:
        return json.dumps(value, indent=2, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise AvatarFormatError(f"field '{field}': not JSON-serialisable ({exc})") from None


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------- read
def read_bundle(path: str | os.PathLike, limits: ZipLimits = ZipLimits(), *, read_source: bool = True) -> Avatar:
    """Read a bundle folder or zip; every problem is an `AvatarFormatError` naming it.

    `read_source=False` leaves `avatar.source` None and never touches Pillow (Blender has no Pillow).
    """
    path = Path(path)
    if path.is_dir():
        members = _read_folder_members(path, limits)
    elif path.is_file():
        members = read_zip_members(path, limits)
    else:
        raise AvatarFormatError(f"{path}: no such bundle (expected a folder or a .zip)")
    return avatar_from_members(members, str(path), read_source=read_source)


def _read_folder_members(path: Path, limits: ZipLimits) -> dict[str, bytes]:
    if (path / "source").is_symlink():
        raise AvatarFormatError(f"{path}: source/ is a symbolic link; bundles hold plain files only")
    members = {}
    for name in KNOWN_MEMBERS:
        file = path / name
        if file.is_symlink():
            raise AvatarFormatError(f"{path}: {name} is a symbolic link; bundles hold plain files only")
        if file.is_file():
            size = file.stat().st_size
            if size > limits.max_entry_bytes:
                raise AvatarFormatError(f"{path}: {name} is {size} bytes (limit {limits.max_entry_bytes})")
            members[name] = file.read_bytes()
    return members


def read_zip_members(path: Path, limits: ZipLimits = ZipLimits()) -> dict[str, bytes]:
    """Safely read the known members of a bundle zip into memory.

    The central directory is checked first (entry count, names, links, declared sizes and compression
    ratios), then each known member is read with a hard cap of its declared size, so a zip that lies
    about sizes cannot make us inflate more than the limits.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise AvatarFormatError(f"{path}: not a readable zip ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise AvatarFormatError(f"{path}: {len(infos)} zip entries (a bundle has at most {limits.max_entries})")
        seen: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            _check_zip_name(path, name)
            if name in seen:
                raise AvatarFormatError(f"{path}: zip entry {name!r} appears twice")
            seen.add(name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise AvatarFormatError(f"{path}: zip entry {name!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise AvatarFormatError(f"{path}: zip entry {name!r} is encrypted")
            if info.file_size > limits.max_entry_bytes:
                raise AvatarFormatError(f"{path}: zip entry {name!r} is {info.file_size} bytes uncompressed "
                                        f"(limit {limits.max_entry_bytes})")
            if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise AvatarFormatError(f"{path}: zip entry {name!r} expands {info.file_size / max(info.compress_size, 1):.0f}:1 "
                                        f"(limit {limits.max_ratio:.0f}:1): refusing a likely zip bomb")
            total += info.file_size
            if total > limits.max_total_bytes:
                raise AvatarFormatError(f"{path}: zip holds more than {limits.max_total_bytes} bytes uncompressed")
        prefix = _common_folder([i.filename for i in infos if not i.is_dir()])
        members = {}
        for info in infos:
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            name = info.filename[len(prefix):]
            if name not in KNOWN_MEMBERS:
                continue
            try:
                with zf.open(info) as fh:
                    payload = fh.read(info.file_size + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
                raise AvatarFormatError(f"{path}: corrupt zip entry {info.filename!r} ({exc})") from None
            except Exception as exc:  # zlib.error and friends from a damaged stream
                raise AvatarFormatError(f"{path}: corrupt zip entry {info.filename!r} ({type(exc).__name__}: {exc})") from None
            if len(payload) != info.file_size:
                raise AvatarFormatError(f"{path}: zip entry {info.filename!r} does not match its declared size")
            members[name] = payload
        return members


def _check_zip_name(path: Path, name: str) -> None:
    """Refuse names that could escape a folder if anyone ever extracted them (zip slip)."""
    parts = PurePosixPath(name).parts
    if (not name or name.startswith(("/", "\\")) or "\\" in name or "\0" in name
            or (len(name) > 1 and name[1] == ":") or ".." in parts):
        raise AvatarFormatError(f"{path}: unsafe path {name!r} in zip (absolute, drive or '..' component)")


def _common_folder(names: list[str]) -> str:
    """Bundles zipped with their folder ('avatar/avatar.ply') or without ('avatar.ply') both read."""
    if MANIFEST in names or not names:
        return ""
    first = names[0].split("/", 1)[0] + "/"
    if all(n.startswith(first) for n in names) and first + MANIFEST in names:
        return first
    return ""


def avatar_from_members(members: dict[str, bytes], name: str, *, read_source: bool = True) -> Avatar:
    """Decode and validate an avatar from bundle members (see the module docstring for the layout)."""
    for required in (MANIFEST, PLY):
        if required not in members:
            raise AvatarFormatError(f"{name}: missing {required}")
    try:
        manifest = json.loads(members[MANIFEST])
    except (ValueError, UnicodeDecodeError) as exc:
        raise AvatarFormatError(f"{name}: avatar.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise AvatarFormatError(f"{name}: avatar.json must hold a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise AvatarFormatError(f"{name}: avatar.json field 'format_version': unknown bundle format version {version!r} "
                                f"(this Pointillist reads {FORMAT_VERSION})")
    gaussians, binding = gaussians_from_ply_bytes(members[PLY], f"{name}/{PLY}")
    count = manifest.get("num_gaussians")
    if isinstance(count, bool) or count != gaussians.num:
        raise AvatarFormatError(f"{name}: avatar.json field 'num_gaussians' says {count!r} but avatar.ply holds {gaussians.num}")
    if manifest.get("bound") is not None and bool(manifest["bound"]) != (binding is not None):
        raise AvatarFormatError(f"{name}: avatar.json field 'bound' disagrees with avatar.ply's binding properties")
    if binding is not None and binding.barycentrics is None:
        raise AvatarFormatError(f"{name}/{PLY}: binding_0 without bary_0..2 (a bundle always stores barycentrics)")
    meta = manifest.get("meta")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise AvatarFormatError(f"{name}: avatar.json field 'meta' must be an object")
    meta = {"format_version": FORMAT_VERSION, **{k: manifest[k] for k in PROMOTED_META if k in manifest}, **meta}
    avatar = Avatar(gaussians=gaussians, binding=binding, identity=_identity(manifest, members, name),
                    source=_source(members, name) if read_source else None, meta=meta)
    try:
        validate_avatar(avatar)
    except AvatarFormatError as exc:
        raise AvatarFormatError(f"{name}: {exc}") from None
    return avatar


def _identity(manifest: dict, members: dict[str, bytes], name: str) -> HeadIdentity | None:
    head = manifest.get("head")
    if head is None:
        return None
    try:
        model_id = head["model_id"]
        shape = np.asarray(head["shape"], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise AvatarFormatError(f"{name}: avatar.json field 'head' is malformed ({type(exc).__name__}: {exc})") from None
    if not isinstance(model_id, str) or shape.ndim != 1:
        raise AvatarFormatError(f"{name}: avatar.json field 'head' needs a string 'model_id' and a list 'shape'")
    offsets = None
    if head.get("vertex_offsets"):
        if OFFSETS not in members:
            raise AvatarFormatError(f"{name}: avatar.json promises {OFFSETS} but it is missing")
        try:
            offsets = np.load(io.BytesIO(members[OFFSETS]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise AvatarFormatError(f"{name}: {OFFSETS} is unreadable ({exc})") from None
        if offsets.dtype != np.float32:
            raise AvatarFormatError(f"{name}: {OFFSETS} must hold float32, not {offsets.dtype}")
    return HeadIdentity(model_id=model_id, shape=shape, vertex_offsets=offsets)


def _source(members: dict[str, bytes], name: str) -> SourceInfo | None:
    if not any(k.startswith("source/") for k in members):
        return None
    from PIL import Image

    try:
        image = _read_png(members, SRC_IMAGE, "RGB")
        matte = _read_png(members, SRC_MATTE, "L")
        camera = json.loads(members[SRC_CAMERA]) if SRC_CAMERA in members else None
        fit = json.loads(members[SRC_FIT]) if SRC_FIT in members else {}
        if not isinstance(fit, dict):
            raise ValueError(f"{SRC_FIT} must hold an object")
        expression = None if fit.get("expression") is None else np.asarray(fit["expression"], np.float32)
        pose = None if fit.get("pose") is None else np.asarray(fit["pose"], np.float32)
    except (OSError, ValueError, TypeError, Image.DecompressionBombError) as exc:
        raise AvatarFormatError(f"{name}: unreadable source/ member ({exc})") from None
    return SourceInfo(image=image, matte=matte, camera=camera, expression=expression, pose=pose)


def _read_png(members: dict[str, bytes], key: str, mode: str) -> np.ndarray | None:
    if key not in members:
        return None
    from PIL import Image

    with Image.open(io.BytesIO(members[key])) as im:
        if im.format != "PNG" or im.mode != mode:
            raise ValueError(f"{key} must be a {mode} PNG, got {im.format} {im.mode}")
        return np.asarray(im).copy()
