"""Unsupervised global directions: principal components of captured h (Haas et al. 2024, ALGORITHMS.md §2.4).

h is captured for N samples over S steps, ``[N, S, C, H, W]``. Two variants:

- per timestep (Haas ``get_PCs_indv``, the paper's default): one PCA per step over N vectors of
  dimension D = C*H*W;
- concatenated (Haas ``get_PCs_all``): one PCA over N vectors of dimension S*D.

Internally both are "groups": G = S groups of dimension D, or G = 1 group of dimension S*D.

Algorithms (chosen by ``method``; all accumulate in float64):

- ``"gram"`` (in memory, n < d; Haas's kernel trick): eigendecompose the n x n Gram matrix X Xᵀ of the
  centred data; components u_i = Xᵀ v_i / s_i. Cost O(n² d) time, O(n d) memory.
- ``"svd"`` (in memory): ``torch.linalg.svd`` of the centred data, the reference route. O(n d min(n, d)).
- ``"covariance"`` (streaming, one pass, exact): the d x d scatter matrix per group, merged over sample
  chunks with Chan et al.'s pairwise update (mean and scatter of each chunk, plus the outer product of
  the difference of means), then ``eigh``. O(n d²) time, O(G d²) memory: for moderate d.
- ``"randomized"`` (streaming, several passes): block subspace iteration with Rayleigh-Ritz on the
  covariance (Halko, Martinsson & Tropp 2011, Alg. 4.4 without forming C): a first pass for the mean,
  then per pass Z = Σ_chunks X_cᵀ (X_c Q) for an orthonormal d x l block Q (l = k + oversample), the Ritz
  pairs of Qᵀ Z, and Q <- qr(Z), until the residuals ‖C v_i - λ_i v_i‖ of the k components asked for
  (not the oversampling pairs) are at most ``tol`` · λ_1 in every group (a backward error relative to
  ‖C‖: exact in float64, it does not depend on the gaps of a noise tail, which a residual relative to each
  λ_i waits on forever). O(passes · n d l) time; memory O(G d l) for Q and Z plus a fixed work block,
  whatever the chunk size (chunks are read ``WORK_BYTES`` of float64 at a time into one reused buffer):
  10,000 samples x 40 steps x 512·8·8 with k = 25 holds 2 · 40 · 32768 · 35 · 8 B = 0.73 GB of blocks;
  measured process peak RSS 1046 MiB plus the one chunk the caller hands in (5 MiB of float32 per sample),
  the same for chunks of 25, 50 and 100 and for N 100 and 200 (``python benchmarks/bench_discovery.py --only
  pca-wide``).

``"auto"`` picks ``"gram"`` for an in-memory tensor with n < d; otherwise (n >= d, or chunks) it picks
``"covariance"`` when the G·d²·8 bytes of scatter fit in ``max_memory_bytes``, else ``"randomized"``
(an in-memory tensor is then read as one chunk).

Signs (Haas): each component's first coordinate is made positive; then, per timestep, PC_k at every
step is flipped to have a positive inner product with PC_k at the first step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Union

import torch

from ..direction import Direction, Trajectory, check_finite, recorded_site
from ..errors import HSpaceError

METHODS = ("auto", "gram", "svd", "covariance", "randomized")

HData = Union[torch.Tensor, Trajectory, Iterable[torch.Tensor], Callable[[], Iterable[torch.Tensor]]]
"""h as one tensor ``[N, S, C, H, W]`` (or a Trajectory), a re-iterable of such chunks (tensors or
Trajectories), a sharded trajectory on disk (``fileio.ShardedTrajectory``, read one shard at a time), or
a function returning a fresh iterator of chunks on every call."""

Callback = Callable[[dict[str, Any]], None]


@dataclass
class PCAResult:
    """Principal directions of h, one PCA per group (per timestep: G = S; concatenated: G = 1).

    Attributes:
        components: ``[G, k, D]`` unit principal directions (rows), in the dtype of the input.
        stds: ``[G, k]`` float64 standard deviations along them, s / sqrt(n - 1), descending.
        explained_variance_ratio: ``[G, k]`` float64 share of each group's total variance.
        total_variance: ``[G]`` float64 total variance (trace of the covariance) of each group.
        mean: ``[G, D]`` the sample mean (zeros when not centred).
        h_shape: ``(C, H, W)``; num_steps: S; num_samples: N.
        per_timestep: which variant; method: the algorithm that ran; iterations: passes of
        ``"randomized"`` (0 otherwise).
        converged: whether ``"randomized"`` met ``tol`` before ``max_iter`` (the exact methods: True);
        residual: the largest reached ‖C v_i − λ_i v_i‖ / λ_1 over the k components and groups (0 for
        the exact methods), to compare with ``tol``.
        hook_site: the site the trajectory names (its meta), carried into :meth:`to_direction`; None for a tensor.
    """

    components: torch.Tensor
    stds: torch.Tensor
    explained_variance_ratio: torch.Tensor
    total_variance: torch.Tensor
    mean: torch.Tensor
    h_shape: tuple[int, int, int]
    num_steps: int
    num_samples: int
    per_timestep: bool
    method: str
    iterations: int = 0
    converged: bool = True
    residual: float = 0.0
    hook_site: str | None = None

    @property
    def explained_variance(self) -> torch.Tensor:
        """``[G, k]`` the variance along each component (the spectrum), stds squared."""
        return self.stds ** 2

    @property
    def num_components(self) -> int:
        return self.components.shape[1]

    def direction(self, index: int, scaled: bool = True) -> torch.Tensor:
        """Δh of component ``index`` as ``[S, C, H, W]``: σ_{k,t}·u_{k,t} (``scaled``) or the unit u_{k,t}.

        For the concatenated variant the one unit vector spans all steps (norm 1 over [S, C, H, W]).
        """
        if not 0 <= index < self.num_components:
            raise HSpaceError(f"component index in [0, {self.num_components}) expected, got {index}")
        unit = self.components[:, index]
        delta = unit * self.stds[:, index, None].to(unit.dtype) if scaled else unit
        return delta.reshape(self.num_steps, *self.h_shape)

    def to_direction(self, index: int, timesteps: Iterable[float], scaled: bool = True,
                     meta: dict[str, Any] | None = None) -> Direction:
        """Component ``index`` as a per-timestep :class:`Direction` keyed by the capture's timesteps."""
        timesteps = [float(t) for t in timesteps]
        if len(timesteps) != self.num_steps:
            raise HSpaceError(f"{self.num_steps} timesteps expected (one per captured step), got {len(timesteps)}")
        info = {"method": "pca", "component": index, "per_timestep": self.per_timestep,
                "strength_range": [-5.0, 5.0] if scaled else [-1.0, 1.0],  # Haas et al. sweep -5 ... +5 std
                "num_samples": self.num_samples, "algorithm": self.method, "units": "std" if scaled else "unit",
                "explained_variance_ratio": self.explained_variance_ratio[:, index].tolist()}
        if self.hook_site is not None:
            info["hook_site"] = self.hook_site
        return Direction(self.direction(index, scaled), timesteps, {**info, **(meta or {})})


