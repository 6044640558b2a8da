"""The pack's nodes on tiny random Flux- and SD3-layout models built with ComfyUI's own classes (needs
COMFYUI_PATH).

tests/comfyui/transformer_check.py runs in ComfyUI's Python: Capture h at a block (Flux: a single block; SD3: a
joint block), PCA, Apply Direction (hooked through patches_replace["dit"]), the Asyrp Sampler in flow form,
the Strength Sweep, Jacobian directions (SD3 too), and the attention-output sites (FluxSpace's space).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


SITES = {"flux": ("Flux", "double_blocks.1.output", "single_blocks.1.output", ["single_block", 1]),
         "sd3": ("SD3", "joint_blocks.1.output", "joint_blocks.0.output", ["double_block", 0])}


@pytest.fixture(scope="module", params=sorted(SITES))
def result(request, comfyui_dir) -> dict:
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([python, str(HERE / "transformer_check.py"), str(comfyui_dir), request.param], cwd=comfyui_dir,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "expected": SITES[request.param]}


def test_comfyui_loads_the_layout_with_flow_sampling(result):
    family, default_site, _, _ = result["expected"]
    assert result["base_model"] == family and "CONST" in result["model_sampling"]
    assert result["family"] == family and result["default_site"] == default_site


def test_capture_records_the_image_tokens_of_the_site(result):
    assert result["trajectory_shape"] == [4, 4, 16, 128]  # 4 samples, 4 steps, 4x4 tokens, hidden 128
    assert result["trajectory_site"] == result["fingerprint_site"] == result["expected"][2]
    assert result["timesteps"] == pytest.approx([1000, 750, 500, 250])  # hspace's flow timesteps: 1000 sigma
    assert result["capture_is_plain_sampling"]


def test_pca_direction_carries_the_site_and_apply_hooks_it(result):
    assert result["direction_site"] == result["expected"][2]
    assert result["direction_shape"] == [4, 16, 128]
    assert result["replacements"] == [result["expected"][3]]
    assert "hook site" in result["other_site_refused"]
    supervised = result["supervised"]  # mean difference of two halves of the capture
    assert supervised["site"] == result["expected"][2] and supervised["shape"] == [4, 16, 128]
    assert supervised["replacements"] == [result["expected"][3]]


@pytest.mark.parametrize("sampler", ["", "asyrp_"])
def test_zero_direction_is_bitwise_plain_and_a_direction_changes_the_output(result, sampler):
    assert result[f"{sampler}zero_is_bitwise_plain"]
    assert result[f"{sampler}edit_change"] > 1e-2


def test_strength_sweep_runs(result):
    assert result["sweep_images"] == [3, 8, 8, 3]


def test_inversion_records_the_site_and_edit_friendly_reconstructs(result):
    for method, steps in (("ddim", 9), ("edit_friendly", 10)):  # 10 generation steps; DDIM cannot invert s_1 -> 0
        record = result[f"{method}_inversion"]
        assert record["site"] == result["expected"][2] and record["steps"] == steps
        assert record["x_T_finite"], method  # ComfyUI's CONST inverse noise scaling divides by 1 - sigma = 0
    assert result["edit_friendly_inversion"]["reconstruction_error"] < 1e-4  # exact up to float32 rounding
    assert result["asymmetric_zero_edit_is_bitwise_reconstruction"]


def test_jacobian_directions_at_the_site_and_pullback_refused(result):
    jacobian = result["jacobian"]  # on SD3 too: the replaced joint block runs without torch.utils.checkpoint
    assert jacobian["count"] == 2 and jacobian["site"] == result["expected"][2]
    assert jacobian["shape"] == [3, 16, 128] and jacobian["norm"] > 0  # 3 steps of [tokens, dim], scaled by sigma_1
    assert "UNets" in result["pullback_refused"] and result["expected"][0] in result["pullback_refused"]


def test_an_edit_at_the_default_site(result):  # Flux: a double block, where img holds the image tokens only
    assert result["default_site_change_0"] == 0.0 and result["default_site_change_3"] > 1e-2


def test_attention_sites_see_the_joint_attention_image_tokens_and_edit_them(result):
    """The controller at ``<blocks>.<i>.attn.output`` gets exactly what the block's output projection is given for
    the image tokens (Flux's double blocks: img_attn.proj; single blocks: the attention part of linear2's input;
    MMDiT: x_block.attn.proj), once per model call."""
    for site, out in result["attention"].items():
        assert out["calls"] == 4 and out["shape"] == [4, 16, 128], site  # 4 steps; 2 images x cond, uncond rows
        assert out["equal_to_projection_input"], site
        assert out["change_0"] == 0.0 and out["change_1"] > 1e-2, site
        assert out["asyrp_change_0"] == 0.0 and out["asyrp_change_1"] > 1e-2, site  # the asymmetric step there
        assert out["jacobian"] == {"count": 2, "site": site, "shape": [3, 16, 128]}, site


def test_jacobian_products_agree_with_finite_differences_at_every_kind_of_site(result):
    """At the default site (Flux: a double block, so every single block is in the product, their in-place residual
    adds included) and at the attention sites."""
    for site, out in result["products"].items():
        assert out["jv_norm"] > 0, site
        assert out["jvp_vs_difference"] < 1e-2, (site, out)  # float32 central differences
        assert out["adjoint_mismatch"] < 1e-4, (site, out)
