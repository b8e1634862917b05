"""Who a procedural subject looks like: skin, hair, eyes, brows, beard, glasses and the baked key light.

Drawn apart from the geometry, from its own seeded stream, so a dataset plan (and a test of the
distributions) can draw thousands of appearances without building a single avatar. Colours are
display sRGB in [0, 1]; palettes follow measured ranges loosely:

* skin: a continuous Fitzpatrick-like axis ``skin_tone`` in [0, 1] (bin I..VI = ``1 + floor(6 t)``),
  interpolated through six anchors, with an undertone (olive ↔ pink) and a lip / blush tint;
* hair: a natural melanin axis (platinum → blonde → browns → black), red (pheomelanin) hair, greying
  mixed toward white, and occasional dyed colours; darker skin draws darker hair more often;
* the key light (direction, colour temperature, key-to-ambient ratio) that is baked into the
  Gaussian colours, so stored Gaussians and renders agree.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass

import numpy as np

# Fitzpatrick-like anchors I..VI, display sRGB (light -> deep); interpolated continuously.
SKIN_ANCHORS = np.array([
    (0.93, 0.79, 0.71), (0.88, 0.71, 0.60), (0.80, 0.61, 0.47), (0.67, 0.47, 0.33), (0.49, 0.33, 0.23), (0.30, 0.20, 0.14),
])
FITZPATRICK = ("I", "II", "III", "IV", "V", "VI")

# Natural hair along a melanin axis m in [0, 1] (0 = platinum, 1 = black).
_MELANIN_ANCHORS = np.array([
    (0.0, 0.88, 0.80, 0.62), (0.18, 0.76, 0.60, 0.36), (0.35, 0.52, 0.37, 0.21), (0.55, 0.30, 0.19, 0.10),
    (0.78, 0.14, 0.085, 0.052), (1.0, 0.040, 0.035, 0.033),
])
HAIR_COLOR_NAMES = ("blonde", "light_brown", "brown", "dark_brown", "black", "red", "grey", "dyed")
BEARD_STYLES = ("stubble", "goatee", "moustache", "full")
BEARD_WEIGHTS = np.array([0.30, 0.20, 0.10, 0.40])
GLASSES_STYLES = ("round", "rectangular", "browline")
EYE_COLORS = {"brown": (0.30, 0.17, 0.08), "dark_brown": (0.14, 0.08, 0.04), "blue": (0.28, 0.45, 0.66),
              "green": (0.30, 0.45, 0.28), "hazel": (0.45, 0.35, 0.16), "grey": (0.48, 0.52, 0.55)}


def fitzpatrick_bin(skin_tone: float) -> str:
    """The Fitzpatrick-like bin name (I..VI) of a continuous tone in [0, 1]."""
    return FITZPATRICK[min(5, int(np.floor(float(skin_tone) * 6)))]


def skin_color(tone: float, undertone: float) -> np.ndarray:
    """sRGB skin albedo of a tone in [0, 1] and an undertone in [-1, 1] (-1 pink, +1 olive/golden)."""
    x = float(np.clip(tone, 0, 1)) * (len(SKIN_ANCHORS) - 1)
    lo = min(int(x), len(SKIN_ANCHORS) - 2)
    base = SKIN_ANCHORS[lo] + (SKIN_ANCHORS[lo + 1] - SKIN_ANCHORS[lo]) * (x - lo)
    shift = np.array([0.0, 0.030, -0.035]) if undertone > 0 else np.array([0.025, -0.020, 0.005])
    return np.clip(base + abs(undertone) * shift * base.mean() / 0.6, 0, 1)


def melanin_color(m: float) -> np.ndarray:
    a = _MELANIN_ANCHORS
    return np.array([np.interp(m, a[:, 0], a[:, k]) for k in (1, 2, 3)])


def color_temperature_rgb(kelvin: float) -> np.ndarray:
    """Relative RGB of a black-body-ish light (Tanner Helland's fit), normalised to mean 1."""
    t = kelvin / 100.0
    r = 255.0 if t <= 66 else 329.7 * (t - 60) ** -0.1332
    g = 99.47 * math.log(t) - 161.12 if t <= 66 else 288.12 * (t - 60) ** -0.0755
    b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.52 * math.log(t - 10) - 305.04)
    rgb = np.clip(np.array([r, g, b]), 1, 255) / 255.0
    return rgb / rgb.mean()


@dataclass(frozen=True)
class Lighting:
    """A key light plus ambient, baked into Gaussian colours: c = albedo · (ambient + key · max(n·l, 0) · tint)."""

    direction: tuple[float, float, float]  # unit vector toward the light, head space (+z = the face's front)
    kelvin: float
    ambient: float
    key: float

    def shade(self, normals: np.ndarray) -> np.ndarray:
        """(N, 3) multiplicative shading of unit normals (N, 3); about 1 on average for a lit face."""
        lam = np.clip(normals @ np.asarray(self.direction), 0.0, 1.0)
        tint = color_temperature_rgb(self.kelvin)
        tint = 1.0 + 0.55 * (tint - 1.0)  # a photographer white-balances most of it away
        return self.ambient + self.key * lam[:, None] * tint[None]