def pca_directions(data: HData, num_components: int = 25, per_timestep: bool = True, center: bool = True,
                   method: str = "auto", max_memory_bytes: int = 2 ** 30, oversample: int = 10,
                   max_iter: int = 30, tol: float = 1e-4, seed: int = 0,
                   callback: Callback | None = None) -> PCAResult:
    """Principal directions of captured h (Haas et al. 2024, ``get_PCs_indv`` / ``get_PCs_all``).

    Args:
        data: ``[N, S, C, H, W]`` h (tensor or :class:`Trajectory`), or chunks of it (see :data:`HData`).
        num_components: k, clamped to the rank bound min(N - 1 if centred else N, D).
        per_timestep: one PCA per step (True) or one over the concatenation of all steps.
        center: subtract the sample mean first.
        method: ``"auto"``, ``"gram"``, ``"svd"`` (in-memory tensors), ``"covariance"``, ``"randomized"``
            (any input); see the module docstring for costs.
        max_memory_bytes: the budget for the d x d scatter matrices that ``"auto"`` respects.
        oversample, max_iter, tol, seed: block size l = k + oversample, pass limit, the residual
            ‖C v_i − λ_i v_i‖ ≤ tol·λ_1 of the k components asked for, and the seed of the start block of
            ``"randomized"`` (see :attr:`PCAResult.converged` and :attr:`PCAResult.residual`).
        callback: called with ``{"pass", "chunk", "samples"}`` after every chunk read; raise to stop.
    """
    if method not in METHODS:
        raise HSpaceError(f"method must be one of {METHODS}, got {method!r}")
    if num_components < 1:
        raise HSpaceError(f"at least one component expected, got num_components={num_components}")
    source = _ChunkSource(data)
    in_memory = source.tensor is not None
    if in_memory and method == "auto" and source.tensor.shape[0] < source.tensor[0].numel() // (
            source.num_steps if per_timestep else 1):
        method = "gram"
    if method in ("gram", "svd"):
        if not in_memory:
            raise HSpaceError(f"method {method!r} needs all of h in memory as one tensor; for chunks use "
                              "'covariance' or 'randomized'")
        x = _grouped(source.tensor, per_timestep)
        k = _rank_bound(num_components, x.shape[0], x.shape[2], center)
        comps, variances, totals, mean = _in_memory(x, k, center, method)
        n, iterations, converged, residual = x.shape[0], 0, True, 0.0
    else:
        first = source.first_chunk()
        g = first.shape[1] if per_timestep else 1
        d = first[0].numel() // g
        del first
        if method == "auto":
            method = "covariance" if g * d * d * 8 <= max_memory_bytes else "randomized"
        if method == "covariance":
            comps, variances, totals, mean, n = _covariance_pca(source, per_timestep, center, num_components,
                                                                callback)
            iterations, converged, residual = 0, True, 0.0
        else:
            comps, variances, totals, mean, n, iterations, converged, residual = _randomized_pca(
                source, per_timestep, center, num_components, oversample, max_iter, tol, seed, callback)
    n_dof = max(n - 1, 1) if center else n
    comps = _fix_signs(comps, per_timestep)
    return PCAResult(components=comps.to(source.dtype), stds=(variances.clamp(min=0) / n_dof).sqrt(),
                     explained_variance_ratio=variances / totals.clamp(min=torch.finfo(torch.float64).tiny)[:, None],
                     total_variance=totals / n_dof, mean=mean.to(source.dtype), h_shape=source.h_shape,
                     num_steps=source.num_steps, num_samples=n, per_timestep=per_timestep, method=method,
                     iterations=iterations, converged=converged, residual=residual, hook_site=source.hook_site)


