"""Installing the pack the way ComfyUI-Manager and comfy-cli do: ``pip install -r requirements.txt`` into
ComfyUI's Python, which has ComfyUI's requirements and no diffusers yet; then every node imports.

Needs COMFYUI_PATH and network access to PyPI. ``COMFYUI_BASE_PYTHON`` names ComfyUI's Python *before* the
pack's requirements are installed (default: COMFYUI_PYTHON, else the Python running pytest); the test is
skipped when diffusers is already importable there. Nothing is installed into that environment: a throw-away
venv sees its packages through a .pth file and takes what pip adds.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nodes.registry import NODE_CLASS_MAPPINGS

REPO = Path(__file__).resolve().parents[2]

PROVIDED_BY_COMFYUI = {"torch", "numpy", "safetensors", "pillow", "tqdm"}

IMPORT_EVERY_NODE = textwrap.dedent('''
    import importlib.util, logging, sys
    comfy_dir, pack_dir, block = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.argv = ["main.py", "--cpu"]
    sys.path.insert(0, comfy_dir)
    import comfy.options
    comfy.options.enable_args_parsing()
    import folder_paths, nodes  # ComfyUI's own modules, as when it loads custom nodes
    records = []
    logging.getLogger().addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r)})())
    if block:
        sys.modules["hspace_pack." + block] = None  # as if that family's dependency were missing
    spec = importlib.util.spec_from_file_location("hspace_pack", pack_dir + "/__init__.py",
                                                  submodule_search_locations=[pack_dir])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["hspace_pack"] = pack
    spec.loader.exec_module(pack)
    import diffusers
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        cls.INPUT_TYPES()
    model = pack.NODE_CLASS_MAPPINGS["HSpacePixelModelLoader"]().load("hspace-mnist-16 (embedded)")[0]
    assert type(model).__name__ == "ModelPatcher", type(model)
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING and "hspace" in r.getMessage()]
    print("NODES", " ".join(sorted(pack.NODE_CLASS_MAPPINGS)))
    print("WARNINGS", len(warnings), *warnings, sep="\\n")
    print("DIFFUSERS", diffusers.__version__)
''')


def requirement_names() -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines())
    return {line.split(">")[0].split("=")[0].split("<")[0].strip().lower() for line in lines if line}


def test_what_requirements_txt_leaves_out_comes_with_comfyui(comfyui_dir):
    comfy_dir = comfyui_dir
    comfy_requirements = {line.split(">")[0].split("=")[0].split("~")[0].split("<")[0].strip().lower()
                          for line in (comfy_dir / "requirements.txt").read_text().splitlines()
                          if line.strip() and not line.startswith("#")}
    assert PROVIDED_BY_COMFYUI <= comfy_requirements
    assert not requirement_names() & comfy_requirements, "requirements.txt repeats what ComfyUI pins"


@pytest.fixture(scope="module")
def manager_install(tmp_path_factory, comfyui_dir) -> tuple[Path, Path]:
    base = os.environ.get("COMFYUI_BASE_PYTHON") or os.environ.get("COMFYUI_PYTHON") or sys.executable
    has_diffusers = subprocess.run([base, "-c", "import diffusers"], capture_output=True).returncode == 0
    if has_diffusers:
        pytest.skip(f"{base} already has diffusers: set COMFYUI_BASE_PYTHON to ComfyUI's Python without it")
    purelib = subprocess.run([base, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    venv = tmp_path_factory.mktemp("manager_install") / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    Path(own, "comfyui_environment.pth").write_text(purelib + "\n")  # ComfyUI's packages, seen, not copied
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(REPO / "requirements.txt")], capture_output=True, text=True, timeout=900, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    return python, comfyui_dir


def run_pack(install: tuple[Path, Path], block: str = "") -> str:
    python, comfy_dir = install
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run([python, "-c", IMPORT_EVERY_NODE, str(comfy_dir), str(REPO), block],
                            capture_output=True, text=True, timeout=600, env=env, cwd=comfy_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_pip_install_of_requirements_txt_brings_every_node(manager_install):
    out = run_pack(manager_install)
    nodes = set(out.split("NODES ", 1)[1].split("\n", 1)[0].split())
    assert nodes == set(NODE_CLASS_MAPPINGS)
    assert "WARNINGS\n0\n" in out and "DIFFUSERS " in out


def test_a_family_that_cannot_import_is_off_with_one_line_and_the_rest_load(manager_install):
    out = run_pack(manager_install, block="nodes.asyrp_train")
    nodes = set(out.split("NODES ", 1)[1].split("\n", 1)[0].split())
    family = {"HSpaceAsyrpTrain", "HSpaceApplyAsyrpFunction"}  # nodes/asyrp_train.py
    assert nodes == set(NODE_CLASS_MAPPINGS) - family
    warnings = out.split("WARNINGS\n", 1)[1].split("\nDIFFUSERS", 1)[0].split("\n")
    assert warnings[0] == "1" and all(name in warnings[1] for name in family) and "asyrp_train" in warnings[1]
