"""The pack's nodes on a tiny random Flux-layout model built with ComfyUI's own classes (needs COMFYUI_PATH).

tests/comfyui/transformer_check.py runs in ComfyUI's Python: Capture h at a single block, PCA, Apply Direction
(hooked through patches_replace["dit"]), the Asyrp Sampler in flow form and the Strength Sweep.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def flux_result(comfyui_dir) -> dict:
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([python, str(HERE / "transformer_check.py"), str(comfyui_dir)], cwd=comfyui_dir,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_comfyui_loads_the_layout_as_flux_with_flow_sampling(flux_result):
    assert flux_result["base_model"] == "Flux" and "CONST" in flux_result["model_sampling"]
    assert flux_result["family"] == "Flux" and flux_result["default_site"] == "double_blocks.1.output"


def test_capture_records_the_image_tokens_of_the_site(flux_result):
    assert flux_result["trajectory_shape"] == [4, 4, 16, 128]  # 4 samples, 4 steps, 4x4 tokens, hidden 128
    assert flux_result["trajectory_site"] == flux_result["fingerprint_site"] == "single_blocks.1.output"
    assert flux_result["timesteps"] == pytest.approx([1000, 750, 500, 250])  # hspace's flow timesteps: 1000 sigma
    assert flux_result["capture_is_plain_sampling"]


def test_pca_direction_carries_the_site_and_apply_hooks_it(flux_result):
    assert flux_result["direction_site"] == "single_blocks.1.output"
    assert flux_result["direction_shape"] == [4, 16, 128]
    assert flux_result["replacements"] == [["single_block", 1]]
    assert "hook site" in flux_result["other_site_refused"]


@pytest.mark.parametrize("sampler", ["", "asyrp_"])
def test_zero_direction_is_bitwise_plain_and_a_direction_changes_the_output(flux_result, sampler):
    assert flux_result[f"{sampler}zero_is_bitwise_plain"]
    assert flux_result[f"{sampler}edit_change"] > 1e-2


def test_strength_sweep_runs(flux_result):
    assert flux_result["sweep_images"] == [3, 8, 8, 3]
