"""A minimal glTF 2.0 writer: JSON + one binary buffer, saved as a .glb container.

Only what the avatar exports need: typed accessors over tightly packed buffer views (each view 4-byte
aligned, min/max where the spec requires them), and the GLB container (12-byte header, a JSON chunk padded
with spaces, a BIN chunk padded with zeros). numpy only; writing is atomic.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

FLOAT = 5126
UNSIGNED_BYTE = 5121
UNSIGNED_SHORT = 5123
UNSIGNED_INT = 5125
ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963
POINTS = 0
TRIANGLES = 4

_COMPONENTS = {FLOAT: np.float32, UNSIGNED_BYTE: np.uint8, UNSIGNED_SHORT: np.uint16, UNSIGNED_INT: np.uint32}
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_GLB_MAGIC = 0x46546C67  # "glTF"
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942


class GltfDocument:
    """Accumulates glTF JSON and binary data; `glb_bytes()` serialises both."""

    def __init__(self, generator: str):
        self.json: dict = {"asset": {"version": "2.0", "generator": generator}, "scene": 0, "scenes": [{"nodes": []}],
                           "nodes": [], "meshes": [], "accessors": [], "bufferViews": [], "buffers": []}
        self._bin = bytearray()

    # ------------------------------------------------------------------ data
    def add_accessor(self, array: np.ndarray, component: int = FLOAT, *, target: int | None = None,
                     normalized: bool = False, min_max: bool = False) -> int:
        """Append `array` ((count,) or (count, n)) as one accessor over its own buffer view; return its index."""
        data = np.ascontiguousarray(array, dtype=_COMPONENTS[component])
        count = int(data.shape[0])
        width = 1 if data.ndim == 1 else int(np.prod(data.shape[1:]))
        view = self._add_view(data.tobytes(), target)
        accessor: dict = {"bufferView": view, "componentType": component, "count": count, "type": _TYPES[width]}
        if normalized:
            accessor["normalized"] = True
        if min_max:
            flat = data.reshape(count, width)
            accessor["min"] = [_json_number(v) for v in flat.min(axis=0)]
            accessor["max"] = [_json_number(v) for v in flat.max(axis=0)]
        self.json["accessors"].append(accessor)
        return len(self.json["accessors"]) - 1

    def _add_view(self, payload: bytes, target: int | None) -> int:
        self._bin.extend(b"\0" * (-len(self._bin) % 4))  # every accessor component type divides 4
        view: dict = {"buffer": 0, "byteOffset": len(self._bin), "byteLength": len(payload)}
        if target is not None:
            view["target"] = target
        self._bin.extend(payload)
        self.json["bufferViews"].append(view)
        return len(self.json["bufferViews"]) - 1

    # ------------------------------------------------------------------ structure
    def add(self, kind: str, item: dict) -> int:
        """Append `item` to the top-level list `kind` (created when missing); return its index."""
        self.json.setdefault(kind, []).append(item)
        return len(self.json[kind]) - 1

    def use_extension(self, name: str) -> None:
        used = self.json.setdefault("extensionsUsed", [])
        if name not in used:
            used.append(name)

    # ------------------------------------------------------------------ output
    def glb_bytes(self) -> bytes:
        doc = {k: v for k, v in self.json.items() if v != [] or k in ("scenes", "nodes")}
        binary = bytes(self._bin) + b"\0" * (-len(self._bin) % 4)
        doc["buffers"] = [{"byteLength": len(binary)}]
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
        text += b" " * (-len(text) % 4)
        total = 12 + 8 + len(text) + 8 + len(binary)
        return b"".join([struct.pack("<III", _GLB_MAGIC, 2, total), struct.pack("<II", len(text), _CHUNK_JSON), text,
                         struct.pack("<II", len(binary), _CHUNK_BIN), binary])

    def write_glb(self, path: str | os.PathLike) -> Path:
        payload = self.glb_bytes()
        return atomic_write(path, lambda fh: fh.write(payload))


def _json_number(value) -> float | int:
    """min/max as exact JSON numbers: ints for integer components, float32 values widened losslessly."""
    return int(value) if np.issubdtype(type(value), np.integer) else float(value)


def read_glb(payload: bytes) -> tuple[dict, bytes]:
    """Split a .glb into (JSON document, BIN chunk); used by tests and round-trip checks."""
    magic, version, total = struct.unpack_from("<III", payload, 0)
    if magic != _GLB_MAGIC or version != 2 or total != len(payload):
        raise ValueError("not a glTF 2.0 binary (.glb) file")
    length, kind = struct.unpack_from("<II", payload, 12)
    if kind != _CHUNK_JSON:
        raise ValueError("first GLB chunk is not JSON")
    doc = json.loads(payload[20:20 + length])
    offset = 20 + length
    binary = b""
    if offset < total:
        blen, bkind = struct.unpack_from("<II", payload, offset)
        if bkind != _CHUNK_BIN:
            raise ValueError("second GLB chunk is not BIN")
        binary = payload[offset + 8:offset + 8 + blen]
    return doc, binary


def accessor_array(doc: dict, binary: bytes, index: int) -> np.ndarray:
    """An accessor's data as a numpy array (count,) or (count, n); tightly packed views only."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    width = {v: k for k, v in _TYPES.items()}[acc["type"]]
    dtype = _COMPONENTS[acc["componentType"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    data = np.frombuffer(binary, dtype=dtype, count=acc["count"] * width, offset=start)
    return data if width == 1 else data.reshape(acc["count"], width)
