"""The ComfyUI adapter against a real ComfyUI (skipped unless COMFYUI_PATH is set; see conftest.py)."""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import torch

from hspace_core.direction import DEFAULT_REFERENCE_STEPS

_tags = itertools.count()

REPO = Path(__file__).resolve().parents[2]
H_SHAPE = "320,8,8"  # the tiny UNet's bottleneck at 64x64 px (8x8 latents, one level: no downsampling)


def _tag(name: str) -> str:
    return f"{name}_{next(_tags)}"


def sd_prompt(checkpoint: str, *, patch: dict | None = None, cfg: float = 2.0, steps: int = 3, batch: int = 1,
              seed: int = 7, sampler: str = "euler", prefix: str = "hspace_test") -> dict:
    """CheckpointLoaderSimple -> (probe patch) -> KSampler -> SaveLatent, in API format."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": prefix}},
    }
    if patch is not None:
        prompt["7"] = {"class_type": "HSpaceProbePatch", "inputs": {
            "model": ["1", 0], "strength": 0.0, "seed": 0, "rows": "cond", "site": "auto", "h_shape": H_SHAPE,
            "tag": "probe", **patch}}
        prompt["5"]["inputs"]["model"] = ["7", 0]
    return prompt


def run_latent(comfy, prompt: dict, node: str = "6") -> torch.Tensor:
    outputs = comfy.client.run(prompt)
    return comfy.client.latent(outputs[node]["latents"][0])


def test_server_lists_core_and_probe_nodes(comfy):
    info = comfy.client.object_info()
    for name in ("KSampler", "SamplerCustom", "CheckpointLoaderSimple", "HSpaceProbePatch",
                 "HSpaceProbe_HSpacePixelModelLoader"):
        assert name in info, f"{name} missing from /object_info"
    assert comfy.checkpoint in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]


def test_pack_loads(comfy):
    if not (REPO / "__init__.py").is_file():
        pytest.skip("the pack has no __init__.py yet")
    log = comfy.log_text()
    assert "IMPORT FAILED" not in log or str(REPO) not in log.split("IMPORT FAILED", 1)[1].splitlines()[0], log[-3000:]
    info = comfy.client.object_info()
    ours = {name for name, v in info.items() if v.get("python_module") == f"custom_nodes.{comfy.pack_name}"}
    assert ours, "none of the pack's nodes is listed in /object_info"
    missing = {"HSpacePixelModelLoader", "HSpacePixelLatentToImage", "HSpaceImageToPixelLatent",
               "HSpaceUnconditional"} - ours
    assert not missing, f"nodes/pixel_nodes.py's nodes are not registered by the pack: {sorted(missing)}"


def test_patch_captures_h_from_ksampler(comfy):
    tag = _tag("capture")
    run_latent(comfy, sd_prompt(comfy.checkpoint, patch={"tag": tag}, batch=2, steps=3, cfg=2.0))
    records = comfy.probe_records(tag)
    assert len(records) == 3, records  # one batched cond+uncond call per step
    for rec in records:
        assert rec["shape"] == [4, 320, 8, 8]  # 2 images x (cond, uncond)
        assert rec["captured_shape"] == [4, 320, 8, 8]
        assert sorted(rec["cond_or_uncond"]) == [0, 1]
        assert rec["inference"], "ComfyUI runs the sampler in inference mode"
    timesteps = [rec["timestep"] for rec in records]
    assert timesteps == sorted(timesteps, reverse=True) and timesteps[0] == pytest.approx(999, abs=1)
    assert all(rec["sigma"] > 0 for rec in records)


def test_zero_direction_is_bitwise_identical(comfy):
    plain = run_latent(comfy, sd_prompt(comfy.checkpoint, prefix="plain"))
    patched = run_latent(comfy, sd_prompt(comfy.checkpoint, patch={"strength": 0.0, "tag": _tag("zero")},
                                          prefix="zero"))
    assert torch.isfinite(plain).all()
    assert torch.equal(plain, patched)


def test_nonzero_direction_changes_the_output(comfy):
    plain = run_latent(comfy, sd_prompt(comfy.checkpoint, prefix="plain"))
    tag = _tag("shift")
    edited = run_latent(comfy, sd_prompt(comfy.checkpoint, patch={"strength": 50.0, "tag": tag}, prefix="shift"))
    assert torch.isfinite(edited).all()
    assert (edited - plain).abs().max() > 1e-3
    assert any(max(rec["row_shift"]) == pytest.approx(50.0, rel=1e-3) for rec in comfy.probe_records(tag))


@pytest.mark.parametrize("rows", ["cond", "uncond", "both"])
def test_rows_follow_cond_or_uncond(comfy, rows):
    tag = _tag(f"rows_{rows}")
    run_latent(comfy, sd_prompt(comfy.checkpoint, patch={"strength": 10.0, "rows": rows, "tag": tag}, batch=2))
    records = comfy.probe_records(tag)
    assert records
    for rec in records:
        chunk = rec["shape"][0] // len(rec["cond_or_uncond"])
        for i, label in enumerate(rec["cond_or_uncond"]):
            shifted = rows == "both" or (rows == "cond") == (label == 0)
            for norm in rec["row_shift"][i * chunk:(i + 1) * chunk]:
                assert (norm == pytest.approx(10.0, rel=1e-3)) if shifted else norm == 0.0, (rows, rec)


def test_cfg_one_runs_only_the_cond_rows(comfy):
    tag = _tag("cfg1")
    run_latent(comfy, sd_prompt(comfy.checkpoint, patch={"strength": 1.0, "tag": tag}, cfg=1.0))
    assert [rec["cond_or_uncond"] for rec in comfy.probe_records(tag)] == [[0]] * 3


def test_output_block_fallback_equals_middle_patch(comfy):
    tag = _tag("out0")
    fallback = run_latent(comfy, sd_prompt(comfy.checkpoint, prefix="out0", patch={
        "strength": 30.0, "site": "output0", "tag": tag}))
    assert len(comfy.probe_records(tag)) == 3  # acted once per call: only at block ("output", 0)
    auto = run_latent(comfy, sd_prompt(comfy.checkpoint, prefix="auto", patch={
        "strength": 30.0, "site": "auto", "tag": _tag("auto")}))
    assert torch.equal(auto, fallback)
    middle_prompt = sd_prompt(comfy.checkpoint, prefix="mid", patch={"strength": 30.0, "site": "middle",
                                                                     "tag": _tag("mid")})
    if comfy.has_middle_patch:
        assert torch.equal(run_latent(comfy, middle_prompt), fallback)
    else:
        with pytest.raises(AssertionError, match="no set_model_middle_block_after_patch"):
            run_latent(comfy, middle_prompt)


def test_hspace_ddim_sampler_matches_comfy_ddim(comfy):
    """hspace_core.sample_ddim wrapped by as_comfy_sampler equals ComfyUI's own ddim on the same sigmas."""
    prompt = sd_prompt(comfy.checkpoint)
    del prompt["5"]
    prompt.update({
        "10": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 4,
                                                           "denoise": 1.0}},
        "11": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "12": {"class_type": "HSpaceProbeDDIMSampler", "inputs": {"eta": 0.0}},
    })
    for node, sampler in (("13", "11"), ("14", "12")):
        prompt[node] = {"class_type": "SamplerCustom", "inputs": {
            "model": ["1", 0], "add_noise": True, "noise_seed": 3, "cfg": 2.0, "positive": ["2", 0],
            "negative": ["3", 0], "sampler": [sampler, 0], "sigmas": ["10", 0], "latent_image": ["4", 0]}}
    prompt["6"]["inputs"]["samples"] = ["13", 0]
    prompt["15"] = {"class_type": "SaveLatent", "inputs": {"samples": ["14", 0], "filename_prefix": "hsddim"}}
    outputs = comfy.client.run(prompt)
    comfy_ddim = comfy.client.latent(outputs["6"]["latents"][0])
    ours = comfy.client.latent(outputs["15"]["latents"][0])
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, comfy_ddim, atol=1e-4, rtol=1e-4)


