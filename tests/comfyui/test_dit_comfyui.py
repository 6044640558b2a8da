"""The embedded DiT in a real ComfyUI (needs COMFYUI_PATH): loaded by the pack's loader node as a flow-matching
MODEL, sampled by ComfyUI's KSampler like the library samples it, and edited by the pack's nodes through
patches_replace["dit"]. tests/comfyui/dit_check.py runs in ComfyUI's Python and reports what is checked here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def result(comfyui_dir) -> dict:
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([python, str(HERE / "dit_check.py"), str(comfyui_dir)], cwd=comfyui_dir, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_loader_gives_a_flow_model_receiving_1000_sigma(result):
    assert result["base_model"] == result["family"] == "PixelFlowDiT"
    assert "CONST" in result["model_sampling"] and "ModelSamplingDiscreteFlow" in result["model_sampling"]
    assert result["default_site"] == "transformer_blocks.2.output" and result["token_dim"] == 96
    assert result["calls"] == 20 and result["timestep_minus_1000_sigma"] < 1e-4  # as the DiT was trained


def test_ksampler_samples_the_digits_the_library_samples(result):
    """euler + simple on ComfyUI's flow sampling = the library's flow DDIM on linspace(1, 0, N + 1)."""
    assert result["simple_sigmas_vs_library"] < 1e-6
    assert result["ksampler_batch"] == [4, 1, 16, 16]
    assert result["ksampler_vs_library"] < 1e-4 and result["ksampler_vs_pipeline_capture"] < 1e-4
    assert result["digits"][0] == result["digits"][1]


def test_capture_pca_and_asyrp_edit(result):
    assert result["trajectory_shape"] == [8, 20, 64, 96]  # 8 samples, 20 steps, 8x8 tokens of width 96
    assert result["trajectory_site"] == "transformer_blocks.2.output" and result["fingerprint_is_librarys"]
    assert result["replacements"] == [["double_block", 2]]
    assert result["zero_is_bitwise_plain"]
    assert result["edit_change"] > 1e-2


def test_directions_go_both_ways_with_the_library(result):
    # a ComfyUI PCA direction edits every step alike in HSpacePipeline.edit and the Asyrp Sampler (t_edit 0)
    assert result["library_edit_change"] > 1e-2 and result["edit_vs_library"] < 1e-4
    assert result["library_direction_change"] > 1e-2  # a library direction, accepted by Apply Direction


def test_jacobian_directions_and_pullback_refused(result):
    jacobian = result["jacobian"]
    assert jacobian["count"] == 2 and jacobian["site"] == "transformer_blocks.1.output"
    assert jacobian["shape"] == [3, 64, 96] and jacobian["norm"] > 0
    assert "PixelFlowDiT" in result["pullback_refused"]
