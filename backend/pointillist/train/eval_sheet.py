"""The evaluation contact sheet: one row per subject, one column group per view, one column per checkpoint.

Columns: the input portrait; the ground-truth avatar and each checkpoint's avatar from the portrait camera;
the same from a novel view; the same posed with one driving frame. A header names the columns, and each row
starts with the subject's id and hair style, so a reader can match the picture to the table.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

HEADER_PX = 18


def _tile(image: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB").resize((size, size), Image.BICUBIC)


def contact_sheet(rows: list[dict], names: list[str], tile: int = 128) -> np.ndarray:
    """(H, W, 3) uint8 sheet.

    ``rows``: per subject {"label": str, "input": img, "truth": {"front", "novel", "posed"}: img,
    "generated": [{"front", "novel", "posed"}: img per checkpoint, in ``names`` order]}.
    """
    views = (("front", "portrait camera"), ("novel", "novel view"), ("posed", "posed"))
    headers = ["input"]
    for _, what in views:
        headers += [f"truth {what}"] + [f"{n} {what}" for n in names]
    width = tile * len(headers)
    sheet = Image.new("RGB", (width, HEADER_PX * 2 + tile * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(headers):  # two header lines: what is shown, and from where
        first, _, second = text.partition(" ")
        draw.text((c * tile + 3, 2), first[: tile // 6], fill="black")
        draw.text((c * tile + 3, 2 + HEADER_PX - 4), second[: tile // 6], fill="black")
    for r, row in enumerate(rows):
        y = HEADER_PX * 2 + r * tile
        tiles = [row["input"]]
        for key, _ in views:
            tiles += [row["truth"][key]] + [g[key] for g in row["generated"]]
        for c, img in enumerate(tiles):
            sheet.paste(_tile(img, tile), (c * tile, y))
        draw.rectangle((0, y, min(tile, 6 * len(row["label"]) + 6), y + 12), fill="white")
        draw.text((3, y + 1), row["label"], fill="black")
    for c in range(1, len(headers)):  # thin separators between columns
        draw.line((c * tile, HEADER_PX * 2, c * tile, sheet.height), fill=(200, 200, 200))
    return np.asarray(sheet)
