"""Jacobian products on a ComfyUI UNet whose active attention has no double backward (needs COMFYUI_PATH)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_jacobian_path_switches_to_pytorch_attention(comfyui_dir):
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([python, str(HERE / "attention_switch_check.py"), str(comfyui_dir)], cwd=comfyui_dir,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "switched_reverse" not in result:  # this ComfyUI has no per-model attention override (0.19.3)
        assert "--use-pytorch-cross-attention" in result["refused"]  # refused before any product runs
        return
    for mode in ("switched_reverse", "switched_forward"):
        assert result[mode] == pytest.approx(result["reference"], rel=1e-5), mode
    # without the switch, torch.func differentiates through the once-differentiable backward as if it were
    # constant: the products run and the basis is silently wrong
    assert result["unswitched_reverse"] != pytest.approx(result["reference"], rel=1e-3)