# -- input handling ---------------------------------------------------------------------------------
class _ChunkSource:
    """Uniform access to h given as a tensor, a Trajectory, a re-iterable or a factory of chunks."""

    def __init__(self, data: HData):
        self.tensor: torch.Tensor | None = None
        self._factory: Callable[[], Iterable[torch.Tensor]] | None = None
        self._one_shot: Iterator[torch.Tensor] | None = None
        self._first: torch.Tensor | None = None
        self._shape: tuple[int, ...] | None = None
        self.dtype = torch.float32
        self.hook_site = recorded_site(getattr(data, "meta", None) or {})
        if isinstance(data, Trajectory):
            data = data.h
        if isinstance(data, torch.Tensor):
            self.tensor = _check_chunk(data, None)
            self._shape, self.dtype = tuple(data.shape[1:]), _float_dtype(data)
        elif callable(getattr(data, "iter_chunks", None)):  # fileio.ShardedTrajectory
            self._factory = data.iter_chunks
        elif callable(data):
            self._factory = data
        elif isinstance(data, Iterable):
            if iter(data) is data:
                self._one_shot = data
            else:
                self._factory = lambda: data
        else:
            raise HSpaceError(f"h as a tensor [N, S, C, H, W], a Trajectory or an iterable of chunks expected, "
                              f"got {type(data).__name__}")

    @property
    def h_shape(self) -> tuple[int, int, int]:
        return tuple(self._shape[1:])

    @property
    def num_steps(self) -> int:
        return self._shape[0]

    def first_chunk(self) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor
        if self._first is None:
            iterator = iter(self._factory()) if self._factory else self._one_shot
            for chunk in iterator:
                if self.hook_site is None and isinstance(chunk, Trajectory):  # e.g. the shards of a capture
                    self.hook_site = recorded_site(chunk.meta)
                self._first = _check_chunk(chunk, None)
                break
            else:
                raise HSpaceError("no h to analyse: the chunk iterable is empty")
            self._shape, self.dtype = tuple(self._first.shape[1:]), _float_dtype(self._first)
        return self._first

    def chunks(self, multi_pass: bool) -> Iterator[torch.Tensor]:
        if self.tensor is not None:
            yield self.tensor
            return
        if self._shape is None:
            self.first_chunk()
        if self._factory is not None:
            iterator = iter(self._factory())
        elif multi_pass:
            raise HSpaceError("the randomized PCA reads h several times, but a one-shot iterator came: pass a "
                              "list, a re-iterable shard reader, or a function returning a fresh iterator")
        else:
            iterator, self._one_shot = self._one_shot, None
            if iterator is None:
                raise HSpaceError("the one-shot chunk iterator was already consumed")
            first, self._first = self._first, None
            yield first
            del first
        if self._factory is not None:
            self._first = None  # re-read from the factory: only its shape had to be kept
        seen = False
        for chunk in iterator:
            seen = True
            checked = _check_chunk(chunk, self._shape)
            del chunk
            yield checked
            del checked
        if self._factory is not None and not seen:
            raise HSpaceError("no h to analyse: the chunk iterable is empty")


