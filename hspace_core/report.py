"""Pictures for reports: a bar chart of a PCA spectrum, drawn with PIL (no plotting library needed)."""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw


def bar_chart(values: Sequence[float], title: str, labels: Sequence[str] | None = None,
              size: tuple[int, int] = (640, 320)) -> Image.Image:
    """A labelled bar chart of non-negative values (e.g. the explained-variance ratio of each PC)."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 48, 12, 28, 28
    draw.text((left, 6), title, fill="black")
    peak = max(max(values), 1e-12)
    slot = (width - left - right) / max(len(values), 1)
    for i, value in enumerate(values):
        x0 = left + i * slot + slot * 0.15
        y0 = top + (height - top - bottom) * (1 - value / peak)
        draw.rectangle([x0, y0, x0 + slot * 0.7, height - bottom], fill=(70, 110, 180))
        draw.text((x0, height - bottom + 4), labels[i] if labels else str(i + 1), fill="black")
    for frac in (0.0, 0.5, 1.0):
        y = height - bottom - frac * (height - top - bottom)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((2, y - 6), f"{frac * peak:.3f}", fill="black")
    draw.line([left, top, left, height - bottom], fill="black")
    draw.line([left, height - bottom, width - right, height - bottom], fill="black")
    return image
