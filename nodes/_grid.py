"""IMAGE columns (one per strength) as one labelled IMAGE, through hspace_core's image grid."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..hspace_core.imaging import image_grid

MIN_CELL = 64


def labelled_grid(columns: Sequence[torch.Tensor], labels: Sequence[str]) -> torch.Tensor:
    """IMAGEs ``[B, H, W, 3]`` in [0, 1], one per column, as one IMAGE ``[1, H', W', 3]`` with the labels on top.

    Cells smaller than 64 px are enlarged (nearest neighbour) so that labels stay legible.
    """
    height, width = columns[0].shape[1], columns[0].shape[2]
    zoom = max(1, -(-MIN_CELL // max(height, width)))
    row_major = torch.stack(list(columns), dim=1).flatten(0, 1)  # [rows * columns, H, W, 3]
    grid = image_grid(row_major.movedim(-1, 1) * 2 - 1, ncols=len(columns), upscale=zoom, col_labels=labels)
    return torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)[None]