def _check_chunk(chunk: Any, shape: tuple[int, ...] | None) -> torch.Tensor:
    if isinstance(chunk, Trajectory):
        chunk = chunk.h
    if not isinstance(chunk, torch.Tensor) or chunk.ndim not in (4, 5):
        got = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
        raise HSpaceError(f"h chunks of shape [N, S, C, H, W] (or [N, S, tokens, dim]) expected, got {got}")
    if shape is not None and tuple(chunk.shape[1:]) != shape:
        raise HSpaceError(f"every chunk must have per-sample shape {list(shape)}, got {list(chunk.shape[1:])}")
    if chunk.shape[0] == 0 or chunk.shape[1] == 0:
        raise HSpaceError(f"empty h chunk of shape {tuple(chunk.shape)}")
    return check_finite(chunk, "the captured h")


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _grouped(h: torch.Tensor, per_timestep: bool) -> torch.Tensor:
    """[n, S, C, H, W] -> [n, G, D] in float64."""
    n, s = h.shape[:2]
    return h.reshape(n, s, -1).double() if per_timestep else h.reshape(n, 1, -1).double()


WORK_BYTES = 2 ** 26
"""float64 bytes of h the streaming routes convert at a time, whatever the size of the chunks passed in."""


class _WorkBlocks:
    """A chunk as float64 ``[G, m, D]`` blocks of at most :data:`WORK_BYTES`, in one reused buffer.

    The chunk is sliced along its samples before anything is reshaped or converted, so no temporary
    (float64 copy, contiguous copy of a strided chunk) is ever the size of the whole chunk.
    """

    def __init__(self, per_timestep: bool):
        self.per_timestep = per_timestep
        self._buffer: torch.Tensor | None = None

    def __call__(self, chunk: torch.Tensor, mean: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        n, s = chunk.shape[:2]
        g = s if self.per_timestep else 1
        d = chunk[0].numel() // g
        step = max(1, WORK_BYTES // (g * d * 8))
        rows = min(step, n)
        if self._buffer is None or self._buffer.shape[0] != g or self._buffer.shape[2] != d or (
                self._buffer.shape[1] < rows):
            self._buffer = None  # the old buffer is freed before the new one is made
            self._buffer = torch.empty(g, rows, d, dtype=torch.float64)
        for start in range(0, n, step):
            part = chunk[start:start + step]
            block = self._buffer[:, :part.shape[0]]
            block.copy_(part.reshape(part.shape[0], g, d).transpose(0, 1))
            del part
            if mean is not None:
                block -= mean[:, None]
            yield block


def _numbered(chunks: Iterator[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, chunk) like ``enumerate``, whose reused result tuple would keep the previous chunk alive
    while the next one is made; here no reference to a chunk outlives its turn."""
    index = 0
    for chunk in chunks:
        yield index, chunk
        del chunk
        index += 1


def _rank_bound(k: int, n: int, d: int, center: bool) -> int:
    bound = min(n - 1 if center else n, d)
    if bound < 1:
        raise HSpaceError(f"PCA needs at least 2 samples when centring, got {n}")
    return min(k, bound)


# -- in memory ----------------------------------------------------------------------------------------
def _in_memory(x: torch.Tensor, k: int, center: bool, method: str):
    mean = x.mean(0) if center else torch.zeros_like(x[0])
    xc = (x - mean).transpose(0, 1)  # [G, n, D]
    totals = xc.pow(2).sum(dim=(1, 2))
    if method == "svd":
        _, s, vh = torch.linalg.svd(xc, full_matrices=False)
        return vh[:, :k], s[:, :k] ** 2, totals, mean
    gram = xc @ xc.transpose(1, 2)  # [G, n, n]
    eigvals, eigvecs = torch.linalg.eigh(gram)
    eigvals, eigvecs = eigvals.flip(-1)[:, :k].clamp(min=0), eigvecs.flip(-1)[:, :, :k]
    # u = Xᵀv / s; normalising instead of dividing keeps the null components (s = 0) finite
    comps = torch.nn.functional.normalize(eigvecs.transpose(1, 2) @ xc, dim=-1)
    return comps, eigvals, totals, mean


# -- streaming: exact scatter ------------------------------------------------------------------------
def _covariance_pca(source: _ChunkSource, per_timestep: bool, center: bool, k: int, callback: Callback | None):
    n, mean, scatter = 0, None, None
    blocks = _WorkBlocks(per_timestep)
    for i, chunk in _numbered(source.chunks(multi_pass=False)):
        for x in blocks(chunk):  # [G, m, D]
            m = x.shape[1]
            if scatter is None:
                scatter = x.new_zeros(x.shape[0], x.shape[2], x.shape[2])
                mean = x.new_zeros(x.shape[0], x.shape[2])
            if center:
                chunk_mean = x.mean(1)
                delta = chunk_mean - mean
                scatter.baddbmm_(delta[:, :, None], delta[:, None, :], alpha=n * m / (n + m))
                mean += delta * (m / (n + m))
                x -= chunk_mean[:, None]
            scatter.baddbmm_(x.transpose(1, 2), x)
            n += m
        del chunk  # before the next chunk is read: one chunk alive at a time
        _report(callback, 0, i, n)
    k = _rank_bound(k, n, scatter.shape[-1], center)
    totals = scatter.diagonal(dim1=1, dim2=2).sum(-1)
    comps, variances = [], []
    for group in scatter:  # one d x d eigenproblem at a time: the workspace of one group, not of G
        eigvals, eigvecs = torch.linalg.eigh(group)
        comps.append(eigvecs.flip(-1)[:, :k].T.clone())
        variances.append(eigvals.flip(-1)[:k].clamp(min=0))
    return torch.stack(comps), torch.stack(variances), totals, mean, n


# -- streaming: randomized subspace iteration --------------------------------------------------------
def _randomized_pca(source: _ChunkSource, per_timestep: bool, center: bool, k: int, oversample: int,
                    max_iter: int, tol: float, seed: int, callback: Callback | None):
    n, total, sq = 0, None, None
    blocks = _WorkBlocks(per_timestep)
    for i, chunk in _numbered(source.chunks(multi_pass=True)):
        for x in blocks(chunk):  # [G, m, D]
            if total is None:
                total, sq = x.new_zeros(x.shape[0], x.shape[2]), x.new_zeros(x.shape[0])
            total += x.sum(1)
            sq += torch.linalg.vector_norm(x, dim=(1, 2)) ** 2
            n += x.shape[1]
        del chunk
        _report(callback, 0, i, n)
    g, d = total.shape
    k = _rank_bound(k, n, d, center)
    mean = total / n if center else torch.zeros_like(total)
    totals = sq - n * mean.pow(2).sum(-1)
    width = min(k + oversample, d, n)
    generator = torch.Generator().manual_seed(seed)
    q = torch.empty(g, d, width, dtype=torch.float64)
    for group in range(g):  # one group's QR workspace at a time
        q[group] = torch.linalg.qr(torch.randn(d, width, generator=generator, dtype=torch.float64)).Q
    z = torch.empty_like(q)
    tiny = torch.finfo(torch.float64).tiny
    converged, residual = False, float("inf")
    for iteration in range(1, max_iter + 1):
        z.zero_()
        for i, chunk in _numbered(source.chunks(multi_pass=True)):
            for xc in blocks(chunk, mean if center else None):
                z.baddbmm_(xc.transpose(1, 2), xc @ q)
            del chunk
            _report(callback, iteration, i, n)
        eigvals, rotation = torch.linalg.eigh(q.transpose(1, 2) @ z)
        eigvals, rotation = eigvals.flip(-1)[:, :k], rotation.flip(-1)[:, :, :k]
        # ‖Z r − λ Q r‖² = rᵀZᵀZr − 2λ rᵀQᵀZr + λ² (Q orthonormal): no d x l temporary
        zz = z.transpose(1, 2) @ z
        squared = ((rotation * (zz @ rotation)).sum(1) - eigvals ** 2).clamp(min=0)
        residuals = squared.sqrt() / eigvals[:, :1].clamp(min=tiny)
        residual = float(residuals.max())
        if residual <= tol or iteration == max_iter:
            converged = residual <= tol
            break
        for group in range(g):
            q[group] = torch.linalg.qr(z[group]).Q
    del z, zz
    components = torch.empty(g, k, d, dtype=torch.float64)
    for group in range(g):
        components[group] = (q[group] @ rotation[group]).T
    return components, eigvals.clamp(min=0), totals, mean, n, iteration, converged, residual


def _report(callback: Callback | None, pass_index: int, chunk_index: int, samples: int) -> None:
    if callback is not None:
        callback({"pass": pass_index, "chunk": chunk_index, "samples": samples})


# -- signs ----------------------------------------------------------------------------------------------
def _fix_signs(components: torch.Tensor, per_timestep: bool) -> torch.Tensor:
    """First coordinate positive (Haas); then, per timestep, PC_k at every step agrees with PC_k at step 0.

    In place (the components are always this module's own): no second [G, k, D] copy.
    """
    components.mul_(torch.where(components[:, :, :1] < 0, -1.0, 1.0).to(components))
    if per_timestep and components.shape[0] > 1:
        agreement = torch.einsum("gkd,kd->gk", components, components[0])
        components.mul_(torch.where(agreement < 0, -1.0, 1.0).to(components)[:, :, None])
    return components
