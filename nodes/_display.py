"""Images made only to be looked at on a node: the PCA spectrum as a bar chart, small images enlarged, an edit
beside its original.

Shown through a node's ``ui`` images (like PreviewImage), so they appear in the classic canvas and in the Vue
("Nodes 2.0") renderer alike; the IMAGE outputs are never changed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..hspace_core.errors import HSpaceError

DISPLAY_MIN = 128  # images smaller than this (the embedded model's 16x16 digits) are enlarged for viewing


def enlarged(images: torch.Tensor, minimum: int = DISPLAY_MIN) -> torch.Tensor:
    """IMAGEs ``[B, H, W, C]`` enlarged by a whole factor, nearest neighbour, until their longer side reaches
    ``minimum`` pixels (pixels stay sharp squares); larger images come back as they are."""
    zoom = max(1, -(-minimum // max(images.shape[1], images.shape[2])))
    if zoom == 1:
        return images
    return images.repeat_interleave(zoom, dim=1).repeat_interleave(zoom, dim=2)


def beside(originals: torch.Tensor, edits: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """Each original beside its edit (IMAGEs ``[B, H, W, C]`` of one shape), left and right of a dark gap of
    ``gap`` pixels: ``[B, H, 2 W + gap, C]``."""
    if originals.shape != edits.shape:
        raise HSpaceError(f"originals and edits of one shape expected, got {list(originals.shape)} and "
                          f"{list(edits.shape)}")
    separator = originals.new_full((*originals.shape[:2], gap, originals.shape[3]), 0.12)
    return torch.cat([originals, separator, edits], dim=2)


def spectrum_chart(ratios: Sequence[float], width: int = 400, height: int = 180) -> torch.Tensor:
    """A bar chart of the explained variance ratio per component, as an IMAGE ``[1, height, width, 3]``."""
    canvas = Image.new("RGB", (width, height), "#1e1e1e")
    draw = ImageDraw.Draw(canvas)
    total = sum(ratios)
    draw.text((8, 6), f"explained variance: PC0 {100 * ratios[0]:.1f}%, all {len(ratios)}: {100 * total:.1f}%",
              fill="#dddddd")
    top, bottom, left = 26, height - 16, 8
    bar = (width - 2 * left) / len(ratios)
    peak = max(max(ratios), 1e-12)
    for i, ratio in enumerate(ratios):
        x0 = left + i * bar
        draw.rectangle([x0 + 1, bottom - max((bottom - top) * ratio / peak, 1), x0 + max(bar - 2, 1), bottom],
                       fill="#6fa8dc")
        if bar >= 16:
            draw.text((x0 + bar / 2 - 3 * len(str(i)), bottom + 2), str(i), fill="#dddddd")
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]
