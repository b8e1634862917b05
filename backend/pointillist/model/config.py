"""Dataclass configs for every part of the generator; a checkpoint stores them as JSON beside its weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any


@dataclass
class TokenizerConfig:
    #: canonical box in head space (metres): everything an avatar holds, hair included
    box_min: tuple[float, float, float] = (-0.20, -0.24, -0.24)
    box_max: tuple[float, float, float] = (0.20, 0.20, 0.16)
    bits: int = 10  # levels per axis = 2**bits (the paper's 1024)
    num_faces: int = 8844  # binding vocabulary: the head model's triangles

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def vocab_size(self) -> int:
        return self.levels + self.num_faces + 3  # coordinates, bindings, start/end/pad


@dataclass
class ImageEncoderConfig:
    """A ViT in DINOv2's layout (names match Meta's checkpoints, so official weights load as they are)."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    num_registers: int = 0
    layerscale_init: float = 1e-5


@dataclass
class PointEncoderConfig:
    num_points: int = 256  # points sampled once on the head model's surface (fixed barycentric samples)
    dim: int = 192
    depth: int = 2
    heads: int = 4
    frequencies: int = 8  # positional-encoding octaves
    #: also read the portrait along each sample's outward ray (`portrait_probe.ray_probe_features`); False is
    #: the paper's head-point encoder
    probe: bool = False


@dataclass
class ARConfig:
    dim: int = 256
    depth: int = 6
    heads: int = 8
    mlp_ratio: float = 4.0
    window: int = 2048  # tokens of causal context (training windows and the decode-time sliding window)
    max_points: int = 2048  # the KV cache is sized for this many points (4 tokens each) + start/end
    dropout: float = 0.0
    tie_embeddings: bool = True  # output head shares the token embedding (GPT-2 style): 1/3 fewer AR weights
    #: add fixed sinusoidal features of what a token means (a coordinate's value, a triangle's centroid)
    #: to its embedding row, so neighbouring values start out alike in both the input and the output head
    position_features: bool = True


@dataclass
class DecoderConfig:
    dim: int = 192
    depth: int = 2
    heads: int = 4
    frequencies: int = 8
    gaussians_per_point: int = 8  # k; 1 is the paper
    child_radius: float = 0.008  # metres: how far a point's k Gaussians may spread around it
    base_scale: float = 0.003  # metres: the scale a zero log-scale output means
    #: also read the portrait's pixels under each point (`portrait_probe`); False is the paper's decoder
    probe: bool = False


@dataclass
class GeneratorConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    points: PointEncoderConfig = field(default_factory=PointEncoderConfig)
    ar: ARConfig = field(default_factory=ARConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head_model_id: str = "pointillist-template"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GeneratorConfig:
        return dataclass_from_json(cls, data, "config")


def dataclass_from_json(cls, data: Any, where: str):
    """Dataclass from JSON, refusing unknown keys and wrong types so a bad config names its field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            kwargs[name] = dataclass_from_json(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(float(v) for v in value)
        elif isinstance(default, bool) or not isinstance(default, (int, float)):
            kwargs[name] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{name}: expected a number, got {value!r}")
        else:
            kwargs[name] = type(default)(value)
    return cls(**kwargs)


#: GeneratorConfig overrides by size: `tiny` for tests, `cpu` for the checkpoint trained on 2 cores,
#: `base` for a GPU.
MODEL_PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {"image": {"image_size": 56, "dim": 32, "depth": 1, "heads": 2},
             "points": {"num_points": 32, "dim": 32, "depth": 1, "heads": 2},
             "ar": {"dim": 32, "depth": 1, "heads": 2, "window": 128, "max_points": 256},
             "decoder": {"dim": 32, "depth": 1, "heads": 2}},
    # a ViT pre-trained from scratch on little data needs CaiT's larger LayerScale (DINOv2's 1e-5 suits
    # long runs on large data: at 1e-5 our blocks barely left identity in 1,600 steps)
    "cpu": {"image": {"image_size": 168, "dim": 192, "depth": 6, "heads": 3, "layerscale_init": 0.1},
            "points": {"num_points": 256, "dim": 128, "depth": 2, "heads": 4},
            "ar": {"dim": 192, "depth": 4, "heads": 6, "window": 1024, "max_points": 3072},
            "decoder": {"dim": 160, "depth": 2, "heads": 4, "gaussians_per_point": 12, "child_radius": 0.012,
                        "base_scale": 0.004}},
    "base": {},
}
