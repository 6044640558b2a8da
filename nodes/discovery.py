"""Discovery nodes: PCA, supervised and image-specific Jacobian directions (Haas et al.), Park et al.'s
pullback edit."""
from __future__ import annotations

from typing import Any

import torch

from hspace_core.denoisers import DiffusersDenoiser
from hspace_core.direction import Direction
from hspace_core.discovery.asyrp import DeltaBlock, DirectionalCLIPLoss, global_delta_h, load_clip, train_delta_block
from hspace_core.discovery.jacobian import trajectory_jacobian_directions
from hspace_core.discovery.pca import METHODS as PCA_METHODS
from hspace_core.discovery.pca import pca_directions
from hspace_core.discovery.pullback import encoder_function, pullback_basis, x_space_guidance
from hspace_core.discovery.supervised import linear_probe_direction, mean_difference, supervised_direction
from hspace_core.embedded import load_evaluator
from hspace_core.errors import HSpaceError
from hspace_core.samplers import sample_asyrp, sample_ddim

from . import _inputs, _sampling, comfy_adapter
from ._denoisers import autograd_denoiser
from ._types import DIRECTION, DirectionSet, NoiseRecord, TrajectoryValue, first_chunk, h_source, in_memory

CATEGORY = "hspace/discovery"


def spectrum_text(ratios: list[float]) -> str:
    return "\n".join(f"PC{i}: {100 * r:.2f}% of the variance" for i, r in enumerate(ratios))


class HSpacePCA:
    """Principal directions of captured h (Haas et al. 2024): one PCA per timestep (their default) or over all
    steps at once. Outputs the set of the top components, largest first, and their share of the variance."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "STRING")
    RETURN_NAMES = ("directions", "spectrum")
    FUNCTION = "discover"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "trajectory": _inputs.trajectory("captured h of many samples (Capture h)"),
            "num_components": ("INT", {"default": 10, "min": 1, "max": 1000,
                                       "tooltip": "how many components to keep (at most samples - 1)"}),
            "per_timestep": ("BOOLEAN", {"default": True, "tooltip": "one PCA per step (Haas's default) instead "
                                                                     "of one over all steps concatenated"}),
            "scaled": ("BOOLEAN", {"default": True, "tooltip": "scale each component by its standard deviation, "
                                                               "so strength is in std units (Haas)"}),
            "method": (list(PCA_METHODS), {"tooltip": "auto: Gram or SVD in memory; for a capture on disk, the "
                                                      "streaming covariance or randomized route"}),
        }}

    def discover(self, trajectory: TrajectoryValue, num_components: int, per_timestep: bool, scaled: bool,
                 method: str) -> dict[str, Any]:
        result = pca_directions(h_source(trajectory), num_components, per_timestep=per_timestep, method=method)
        first = first_chunk(trajectory)
        meta = {"fingerprint": first.meta.get("fingerprint")}
        directions = [result.to_direction(i, first.timesteps.tolist(), scaled, meta)
                      for i in range(result.num_components)]
        ratios = result.explained_variance_ratio.mean(0).tolist()
        return {"ui": {"hspace_spectrum": [{"explained_variance_ratio": ratios}]},
                "result": (directions, spectrum_text(ratios))}


class HSpaceSupervisedDirection:
    """A direction from labelled examples (Haas et al. 2024): mean h of the positives minus mean h of the negatives
    at every step, or the normal of a logistic-regression boundary between them (unit norm). Positives and negatives
    are trajectories of generated samples (Capture h) or of inverted real images (Invert Image), same schedule."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("direction",)
    FUNCTION = "discover"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "positive": _inputs.trajectory("h of examples that have the attribute"),
            "negative": _inputs.trajectory("h of examples without it (paired or not)"),
            "method": (["mean_difference", "linear_probe"], {
                "tooltip": "mean_difference: Haas et al.; linear_probe: unit normal of a logistic-regression "
                           "boundary"}),
        }}

    def discover(self, positive: TrajectoryValue, negative: TrajectoryValue, method: str) -> tuple[DirectionSet]:
        positive, negative = in_memory(positive), in_memory(negative)
        if positive.num_steps != negative.num_steps or not torch.allclose(positive.timesteps, negative.timesteps):
            raise HSpaceError(f"positive and negative trajectories must share their steps: timesteps "
                              f"{positive.timesteps.tolist()} and {negative.timesteps.tolist()}")
        find = mean_difference if method == "mean_difference" else linear_probe_direction
        meta = {"method": f"supervised:{method}", "num_samples": positive.num_samples + negative.num_samples,
                "fingerprint": positive.meta.get("fingerprint")}
        return ([Direction(find(positive.h, negative.h), positive.timesteps.tolist(), meta)],)


