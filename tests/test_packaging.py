"""requirements.txt (what ComfyUI-Manager and comfy-cli install) and pyproject's dependencies agree."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Left out of requirements.txt because ComfyUI's own requirements.txt brings them (checked against a real
# ComfyUI checkout in tests/comfyui/test_install.py).
PROVIDED_BY_COMFYUI = {"torch", "numpy", "safetensors", "pillow", "tqdm"}


def requirement_name(line: str) -> str:
    return re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip().lower()


def requirements_lines() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    return [line for line in lines if line]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_requirements_txt_is_pyproject_minus_what_comfyui_brings():
    dependencies = pyproject()["project"]["dependencies"]
    assert set(requirements_lines()) == {d for d in dependencies if requirement_name(d) not in PROVIDED_BY_COMFYUI}
    assert {requirement_name(d) for d in dependencies} >= PROVIDED_BY_COMFYUI


def test_requirements_txt_never_pulls_torch():
    assert not {requirement_name(line) for line in requirements_lines()} & {"torch", "torchvision", "torchaudio"}


def test_registry_metadata_points_at_shipped_files():
    project, comfy = pyproject()["project"], pyproject()["tool"]["comfy"]
    assert (ROOT / project["license"]["file"]).read_text().startswith("MIT License")
    assert comfy["Icon"].endswith("/web/icon.png") and (ROOT / "web" / "icon.png").stat().st_size > 0
    assert comfy["requires-comfyui"].startswith(">=")
    ignored = (ROOT / ".comfyignore").read_text().split()
    assert {"tests/", "benchmarks/", "scripts/"} <= set(ignored)


def test_importing_the_pack_leaves_sys_path_alone():
    import sys

    from modules import load_module

    before = list(sys.path)
    load_module("hspace_pack_path_check", ROOT / "__init__.py", package=True)
    assert sys.path == before
