"""A labelled image grid (PIL): columns are strengths, rows are the images of the batch."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

LABEL_HEIGHT = 14
MIN_CELL = 64


def labelled_grid(columns: Sequence[torch.Tensor], labels: Sequence[str]) -> torch.Tensor:
    """IMAGEs ``[B, H, W, 3]`` in [0, 1], one per column, as one IMAGE ``[1, H', W', 3]`` with a label row on top.

    Cells smaller than 64 px are enlarged (nearest neighbour) so that labels stay legible.
    """
    rows, height, width = columns[0].shape[0], columns[0].shape[1], columns[0].shape[2]
    zoom = max(1, -(-MIN_CELL // max(height, width)))
    cell_h, cell_w = height * zoom, width * zoom
    canvas = Image.new("RGB", (cell_w * len(columns), LABEL_HEIGHT + cell_h * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (images, label) in enumerate(zip(columns, labels)):
        draw.text((c * cell_w + 2, 1), label, fill="black")
        for r in range(rows):
            pixels = (images[r].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
            cell = Image.fromarray(pixels).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(cell, (c * cell_w, LABEL_HEIGHT + r * cell_h))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]
