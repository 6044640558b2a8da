"""Saving captured h to ComfyUI's output folder and loading it back (a long capture is worth keeping).

Files are hspace trajectory ``.safetensors`` (h, timesteps, sigmas, JSON metadata), saved under
``output/<filename_prefix>_00001_.safetensors``. Load Trajectory lists those, and the shard folders of captures to
disk (``index.json``), under ``hspace_trajectories`` in the output and input folders, annotated ``[output]`` /
``[input]`` as ComfyUI's own loaders do; a shard folder stays on disk and is read a shard at a time. What a save or
capture stopped before the end left (hidden temporaries, shards without an index) is never listed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..hspace_core.fileio import INDEX_NAME, SHARD_PATTERN, ShardedTrajectory, load_trajectory, save_trajectory

from . import _comfy, _inputs
from ._types import TRAJECTORY, TrajectoryValue, in_memory

CATEGORY = "hspace/capture"
SUBFOLDER = "hspace_trajectories"


def listed_files() -> list[str]:
    """Trajectory files under ``hspace_trajectories`` of the output and input folders ([] outside ComfyUI)."""
    folder_paths = _comfy.optional("folder_paths")
    if folder_paths is None:
        return []
    names = []
    for annotation, base in (("output", folder_paths.get_output_directory()),
                             ("input", folder_paths.get_input_directory())):
        root = Path(base)
        folder = root / SUBFOLDER
        if folder.is_dir():
            visible = [p for p in folder.rglob("*")
                       if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
            files = [p for p in visible if p.suffix == ".safetensors" and not SHARD_PATTERN.fullmatch(p.name)]
            shards = [p.parent for p in visible if p.name == INDEX_NAME]
            names += [f"{p.relative_to(root).as_posix()} [{annotation}]" for p in sorted(files + shards)]
    return names


class HSpaceSaveTrajectory:
    """Save captured h (a trajectory) to the output folder as .safetensors, to reuse it without sampling again."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "trajectory": _inputs.trajectory(),
            "filename_prefix": ("STRING", {"default": f"{SUBFOLDER}/capture",
                                           "tooltip": "path inside the output folder; a counter is appended"}),
        }}

    def save(self, trajectory: TrajectoryValue, filename_prefix: str) -> dict[str, Any]:
        folder_paths = _comfy.require("folder_paths")
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                       folder_paths.get_output_directory())
        path = save_trajectory(in_memory(trajectory), os.path.join(folder, f"{name}_{counter:05}_.safetensors"))
        return {"ui": {"text": [str(path)]}}


class HSpaceLoadTrajectory:
    """Load a trajectory saved by Save Trajectory, or the shard folder of a capture to disk (from output/ or input/
    hspace_trajectories)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (TRAJECTORY,)
    RETURN_NAMES = ("trajectory",)
    OUTPUT_TOOLTIPS = ("the captured trajectory (h over samples and steps)",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"trajectory_name": (listed_files(), {
            "tooltip": "a file under hspace_trajectories in the output or input folder"})}}

    @classmethod
    def IS_CHANGED(cls, trajectory_name: str) -> str:
        stat = os.stat(_comfy.require("folder_paths").get_annotated_filepath(trajectory_name))
        return f"{stat.st_mtime_ns}-{stat.st_size}"

    def load(self, trajectory_name: str) -> tuple[TrajectoryValue]:
        path = _comfy.require("folder_paths").get_annotated_filepath(trajectory_name)
        return (ShardedTrajectory(path) if os.path.isdir(path) else load_trajectory(path),)


NODE_CLASSES = (HSpaceSaveTrajectory, HSpaceLoadTrajectory)
DISPLAY_NAMES = {"HSpaceSaveTrajectory": "Save Trajectory (hspace)", "HSpaceLoadTrajectory": "Load Trajectory (hspace)"}