class HSpaceDigitClassifierDirection:
    """Haas et al.'s classifier-annotated direction, on the embedded digit model: score the captured samples with the
    shipped digit classifier (probability of `digit`) and take the mean h of the k best scored minus that of the k
    worst. Connect both outputs of Capture h (on the embedded model)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "STRING")
    RETURN_NAMES = ("direction", "scores")
    FUNCTION = "discover"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "trajectory": _inputs.trajectory("captured h of generated digits (Capture h on the embedded model)"),
            "samples": _inputs.latent("the samples output of the same Capture h"),
            "digit": ([str(d) for d in range(10)], {"tooltip": "the attribute: the classifier's probability of it"}),
            "k": ("INT", {"default": 16, "min": 1, "max": 50000,
                          "tooltip": "how many top and bottom scored samples (Haas: 100 of 10,000)"}),
        }}

    def discover(self, trajectory: TrajectoryValue, samples: dict[str, Any], digit: str,
                 k: int) -> tuple[DirectionSet, str]:
        trajectory = in_memory(trajectory)
        images = samples["samples"]
        if images.shape[0] != trajectory.num_samples or tuple(images.shape[1:]) != (1, 16, 16):
            raise HSpaceError(f"{trajectory.num_samples} embedded-model samples [N, 1, 16, 16] expected (the samples "
                              f"of the same Capture h), got shape {list(images.shape)}")
        with torch.no_grad():
            scores = load_evaluator()(images.float()).softmax(dim=1)[:, int(digit)]
        meta = {"method": f"supervised:classifier(digit {digit})", "num_samples": 2 * k,
                "fingerprint": trajectory.meta.get("fingerprint")}
        delta = supervised_direction(trajectory.h, scores, k)
        ranked = scores.sort(descending=True).values
        text = (f"p({digit}): top-{k} mean {float(ranked[:k].mean()):.3f}, "
                f"bottom-{k} mean {float(ranked[-k:].mean()):.3f}")
        return [Direction(delta, trajectory.timesteps.tolist(), meta)], text


def _ddim_recording_x(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                      callback: Any = None, disable: bool | None = None, **options: Any) -> tuple:
    """sample_ddim that also returns x at every step, ``[S, B, C, H, W]``."""
    xs: list[torch.Tensor] = []

    def record(info: dict[str, Any]) -> None:
        xs.append(info["x"].detach().clone())
        if callback is not None:
            callback(info)

    return sample_ddim(model, x, sigmas, extra_args, record, disable, **options), torch.stack(xs)


def _unedited_run(model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], seed: int,
                  noise: NoiseRecord | None, positive: list | None,
                  unique_id: str | None) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """DDIM of one sample (from seed noise, or from an inversion's record): (LATENT, x per step, sigmas)."""
    if noise is None:
        start, options = None, {}
        latent = {**latent_image, "samples": latent_image["samples"][:1]}
        start_noise = _sampling.random_noise(latent, seed, model)
    else:
        start, options, sigmas = noise.x_T[:1], {"eta": noise.eta, "noises": noise.noises}, noise.sigmas
        latent, start_noise = {"samples": torch.zeros_like(start)}, None
    # cfg 1: the negative is never evaluated, the positive stands in for it
    samples, (_, xs) = _sampling.run_sampler(model, _ddim_recording_x, sigmas, latent, positive, positive, 1.0,
                                             start_noise, seed, start=start, node_id=unique_id, options=options)
    return samples, xs[:, 0], sigmas


class HSpaceJacobianDirections:
    """Image-specific directions (Haas et al. 2024): the top right singular vectors of J = d eps / d h at every step
    of one sample's DDIM run; the vectors found at step_index are used at every step, scaled by each step's
    singular value. Samples the latent with the seed, or regenerates an inverted image from its noise record."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "LATENT")
    RETURN_NAMES = ("directions", "samples")
    FUNCTION = "discover"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": _inputs.model(),
                "sigmas": _inputs.sigmas(),
                "latent_image": _inputs.latent("an empty latent of batch size 1 (ignored with a noise record)"),
                "seed": _inputs.seed(),
                "num_vectors": ("INT", {"default": 3, "min": 1, "max": 64,
                                        "tooltip": "how many singular vectors (directions) to find"}),
                "step_index": ("INT", {"default": 0, "min": 0, "max": 1000,
                                       "tooltip": "the step whose vectors are used at every step (0 = first)"}),
                "method": (["subspace", "power"], {"tooltip": "subspace: block power iteration; power: the paper's "
                                                              "one-vector-at-a-time iteration with deflation"}),
                "max_iter": ("INT", {"default": 50, "min": 1, "max": 1000,
                                     "tooltip": "iteration limit of the solver at each step"}),
            },
            "optional": {"noise": _inputs.noise_record("an inversion's record: find directions for that real image"),
                         "positive": _inputs.conditioning("positive")},
            "hidden": _inputs.HIDDEN,
        }

    def discover(self, model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], seed: int, num_vectors: int,
                 step_index: int, method: str, max_iter: int, noise: NoiseRecord | None = None,
                 positive: list | None = None, unique_id: str | None = None) -> tuple[DirectionSet, dict[str, Any]]:
        samples, xs, sigmas = _unedited_run(model, sigmas, latent_image, seed, noise, positive, unique_id)
        denoiser = autograd_denoiser(model, positive)
        progress = comfy_adapter.progress_callback(xs.shape[0], unique_id)
        with comfy_adapter.autograd_enabled():
            result = trajectory_jacobian_directions(denoiser, comfy_adapter.grad_ready(xs), sigmas[:-1],
                                                    num_vectors, method=method, callback=progress, max_iter=max_iter)
        timesteps = comfy_adapter.sigma_to_timestep(model, sigmas[:-1]).tolist()
        meta = {"method": "jacobian", "step_index": step_index, "solver": method,
                "fingerprint": _sampling.fingerprint(model, tuple(result.right.shape[2:]))}
        directions = [Direction(result.broadcast(step_index, k), timesteps, {**meta, "component": k})
                      for k in range(result.right.shape[1])]
        return directions, samples


class HSpacePullbackEdit:
    """Park et al. 2023: run one sample (or an inverted image) to t_edit, find the local basis of x-space from the
    Jacobian of the encoder x -> h there, move along basis vector `component` with x-space guidance, and finish
    with DDIM (stochastic below t_boost). Also outputs the h-space tangent vectors of the basis as directions."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", DIRECTION, "STRING")
    RETURN_NAMES = ("samples", "h_directions", "singular_values")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": _inputs.model(),
                "sigmas": _inputs.sigmas(),
                "latent_image": _inputs.latent("an empty latent of batch size 1 (ignored with a noise record)"),
                "seed": _inputs.seed(),
                "t_edit": _inputs.timestep(800, "the timestep at which the basis is found and the edit made"),
                "num_vectors": ("INT", {"default": 3, "min": 1, "max": 256,
                                        "tooltip": "size n of the local basis (Park: 2 for editing)"}),
                "component": ("INT", {"default": 0, "min": 0, "max": 255,
                                      "tooltip": "which basis vector to move along (0 = largest singular value)"}),
                "sign": (["+", "-"], {"tooltip": "direction along the basis vector"}),
                "guidance_strength": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 100.0, "step": 0.01,
                                                "tooltip": "lambda of x-space guidance (Park: 0.1 at T, more later)"}),
                "guidance_steps": ("INT", {"default": 16, "min": 0, "max": 256,
                                           "tooltip": "K, the x-space guidance iterations (Park: 16)"}),
                "t_boost": _inputs.timestep(0, "stochastic (eta 1) steps below t_boost after the edit; 0 = off"),
                "max_iter": ("INT", {"default": 50, "min": 1, "max": 1000,
                                     "tooltip": "iteration limit of the basis computation"}),
            },
            "optional": {"noise": _inputs.noise_record("an inversion's record: edit that real image"),
                         "positive": _inputs.conditioning("positive (the edit prompt)")},
            "hidden": _inputs.HIDDEN,
        }

    def edit(self, model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], seed: int, t_edit: int,
             num_vectors: int, component: int, sign: str, guidance_strength: float, guidance_steps: int,
             t_boost: int, max_iter: int, noise: NoiseRecord | None = None, positive: list | None = None,
             unique_id: str | None = None) -> tuple[dict[str, Any], DirectionSet, str]:
        if component >= num_vectors:
            raise HSpaceError(f"component {component} needs a basis of more than {num_vectors} vectors")
        _, xs, sigmas = _unedited_run(model, sigmas, latent_image, seed, noise, positive, unique_id)
        timesteps = comfy_adapter.sigma_to_timestep(model, sigmas[:-1])
        step = int((timesteps <= t_edit).nonzero()[0]) if bool((timesteps <= t_edit).any()) else len(timesteps) - 1
        sigma = float(sigmas[step])
        denoiser = autograd_denoiser(model, positive)
        with comfy_adapter.autograd_enabled():
            x = comfy_adapter.grad_ready(xs[step])
            basis = pullback_basis(encoder_function(denoiser, sigma), x, num_vectors, max_iter=max_iter,
                                   callback=comfy_adapter.progress_callback(max_iter, unique_id))
            v = basis.x_basis[component] * (1.0 if sign == "+" else -1.0)
            edited = x_space_guidance(lambda z: denoiser.eps(z, sigma), x, v, strength=guidance_strength,
                                      num_iters=guidance_steps)[-1]
        options = {**_sampling.asyrp_options(model, "symmetric", 999, t_boost), "eta_boost": 1.0, "seed": seed}
        if noise is not None and noise.noises is not None:
            options.update(eta=noise.eta, eta_boost=noise.eta, noises=noise.noises[step:])
        start = edited.detach().unsqueeze(0)
        samples, _ = _sampling.run_sampler(model, sample_asyrp, sigmas[step:], {"samples": torch.zeros_like(start)},
                                           positive, positive, 1.0, start=start, node_id=unique_id, options=options)
        meta = {"method": "pullback", "timestep": float(timesteps[step]),
                "fingerprint": _sampling.fingerprint(model, tuple(basis.h_basis.shape[1:]))}
        directions = [Direction(u, None, {**meta, "component": i}) for i, u in enumerate(basis.h_basis)]
        values = ", ".join(f"{float(s):.4g}" for s in basis.singular_values)
        return samples, directions, f"t = {float(timesteps[step]):.0f}: singular values {values}"


