"""Image grids a person can read: a label beside every row, a title above the grid, and a heading over
each block of columns (before / after), drawn with PIL on a torchvision grid of each block.

Generated images are small (the embedded model draws 64x96), so blocks are scaled up by a whole factor
until a row is tall enough to sit beside readable text; pixels stay sharp (nearest neighbour).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from leafgen import atomic

FONT_SIZE = 13
MIN_ROW_HEIGHT = 72
LABEL_CHARS = 26
GAP = 10
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


@dataclass
class GridRow:
    label: str
    """Text beside the row (a prompt), wrapped to a few lines."""
    blocks: Sequence[torch.Tensor]
    """One or more blocks of images side by side, each (n, 3, H, W) floats in [0, 1]."""


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _block_image(images: torch.Tensor, scale: int) -> Image.Image:
    grid = make_grid(images.float().clamp(0, 1), nrow=len(images), padding=1, pad_value=1.0)
    img = to_pil_image(grid)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def labelled_grid(rows: Sequence[GridRow], title: str = "", block_titles: Sequence[str] = ()) -> Image.Image:
    """The rows under ``title``, each row's label on its left, ``block_titles`` over the blocks."""
    if not rows:
        raise ValueError("a grid needs at least one row")
    height = rows[0].blocks[0].shape[-2]
    scale = max(1, math.ceil(MIN_ROW_HEIGHT / height))
    drawn = [[_block_image(block, scale) for block in row.blocks] for row in rows]
    font, bold = _font(), _font(FONT_SIZE + 2)
    labels = ["\n".join(textwrap.wrap(row.label, LABEL_CHARS)) or " " for row in rows]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(probe.multiline_textbbox((0, 0), text, font=font)[2] for text in labels) + GAP
    widths = [max(row[k].width for row in drawn) for k in range(len(drawn[0]))]
    line = FONT_SIZE + 6
    top = (line + 4 if title else 0) + (line if block_titles else 0)
    row_heights = [max(img.height for img in row) for row in drawn]
    title_width = probe.textbbox((0, 0), title, font=bold)[2] + 4 if title else 0
    width = max(label_width + sum(widths) + GAP * (len(widths) - 1) + 2, title_width)
    canvas = Image.new("RGB", (width, top + sum(row_heights) + 2), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 2), title, fill=INK, font=bold)
    x = label_width
    for k, heading in enumerate(block_titles):
        draw.text((x + 2, top - line + 2), heading, fill=INK, font=font)
        x += widths[k] + GAP
    y = top
    for text, row, h in zip(labels, drawn, row_heights):
        draw.multiline_text((2, y + 2), text, fill=INK, font=font)
        x = label_width
        for k, img in enumerate(row):
            canvas.paste(img, (x, y))
            x += widths[k] + GAP
        y += h
    return canvas


def save_grid(image: Image.Image, path: Path) -> Path:
    """Write a grid as PNG atomically."""
    with atomic.atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return path
