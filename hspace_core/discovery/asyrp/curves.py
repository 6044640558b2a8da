"""Asyrp's editing and quality-deficiency curves along a DDIM inversion, and its rules for t_edit and t_boost
(ALGORITHMS.md §1.6)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from ...errors import HSpaceError

Callback = Callable[[dict[str, Any]], None]
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _curve_points(curve: Mapping[float, float] | tuple[Sequence[float], Sequence[float]]) -> list[tuple[float, float]]:
    if isinstance(curve, Mapping):
        points = [(float(t), float(v)) for t, v in curve.items()]
    else:
        timesteps, values = curve
        timesteps, values = torch.as_tensor(timesteps).flatten().tolist(), torch.as_tensor(values).flatten().tolist()
        if len(timesteps) != len(values):
            raise HSpaceError(f"one value per timestep expected, got {len(timesteps)} timesteps and "
                              f"{len(values)} values")
        points = list(zip(map(float, timesteps), map(float, values)))
    if not points:
        raise HSpaceError("an empty curve came: at least one (timestep, value) pair is needed")
    if any(math.isnan(v) for _, v in points):
        raise HSpaceError("the curve contains NaN values")
    return sorted(points)


def _first_crossing(curve, threshold: float, what: str) -> float:
    for t, value in _curve_points(curve):
        if value >= threshold:
            return t
    raise HSpaceError(f"the {what} curve never reaches {threshold:.4g} (its maximum is "
                      f"{max(v for _, v in _curve_points(curve)):.4g}); choose the timestep by hand")


def select_t_edit(curve: Mapping[float, float] | tuple[Sequence[float], Sequence[float]], text_cos: float,
                  base: float = 0.33) -> float:
    """Asyrp's t_edit: the first timestep, going up from t = 0, where the editing-strength curve
    distance(P_t, x0) reaches ``base · text_cos`` (official ``set_t_edit_t_addnoise``; LPIPS-AlexNet units).

    ``curve`` maps timesteps to mean distances (a dict or a (timesteps, values) pair, any order). A lower text
    cosine (a larger semantic change) gives a lower threshold, so a longer editing interval.
    """
    return _first_crossing(curve, base * text_cos, "editing-strength")


def select_t_boost(curve_x: Mapping[float, float] | tuple[Sequence[float], Sequence[float]],
                   thr: float = 1.2) -> float:
    """Asyrp's t_boost: the first timestep, going up from t = 0, where distance(x_t, x0) reaches ``thr``
    (1.2 with ``--add_noise_from_xt``, as the README's scripts pass it)."""
    return _first_crossing(curve_x, thr, "quality-deficiency")


def pixel_rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The offline default distance: per-image root-mean-square difference of images in [-1, 1], ``[B]``.

    Not perceptual: Asyrp's thresholds (0.33, 1.2) are in LPIPS-AlexNet units and must be re-chosen for it
    (the curves themselves are still monotone in t and comparable across datasets).
    """
    return (a - b).double().pow(2).flatten(1).mean(1).sqrt()


def lpips_distance(net: str = "alex") -> Distance:
    """LPIPS (Zhang et al. 2018) from the optional ``lpips`` package, for images in [-1, 1].

    Needs that package and its backbone weights available offline; raises :class:`HSpaceError` otherwise.
    """
    try:
        import lpips
    except ImportError as error:
        raise HSpaceError("LPIPS needs the optional package lpips (pip install lpips); "
                          "pixel_rms_distance is the offline default") from error
    try:
        model = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)
    except Exception as error:  # the backbone download fails offline
        raise HSpaceError(f"could not build LPIPS-{net} (are its weights available offline?): {error}") from error

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(a.float(), b.float()).flatten().double()

    return distance


@dataclass
class EditingCurves:
    """Mean distance curves along a DDIM inversion, ascending in t (Asyrp ``compute_lpips_distance``).

    Attributes:
        timesteps: ``[S]``; x0_distance: mean distance(P_t, x0) (editing strength ξ_t);
        xt_distance: mean distance(x_t, x0) (quality deficiency γ_t, x_t the noisy image
        sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·ε); the ``*_std`` over images.
    """

    timesteps: torch.Tensor
    x0_distance: torch.Tensor
    xt_distance: torch.Tensor
    x0_distance_std: torch.Tensor
    xt_distance_std: torch.Tensor

    def t_edit(self, text_cos: float, base: float = 0.33) -> float:
        return select_t_edit((self.timesteps, self.x0_distance), text_cos, base)

    def t_boost(self, thr: float = 1.2) -> float:
        return select_t_boost((self.timesteps, self.xt_distance), thr)


def editing_curves(denoiser: Any, images: torch.Tensor, inversion_sigmas: torch.Tensor,
                   distance: Distance | None = None, batch_size: int = 8,
                   callback: Callback | None = None) -> EditingCurves:
    """Asyrp's distance curves: DDIM-invert ``images`` along the increasing ``inversion_sigmas`` and record, at
    every step, distance(P_t, x0) and distance(x_t, x0), averaged over the images.

    Asyrp uses 100 images, 1000 inversion steps and LPIPS-AlexNet (:func:`lpips_distance`); the default here
    is :func:`pixel_rms_distance`, which works offline. Uses the engine's ``invert_ddim``.

    Args:
        denoiser: a k-diffusion denoiser with ``schedule`` (a :class:`DiffusersDenoiser`).
        images: ``[N, C, H, W]`` in [-1, 1]; inversion_sigmas: increasing, positive.
        callback: ``{"batch", "batches"}`` before each batch; raise to stop.
    """
    from ...samplers import invert_ddim

    if images.ndim != 4 or images.shape[0] == 0:
        raise HSpaceError(f"images [N, C, H, W] expected, got {tuple(images.shape)}")
    distance = distance or pixel_rms_distance
    sigmas = torch.as_tensor(inversion_sigmas, dtype=torch.float64).flatten()
    x0_rows, xt_rows = [], []
    batches = list(images.split(batch_size))
    for b, batch in enumerate(batches):
        if callback is not None:
            callback({"batch": b, "batches": len(batches)})
        x0_step, xt_step = [], []

        def record(info: dict[str, Any]) -> None:
            sigma = float(info["sigma"])
            noisy = info["x"] / math.sqrt(1 + sigma ** 2)  # x_t = sqrt(alpha_bar) * x
            x0_step.append(distance(info["denoised"], batch))
            xt_step.append(distance(noisy, batch))

        invert_ddim(denoiser, batch, sigmas, callback=record, disable=True)
        x0_rows.append(torch.stack(x0_step, 1))
        xt_rows.append(torch.stack(xt_step, 1))
    x0_all, xt_all = torch.cat(x0_rows), torch.cat(xt_rows)  # [N, S-1]
    timesteps = denoiser.schedule.timestep(sigmas[:-1])
    spread = (lambda d: d.std(0)) if x0_all.shape[0] > 1 else (lambda d: torch.zeros_like(d[0]))
    return EditingCurves(timesteps, x0_all.mean(0), xt_all.mean(0), spread(x0_all), spread(xt_all))
