"""Contact sheet of a head model's expressions: one shaded render per expression, labelled.

A person judges blendshapes by eye; this is the picture they look at (`pointillist head contact-sheet`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..render.camera import fov_to_K, orbit_viewmat
from .mesh_preview import render_mesh
from .model import HeadModel

JAW_OPEN_RADIANS = math.radians(18.0)
HEAT_FULL_SCALE = 0.004  # metres of displacement shown at full tint
HEAT_COLOR = np.array([0.95, 0.35, 0.10])


def expression_tiles(head: HeadModel, strength: float = 1.0) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(label, expression vector, pose) for neutral, jawOpen, gaze and every named expression."""
    E = head.num_expr
    zero_pose = torch.zeros(5, 3)
    tiles = [("neutral", torch.zeros(E), zero_pose)]
    jaw = zero_pose.clone()
    jaw[2, 0] = JAW_OPEN_RADIANS
    tiles.append(("jawOpen (jaw bone)", torch.zeros(E), jaw))
    gaze = zero_pose.clone()
    gaze[3:, 1] = math.radians(20)
    tiles.append(("gaze left (eye bones)", torch.zeros(E), gaze))
    for i, name in enumerate(head.expr_names):
        e = torch.zeros(E)
        e[i] = strength
        tiles.append((name, e, zero_pose))
    return tiles


def contact_sheet(head: HeadModel, tile: int = 256, columns: int = 8, yaw: float = 20.0) -> Image.Image:
    """Render every expression tile in a grid, face close-up, three-quarter view; moving skin is tinted."""
    tiles = expression_tiles(head)
    expr = torch.stack([t[1] for t in tiles])
    pose = torch.stack([t[2] for t in tiles])
    with torch.no_grad():
        verts = head(expression=expr, pose=pose).vertices.numpy()
    faces = head.faces.numpy()
    part_colors = {"face": (0.86, 0.72, 0.64), "head": (0.80, 0.68, 0.60), "left_eyeball": (0.95, 0.95, 0.95),
                   "right_eyeball": (0.95, 0.95, 0.95), "mouth_cavity": (0.45, 0.15, 0.15),
                   "teeth_upper": (0.98, 0.97, 0.90), "teeth_lower": (0.98, 0.97, 0.90)}
    colors = np.full((len(faces), 3), 0.8)
    parts = head.data.face_parts
    if parts is not None:
        for i, name in enumerate(head.data.part_names):
            colors[parts == i] = part_colors.get(name, (0.8, 0.8, 0.8))
    # tint what moves (relative to neutral), so locality and left/right are visible at a glance
    moved = np.linalg.norm(verts - verts[:1], axis=2)[:, faces].mean(2)  # (tiles, F)
    heat = np.clip(moved / HEAT_FULL_SCALE, 0.0, 1.0)[..., None] * 0.65
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), "white")
    draw = ImageDraw.Draw(sheet)
    target = (0.0, -0.005, 0.06)
    viewmat = orbit_viewmat(yaw, 5.0, 0.36, target=target)
    K = fov_to_K(30.0, tile, tile)
    for k, (label, _, _) in enumerate(tiles):
        img = render_mesh(verts[k], faces, viewmat, K, tile, tile, colors * (1 - heat[k]) + HEAT_COLOR * heat[k])
        x, y = (k % columns) * tile, (k // columns) * tile
        sheet.paste(Image.fromarray(img), (x, y))
        draw.text((x + 6, y + 4), label, fill=(20, 20, 20))
    return sheet