class HSpaceAsyrpTrain:
    """Asyrp (Kwon et al. 2023): train the implicit function f_t (a small block on h) with the directional CLIP loss
    from source_text to target_text on DDIM-inverted images, then average its output into a global direction for
    Apply Direction + Asyrp Sampler. Pixel DDPMs (diffusers UNets) only; needs transformers and local CLIP weights."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "STRING")
    RETURN_NAMES = ("direction", "log")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": _inputs.model("a pixel DDPM from the hspace loader (f_t uses its time embedding)"),
                "noise": _inputs.noise_record("Invert Image (ddim) of the training images: x_T and the grid"),
                "source_text": ("STRING", {"default": "a digit", "tooltip": "what the images show now"}),
                "target_text": ("STRING", {"default": "a bold digit", "tooltip": "what they should show"}),
                "clip_model": ("STRING", {"default": "openai/clip-vit-base-patch16",
                                          "tooltip": "a local CLIP folder or an already cached model name "
                                                     "(nothing is downloaded)"}),
                "t_edit": _inputs.timestep(500, "train and edit at timesteps >= t_edit"),
                "epochs": ("INT", {"default": 1, "min": 1, "max": 100, "tooltip": "passes over the images"}),
                "lr": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.01,
                                 "tooltip": "SGD learning rate (Asyrp: 0.5)"}),
                "lambda_l1": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                        "tooltip": "weight of the L1 term that keeps the rest of the image"}),
                "per_timestep": ("BOOLEAN", {"default": False, "tooltip": "keep one delta h per edited timestep "
                                                                          "instead of their mean"}),
            },
            "hidden": _inputs.HIDDEN,
        }

    def train(self, model: Any, noise: NoiseRecord, source_text: str, target_text: str, clip_model: str,
              t_edit: int, epochs: int, lr: float, lambda_l1: float, per_timestep: bool,
              unique_id: str | None = None) -> tuple[DirectionSet, str]:
        denoiser = autograd_denoiser(model)
        if not isinstance(denoiser, DiffusersDenoiser):
            raise HSpaceError("Asyrp training needs a pixel DDPM (a diffusers UNet from the hspace loader)")
        sigma_edit = float(comfy_adapter.timestep_to_sigma(model, t_edit))
        total = epochs * noise.x_T.shape[0] * (len(noise.sigmas) - 1)
        with comfy_adapter.autograd_enabled():  # CLIP and f_t built here hold ordinary (not inference) tensors
            loss = DirectionalCLIPLoss(*load_clip(clip_model), source_text, target_text)
            block = DeltaBlock.for_unet(denoiser.unet)
            x_start = comfy_adapter.grad_ready(noise.x_T)
            history = train_delta_block(denoiser, block, x_start, noise.sigmas, sigma_edit, loss, source="reference",
                                        epochs=epochs, lr=lr, lambda_l1=lambda_l1,
                                        callback=comfy_adapter.progress_callback(total, unique_id))
            direction = global_delta_h(denoiser, block, x_start, noise.sigmas, sigma_edit, per_timestep)
        direction.meta.update(source_text=source_text, target_text=target_text,
                              fingerprint=_sampling.fingerprint(model, direction.h_shape))
        log = f"{len(history)} steps, loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}"
        return [direction], log


NODE_CLASSES = (HSpacePCA, HSpaceSupervisedDirection, HSpaceDigitClassifierDirection, HSpaceJacobianDirections,
                HSpacePullbackEdit, HSpaceAsyrpTrain)
DISPLAY_NAMES = {"HSpacePCA": "PCA Directions (hspace)", "HSpaceSupervisedDirection": "Supervised Direction (hspace)",
                 "HSpaceDigitClassifierDirection": "Digit Classifier Direction (hspace)",
                 "HSpaceJacobianDirections": "Jacobian Directions (hspace)",
                 "HSpacePullbackEdit": "Pullback Edit (hspace)", "HSpaceAsyrpTrain": "Asyrp Train (hspace)"}
