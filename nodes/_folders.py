"""The ``models/hspace_directions`` folder: registration with ComfyUI's folder_paths, listing, resolving.

Inside ComfyUI the folder is ``<models>/hspace_directions`` (extra_model_paths.yaml can add more). Outside
ComfyUI (plain Python, tests) it is the folder named by the environment variable ``HSPACE_DIRECTIONS_DIR``,
else ``./models/hspace_directions``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..hspace_core.errors import HSpaceError

from . import _comfy

FOLDER_NAME = "hspace_directions"
EXTENSION = ".safetensors"
ENV_VAR = "HSPACE_DIRECTIONS_DIR"


def register() -> None:
    """Add ``models/hspace_directions`` to ComfyUI's model folders (IPAdapter idiom), next to any path that
    extra_model_paths.yaml gave the same name; a no-op outside ComfyUI."""
    folder_paths = _comfy.optional("folder_paths")
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    if FOLDER_NAME not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER_NAME] = ([default], {EXTENSION})
    elif default not in folder_paths.folder_names_and_paths[FOLDER_NAME][0]:
        folder_paths.folder_names_and_paths[FOLDER_NAME][0].append(default)


def roots() -> list[Path]:
    """The folders searched for directions, the first being where new ones are saved."""
    folder_paths = _comfy.optional("folder_paths")
    if folder_paths is not None:
        register()
        return [Path(p) for p in folder_paths.get_folder_paths(FOLDER_NAME)]
    return [Path(os.environ.get(ENV_VAR, os.path.join("models", FOLDER_NAME)))]


def list_names() -> list[str]:
    """Every ``.safetensors`` file under the roots, as a path relative to its root (sorted)."""
    names: set[str] = set()
    for root in roots():
        if root.is_dir():
            names.update(p.relative_to(root).as_posix() for p in root.rglob(f"*{EXTENSION}") if p.is_file())
    return sorted(names)


def resolve(name: str) -> Path:
    """The file of a listed name; names that climb out of the folder are refused."""
    for root in roots():
        candidate = (root / name).resolve()
        if root.resolve() not in candidate.parents:
            raise HSpaceError(f"a file name inside {FOLDER_NAME} expected, got {name!r}")
        if candidate.is_file():
            return candidate
    raise HSpaceError(f"no direction named {name!r} in {', '.join(str(r) for r in roots())}")


def save_path(name: str, overwrite: bool) -> Path:
    """Where to save ``name`` (``.safetensors`` added): the name itself, or with ``_00001``... when it exists
    and ``overwrite`` is off."""
    stem = name.strip().removesuffix(EXTENSION)
    if not stem or stem.startswith(("/", "\\")) or ".." in Path(stem).parts:
        raise HSpaceError(f"a relative file name without '..' expected, got {name!r}")
    root = roots()[0]
    path = root / f"{stem}{EXTENSION}"
    counter = 1
    while path.exists() and not overwrite:
        path = root / f"{stem}_{counter:05d}{EXTENSION}"
        counter += 1
    return path
