"""The bottleneck controller: what happens to h, the output at the hook site, on every model call.

h is ``[rows, C, H, W]`` at a UNet's middle block and ``[rows, tokens, dim]`` (image tokens only) at a
transformer site (:mod:`~hspace_core.sites`); the controller works the same on both.

It is framework-free. An adapter (a diffusers forward hook, a ComfyUI middle-block patch) calls it with
h, the model timestep, ComfyUI's ``cond_or_uncond`` chunk labels and the per-call flags a sampler set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from .checks import check_edit_samples, check_number
from .direction import Direction, Trajectory, check_finite, step_scale
from .errors import HSpaceError
from .schedule import in_timestep_window

COND, UNCOND = 0, 1
ROW_CHOICES = ("cond", "uncond", "both")


@dataclass
class EditSpec:
    """One direction and its strength alpha, for every sample of the batch or only the samples in ``samples``
    (indices into the batch of images being sampled), so that one batched run can edit groups differently."""

    direction: Direction
    strength: float = 1.0
    samples: torch.Tensor | Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.direction, Direction):
            raise HSpaceError(f"an edit's direction: a Direction expected, got {type(self.direction).__name__}")
        self.strength = check_number(self.strength, "the edit strength")
        self.samples = check_edit_samples(self.samples)


@dataclass
class FunctionEdit:
    """A per-sample shift Δh = strength · function(h, timestep), evaluated on each sample's own h (Asyrp's f_t at
    inference); it adds to the directions' shift on the same rows and steps. Under the asymmetric step it is scaled
    by ``reference_steps / steps`` like a direction (Asyrp's N_train / N_test; None: no factor)."""

    function: Callable[[torch.Tensor, float], torch.Tensor]
    strength: float = 1.0
    reference_steps: int | None = None


@dataclass
class Capture:
    timestep: float
    sigma: float | None
    cond_or_uncond: tuple[int, ...]
    h: torch.Tensor


class Bottleneck:
    """Capture, shift or replace h.

    Args:
        edits: directions and strengths; their sum is added to h (see :meth:`delta`).
        window: ``(t_end, t_start)``: shift only when ``t_end <= t <= t_start`` (model timesteps), for every edit;
            None = each direction's own edit window (:attr:`Direction.edit_window`; all steps when it has none).
        rows: which rows are shifted: "cond", "uncond" or "both" (an unconditional model has only cond rows).
        capture: record the unshifted h of every call in :attr:`records`.
        functions: per-sample shifts computed from each sample's h (:class:`FunctionEdit`), in the
            controller's window (every step when it has none), on the same rows.

    A sampler tells the controller through its per-call flags how many steps its run takes (``steps``) and
    whether the step is asymmetric (``asymmetric``, or ``split`` for the batched call): the shift is normalised
    to the step count with :meth:`Direction.step_scale`.
    """

    def __init__(self, edits: Iterable[EditSpec] = (), window: tuple[float, float] | None = None,
                 rows: str = "cond", capture: bool = False, functions: Iterable[FunctionEdit] = ()):
        self.edits = list(edits)
        self.functions = list(functions)
        if rows not in ROW_CHOICES:
            raise HSpaceError(f"rows must be one of {ROW_CHOICES}, got {rows!r}")
        if window is not None:
            window = tuple(check_number(t, "the edit window's timesteps") for t in window)
        if window is not None and window[0] > window[1]:
            raise HSpaceError(f"window (t_end, t_start) with t_end <= t_start expected, got {tuple(window)}")
        self.window = window
        self.rows = rows
        self.capture = capture
        self.records: list[Capture] = []
        self.replacement: torch.Tensor | None = None

    def active_edits(self, timestep: float) -> list[EditSpec]:
        """The edits whose window (the controller's, else their direction's) holds this timestep."""
        return [edit for edit in self.edits
                if in_timestep_window(timestep, self.window or edit.direction.edit_window)]

    def active_functions(self, timestep: float) -> list[FunctionEdit]:
        """The per-sample shifts that apply at this timestep (the controller's window; every step without one)."""
        return self.functions if in_timestep_window(timestep, self.window) else []

    def shifts_at(self, timestep: float) -> bool:
        """Whether a call at this model timestep changes h: a replacement is set, a per-sample shift applies, or
        some edit adds a non-zero term (samplers run one plain pass where nothing does; see
        ``samplers.sample_asyrp``)."""
        if self.replacement is not None or self.active_functions(timestep):
            return True
        return any(edit.strength != 0 and (edit.samples is None or len(edit.samples) > 0)
                   and bool(edit.direction.at(timestep).any()) for edit in self.active_edits(timestep))

    def delta(self, timestep: float, h_shape: Sequence[int], num_samples: int = 1, steps: int | None = None,
              asymmetric: bool = False) -> torch.Tensor | None:
        """The shift of each sample at a timestep, ``[num_samples, *h_shape]`` (``[C, H, W]`` at a UNet's middle
        block, ``[tokens, dim]`` at a transformer site), or None when nothing is added.

        Each edit adds ``strength * direction.step_scale(steps, asymmetric) * direction.at(t)``; a sample covered
        by k edits gets the sum of their terms divided by sqrt(k) (Asyrp's multi-attribute rule).
        """
        edits = self.active_edits(timestep)
        if not edits:
            return None
        total = torch.zeros(num_samples, *h_shape)
        count = torch.zeros(num_samples)
        for edit in edits:
            if tuple(edit.direction.h_shape) != tuple(h_shape):
                raise HSpaceError(f"direction of h shape {list(edit.direction.h_shape)} does not fit this model, "
                                  f"whose bottleneck h has shape {list(h_shape)}")
            rows = slice(None) if edit.samples is None else torch.as_tensor(edit.samples, dtype=torch.long)
            if edit.samples is not None and len(rows) and int(rows.max()) >= num_samples:
                raise HSpaceError(f"an edit names sample {int(rows.max())} but the batch has {num_samples} samples")
            scale = edit.direction.step_scale(steps, asymmetric)
            total[rows] += edit.strength * scale * edit.direction.at(timestep)
            count[rows] += 1
        return total / count.clamp(min=1).sqrt().view(-1, *[1] * len(h_shape))

    def __call__(self, h: torch.Tensor, timestep: float | torch.Tensor, cond_or_uncond: Sequence[int] = (COND,),
                 flags: dict[str, Any] | None = None, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        flags = flags or {}
        timestep = float(torch.as_tensor(timestep).flatten()[0])
        chunks = list(cond_or_uncond) or [COND]
        if h.shape[0] % len(chunks):
            raise HSpaceError(f"{h.shape[0]} rows of h cannot be split into {len(chunks)} cond/uncond chunks")
        split = bool(flags.get("split", False))
        if self.capture and flags.get("capture", True):
            self._record(h, timestep, sigma, chunks, split)
        if self.replacement is not None:
            if self.replacement.shape != h.shape:
                raise HSpaceError(f"replacement h of shape {list(self.replacement.shape)} expected to match "
                                  f"the bottleneck's {list(h.shape)}")
            return self.replacement
        if not flags.get("shift", True):
            return h
        chunk = h.shape[0] // len(chunks)
        samples = chunk // 2 if split else chunk
        asymmetric = split or bool(flags.get("asymmetric", False))
        delta = self.delta(timestep, h.shape[1:], samples, flags.get("steps"), asymmetric)
        functions = self.active_functions(timestep)
        if delta is None and not functions:
            return h
        shift = torch.zeros(h.shape, dtype=h.dtype, device=h.device)
        for i, kind in enumerate(chunks):
            if self.rows == "both" or (self.rows == "cond") == (kind == COND):
                rows = slice(i * chunk + (chunk - samples), (i + 1) * chunk)
                if delta is not None:
                    shift[rows] = delta.to(h)
                for edit in functions:
                    scale = edit.strength * step_scale(edit.reference_steps, flags.get("steps"), asymmetric)
                    shift[rows] += scale * edit.function(h[rows], timestep).to(h)
        return h + shift

    def _record(self, h: torch.Tensor, timestep: float, sigma, chunks: list[int], split: bool) -> None:
        h = h.detach()
        if split:
            chunk = h.shape[0] // len(chunks)
            h = torch.cat([h[i * chunk:i * chunk + chunk // 2] for i in range(len(chunks))])
        check_finite(h, "the captured h")
        sigma = None if sigma is None else float(torch.as_tensor(sigma).flatten()[0])
        self.records.append(Capture(timestep, sigma, tuple(chunks), h.float().cpu()))

    def trajectory(self, kind: str = "cond", meta: dict[str, Any] | None = None) -> Trajectory:
        """Stack the records of one run into a :class:`Trajectory` of the cond (or uncond) rows."""
        wanted = COND if kind == "cond" else UNCOND
        steps, timesteps, sigmas = [], [], []
        for rec in self.records:
            if wanted not in rec.cond_or_uncond:
                continue
            chunk = rec.h.shape[0] // len(rec.cond_or_uncond)
            rows = [rec.h[i * chunk:(i + 1) * chunk] for i, c in enumerate(rec.cond_or_uncond) if c == wanted]
            steps.append(torch.cat(rows))
            timesteps.append(rec.timestep)
            sigmas.append(float("nan") if rec.sigma is None else rec.sigma)
        if not steps:
            raise HSpaceError(f"nothing was captured for the {kind} rows: did the model run with capture on?")
        return Trajectory(torch.stack(steps, dim=1), timesteps, sigmas, dict(meta or {}, rows=kind))

    def clear(self) -> None:
        self.records.clear()
