"""Mixed precision for training: which autocast dtype, and the fp16 loss scaler with its saved state.

Weights and optimizer state stay float32 in every mode (autocast only lowers the matmuls), so a
checkpoint is the same file whatever precision trained it. `auto` means bf16 on a CUDA device that
supports it (no loss scaling needed) and fp32 on a CPU, where bf16 autocast is slower than fp32 on
most chips. fp16 needs a `GradScaler`, whose scale is saved in the resume sidecar.
"""

from __future__ import annotations

import contextlib
import json

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> a concrete mode for `device`; refuses what the device cannot run."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return name


class Precision:
    """Autocast context and (fp16) gradient scaler for one resolved mode."""

    def __init__(self, mode: str, device: torch.device):
        if mode not in _DTYPES:
            raise ValueError(f"unresolved precision {mode!r}")
        self.mode = mode
        self.device_type = device.type
        self.dtype = _DTYPES[mode]
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    def autocast(self):
        """Lower-precision region for the model's forward; a no-op in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def full_precision(self):
        """A region forced back to fp32 (rasterization and image losses: small differences matter)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before gradient clipping, so the clip sees true gradient norms."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step (skipped by the scaler when fp16 gradients overflowed)."""
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_json(self) -> str:
        """The scaler's state as JSON for the sidecar's metadata ("" without a scaler)."""
        if not self.scaler:
            return ""
        return json.dumps({k: (float(v) if isinstance(v, (float, torch.Tensor)) else v)
                           for k, v in self.scaler.state_dict().items()})

    def load_state_json(self, text: str) -> bool:
        """Restore the scaler from `state_json`'s output; False when there is nothing to restore."""
        if not (self.scaler and text):
            return False
        self.scaler.load_state_dict(json.loads(text))
        return True