def custom_prompt(checkpoint: str, sampler: dict, patch: dict | None, cfg: float = 2.0) -> dict:
    """SamplerCustom with a given SAMPLER node on the (optionally probe-patched) tiny checkpoint."""
    prompt = sd_prompt(checkpoint, patch=patch, batch=2)
    model = prompt["5"]["inputs"]["model"]
    del prompt["5"]
    prompt.update({
        "10": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 3,
                                                           "denoise": 1.0}},
        "11": sampler,
        "5": {"class_type": "SamplerCustom", "inputs": {
            "model": model, "add_noise": True, "noise_seed": 4, "cfg": cfg, "positive": ["2", 0],
            "negative": ["3", 0], "sampler": ["11", 0], "sigmas": ["10", 0], "latent_image": ["4", 0]}},
    })
    return prompt


def test_asyrp_sampler_flags_reach_the_patch(comfy):
    """sample_asyrp asks for [unshifted; shifted] rows through transformer_options["hspace"]; the patch obeys."""
    asyrp = {"class_type": "HSpaceProbeAsyrpSampler", "inputs": {"mode": "asymmetric"}}
    ddim = {"class_type": "HSpaceProbeDDIMSampler", "inputs": {"eta": 0.0}}
    plain = run_latent(comfy, custom_prompt(comfy.checkpoint, ddim, None))
    zero = run_latent(comfy, custom_prompt(comfy.checkpoint, asyrp, {"strength": 0.0, "tag": _tag("asy0")}))
    torch.testing.assert_close(zero, plain, atol=1e-4, rtol=1e-4)
    comfy_ddim = run_latent(comfy, custom_prompt(comfy.checkpoint, {"class_type": "KSamplerSelect",
                                                                    "inputs": {"sampler_name": "ddim"}}, None))
    torch.testing.assert_close(zero, comfy_ddim, atol=1e-4, rtol=1e-4)

    tag = _tag("asy")
    edited = run_latent(comfy, custom_prompt(comfy.checkpoint, asyrp, {"strength": 10.0, "rows": "both",
                                                                       "tag": tag}))
    symmetric = run_latent(comfy, custom_prompt(comfy.checkpoint, ddim, {"strength": 10.0, "rows": "both",
                                                                         "tag": _tag("sym")}))
    assert (edited - plain).abs().max() > 1e-3 and (edited - symmetric).abs().max() > 1e-3
    records = comfy.probe_records(tag)
    assert records and all(rec["flags"].get("split") for rec in records), records[:1]
    # per cond/uncond chunk: first half unshifted, second half shifted by the unit direction times 10, scaled
    # to the step count (a global direction is calibrated for 20 steps; this run takes 3)
    expected = 10.0 * DEFAULT_REFERENCE_STEPS / 3
    for rec in records:
        chunk = rec["shape"][0] // len(rec["cond_or_uncond"])
        for i in range(len(rec["cond_or_uncond"])):
            norms = rec["row_shift"][i * chunk:(i + 1) * chunk]
            assert norms[:chunk // 2] == [0.0] * (chunk // 2)
            assert all(n == pytest.approx(expected, rel=1e-3) for n in norms[chunk // 2:])


def test_progress_callback_honours_cancel(comfy):
    """A loop driven by progress_callback stops soon after /interrupt (30 s of work if it did not)."""
    prompt_id = comfy.client.queue_prompt({"1": {"class_type": "HSpaceProbeLongLoop", "inputs": {"steps": 600}}})
    deadline = time.monotonic() + 30
    while prompt_id not in comfy.client.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    started = time.monotonic()
    comfy.client.interrupt()
    with pytest.raises(AssertionError, match="execution_interrupted"):
        comfy.client.wait(prompt_id, timeout_s=60)
    assert time.monotonic() - started < 10


def test_schedule_autograd_and_progress_helpers_on_sd(comfy):
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": comfy.checkpoint}},
              "2": {"class_type": "HSpaceProbeInspect", "inputs": {"model": ["1", 0], "tag": "sd"}}}
    report = json.loads(comfy.client.run(prompt)["2"]["text"][0])
    assert report["inference_mode"] is True
    assert report["prediction_type"] == "epsilon"
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0)
    assert report["alphas_cumprod"] == pytest.approx([float(expected[i]) for i in (0, 499, 999)], rel=1e-5)
    assert report["t_of_sigma_500"] == 500
    assert report["window_0_0.5"][1] == pytest.approx(999, abs=1)
    assert report["progress"] is True
    assert report["copy_is_inference"] is False
    assert report["grad_norm"] > 0


def test_cancel_interrupts_a_long_capture(comfy):
    """Cancel stops the Capture h node mid-run (thousands of samples would take minutes on CPU)."""
    prompt = sd_prompt(comfy.checkpoint)
    del prompt["5"], prompt["6"]
    prompt.update({
        "10": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 10,
                                                           "denoise": 1.0}},
        "11": {"class_type": "HSpaceCaptureH", "inputs": {
            "model": ["1", 0], "sigmas": ["10", 0], "latent_image": ["4", 0], "num_samples": 5000, "seed": 0,
            "cfg": 2.0, "eta": 0.0, "store": "memory", "filename_prefix": "hspace_trajectories/cancel",
            "positive": ["2", 0], "negative": ["3", 0]}},
        "12": {"class_type": "HSpaceSaveTrajectory", "inputs": {"trajectory": ["11", 0],
                                                                "filename_prefix": "hspace_trajectories/cancel"}},
    })
    prompt_id = comfy.client.queue_prompt(prompt)
    deadline = time.monotonic() + 60
    while prompt_id not in comfy.client.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # past model loading, inside the capture loop
    started = time.monotonic()
    comfy.client.interrupt()
    with pytest.raises(AssertionError, match="execution_interrupted"):
        comfy.client.wait(prompt_id, timeout_s=120)
    assert time.monotonic() - started < 15
