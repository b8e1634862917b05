"""Generator checkpoints: one `.safetensors` file, weights plus JSON config in its metadata.

safetensors holds raw tensors only, so loading a checkpoint can never execute code (unlike a pickle).
Writes are atomic (temp file, fsync, `os.replace`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..atomic import atomic_write
from .config import GeneratorConfig
from .generator import Generator
from .image_encoder import CheckpointError

FORMAT = "pointillist-generator/1"


TIED = {"ar.head.weight": "ar.tok_emb.weight"}  # stored once; restored by the model's own tying


def save_generator(path: str | os.PathLike, model: Generator, info: dict | None = None,
                   dtype: torch.dtype = torch.float32) -> None:
    """Write weights + config (+ JSON-serialisable `info`: training command, steps, losses).

    `dtype=torch.float16` halves the file for shipping; loading always gives float32 weights.
    """
    from safetensors.torch import save

    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items() if not (k in TIED and model.config.ar.tie_embeddings)}
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_json()), "info": json.dumps(info or {})}
    payload = save(state, metadata=meta)
    atomic_write(path, lambda f: f.write(payload))


def read_generator_info(path: str | os.PathLike) -> tuple[GeneratorConfig, dict]:
    """(config, info) of a checkpoint without loading its weights."""
    meta = _metadata(Path(path))
    return _config(meta, Path(path)), json.loads(meta.get("info", "{}"))


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Generator, dict]:
    """(model in eval mode on `device`, info). Any problem is a CheckpointError naming the file."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = _metadata(path)
    config = _config(meta, path)
    model = Generator(config)
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config.ar.tie_embeddings:
        missing = [k for k in missing if k not in TIED]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {sorted(missing)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {bad[:4]}")
    return model.to(device).eval(), json.loads(meta.get("info", "{}"))


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta


def _config(meta: dict, path: Path) -> GeneratorConfig:
    try:
        return GeneratorConfig.from_json(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad config ({exc})") from None