@dataclass(frozen=True)
class Appearance:
    skin_tone: float  # [0, 1], light -> deep
    undertone: float  # [-1, 1]
    blush: float  # cheek / nose redness
    lip_tint: float  # [-1, 1] pale -> rosy
    freckles: int  # freckle count (0: none)
    hair_color: str  # one of HAIR_COLOR_NAMES
    hair_rgb: tuple[float, float, float]
    natural_hair_rgb: tuple[float, float, float]  # brows and beards keep the natural colour under a dye
    hair_length: float  # multiplier of the style's strand length
    eye_color: str
    brow_thickness: float  # multiplier of the brow band height
    brow_arch: float  # metres the brow's middle is raised
    brow_darkness: float
    beard_style: str  # one of BEARD_STYLES (used only when the subject has a beard)
    beard_length: float
    glasses: str  # "" or one of GLASSES_STYLES
    glasses_rgb: tuple[float, float, float]
    lighting: Lighting

    @property
    def fitzpatrick(self) -> str:
        return fitzpatrick_bin(self.skin_tone)

    def to_json(self) -> dict:
        out = asdict(self)
        out["fitzpatrick"] = self.fitzpatrick
        out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
        for k in ("hair_rgb", "natural_hair_rgb", "glasses_rgb"):
            out[k] = [round(float(c), 4) for c in out[k]]
        light = out["lighting"]
        out["lighting"] = {k: ([round(float(c), 4) for c in v] if isinstance(v, (tuple, list)) else round(float(v), 4))
                           for k, v in light.items()}
        return out


#: The soft, nearly frontal key light of a lone avatar (what engine v1 baked into every skin splat).
STUDIO_LIGHT = Lighting(direction=(0.25 / 1.0025, 0.55 / 1.0025, 0.80 / 1.0025), kelvin=6500.0, ambient=0.80, key=0.22)


def _hair(rng: np.random.Generator, tone: float) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, colour, natural colour): darker skin draws darker hair more often."""
    deep = float(np.clip((tone - 0.35) / 0.5, 0, 1))
    w = np.array([0.16 * (1 - deep) + 0.01, 0.16 * (1 - deep) + 0.03, 0.20, 0.20 + 0.1 * deep, 0.13 + 0.45 * deep,
                  0.06 * (1 - deep) + 0.005, 0.08, 0.035])
    name = str(rng.choice(HAIR_COLOR_NAMES, p=w / w.sum()))
    ranges = {"blonde": (0.0, 0.26), "light_brown": (0.26, 0.45), "brown": (0.45, 0.66), "dark_brown": (0.66, 0.86),
              "black": (0.86, 1.0)}
    natural_name = name if name in ranges else str(rng.choice(list(ranges), p=[0.1, 0.15, 0.3, 0.25, 0.2]))
    natural = melanin_color(rng.uniform(*ranges[natural_name]))
    if name == "red":
        natural = np.array([0.52, 0.20, 0.07]) + rng.uniform(-0.1, 0.25) * np.array([0.3, 0.22, 0.1])
    colour = natural
    if name == "grey":
        g = rng.uniform(0.45, 1.0)  # share of white hairs
        colour = (1 - g) * natural + g * np.array([0.80, 0.80, 0.79]) * rng.uniform(0.8, 1.05)
    elif name == "dyed":
        colour = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 0.85), rng.uniform(0.45, 0.8)))
    return name, np.clip(colour, 0, 1), np.clip(natural, 0, 1)


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """A random appearance (cheap: no geometry)."""
    tone = float(rng.random())
    hair_name, hair, natural = _hair(rng, tone)
    # fair skin reads pink more often than olive, and flushes more
    undertone = float(np.clip(rng.uniform(-1, 1) - 0.6 * max(0.0, 0.4 - tone) / 0.4, -1, 1))
    deep = tone > 0.5
    eye_w = np.array([0.35, 0.2, 0.15, 0.1, 0.12, 0.08]) if not deep else np.array([0.4, 0.5, 0.02, 0.02, 0.05, 0.01])
    eye = str(rng.choice(list(EYE_COLORS), p=eye_w / eye_w.sum()))
    freckly = (tone < 0.35 and rng.random() < 0.45) or hair_name == "red" and rng.random() < 0.7 or rng.random() < 0.05
    glasses = str(rng.choice(GLASSES_STYLES, p=[0.35, 0.45, 0.2]))
    frame = [(0.03, 0.03, 0.035), (0.20, 0.11, 0.05), (0.62, 0.52, 0.30), (0.70, 0.70, 0.72), (0.35, 0.08, 0.10), (0.10, 0.16, 0.30)]
    az = math.radians(rng.uniform(-65, 65))
    el = math.radians(rng.uniform(-5, 50))
    direction = (math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el))
    key = float(rng.uniform(0.15, 0.55))
    return Appearance(
        skin_tone=tone, undertone=undertone, blush=float(rng.uniform(0.02, 0.12) * (1.25 - 0.5 * tone)),
        lip_tint=float(rng.uniform(-1, 1)), freckles=int(rng.integers(60, 320)) if freckly else 0,
        hair_color=hair_name, hair_rgb=tuple(float(c) for c in hair), natural_hair_rgb=tuple(float(c) for c in natural),
        hair_length=float(rng.uniform(0.8, 1.25)), eye_color=eye,
        brow_thickness=float(rng.uniform(0.65, 1.45)), brow_arch=float(rng.uniform(-0.0015, 0.004)),
        brow_darkness=float(rng.uniform(0.55, 0.95)),
        beard_style=str(rng.choice(BEARD_STYLES, p=BEARD_WEIGHTS)), beard_length=float(rng.uniform(0.7, 1.5)),
        glasses=glasses, glasses_rgb=tuple(float(c) for c in frame[int(rng.integers(len(frame)))]),
        lighting=Lighting(direction=tuple(float(c) for c in direction), kelvin=float(rng.uniform(3200, 7500)),
                          ambient=float(0.97 - 0.8 * key), key=key),
    )


def appearance_for_seed(seed: int) -> Appearance:
    """The appearance drawn for ``seed`` (glasses decided by the caller; `make_procedural_avatar` swaps in
    ``STUDIO_LIGHT`` unless given an appearance)."""
    return sample_appearance(np.random.default_rng([int(seed), 7]))
