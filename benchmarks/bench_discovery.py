"""Costs of the discovery methods, as ratios measured in one run (medians of repeats, 1 thread).

The fixed tiny model: ``small_unet()``, a diffusers UNet2DModel seeded with torch.manual_seed(0),
16x16x3 input, block_out_channels (16, 32, 64), one layer per block, attention in the lowest down and
highest up block, 8 groups, head dim 8; h is 64x4x4; the linear VP schedule of 1000 steps.

1. Jacobian directions (Haas): top-3 right singular vectors of J = d eps / d h at t = 800 (x seeded 1) by
   hspace's batched subspace iteration (oversampling 4, Rayleigh-Ritz) at several tolerances vs the papers'
   rule re-implemented here (power iteration with deflation, absolute 1e-5 on sigma^2, more than 10 small
   changes, 50 iterations per vector), scored against a dense SVD: min per-vector |cos| and the Grassmann
   distance of the spans; the speed-up at the loosest tolerance at least as accurate on both.
2. Pullback basis (Park, n = 10): J = d h / d x of the encoder at t = 797 (x seeded 2), hspace's
   oversampled subspace iteration vs Park's rule re-implemented (orth(JᵀJV), allclose 1e-4 on V, 10-50
   iterations), scored the same way.
3. PCA of a capture larger than one chunk: peak resident memory of the streamed routes (randomized subspace
   iteration, exact scatter) vs the in-memory route (all chunks concatenated, then ``method="auto"``), each
   in a fresh subprocess (VmHWM above the level after loading the libraries), with the agreement
   of the standard deviations. ``--only pca-wide``: the issue's width (N x 40 x 512·8·8) at chunks of 25, 50
   and 100, peak RSS per chunk size, each in a fresh process.
4. ``--only jvp-sd15`` (not in the default run, about 2 minutes and 5 GB): peak memory of one Jacobian-vector
   product of d eps / d h at SD1.5 width on the CPU (see ``sd15_jvp_child``).

    OMP_NUM_THREADS=1 python benchmarks/bench_discovery.py [--repeats 3] [--samples 2000] [--only jacobian]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from hspace_core.denoisers import DiffusersDenoiser
from hspace_core.discovery.jacobian import JacobianOperator, eps_of_h, subspace_iteration
from hspace_core.discovery.pca import pca_directions
from hspace_core.discovery.pullback import encoder_function, grassmann_distance, pullback_basis
from hspace_core.schedule import VPSchedule

PCA_STEPS, PCA_SHAPE, PCA_RANK, PCA_CHUNK = 10, (64, 4, 4), 8, 100
JACOBIAN_T, PULLBACK_T = 800, 797  # the points of the side-by-side runs


def small_unet() -> DiffusersDenoiser:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=8).eval().requires_grad_(False)
    return DiffusersDenoiser(unet, VPSchedule.linear())


def interleaved_medians(runs: dict, repeats: int) -> dict:
    """Median seconds of each run, the runs taking turns (so load from other processes hits all alike)."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def accuracy(right: torch.Tensor, vh: torch.Tensor) -> tuple[float, float]:
    """(min per-vector |cos|, Grassmann distance of the spans) of k right vectors against the dense SVD's."""
    k = right.shape[0]
    flat = right.reshape(k, -1).double()
    cos = float((flat * vh[:k]).sum(-1).abs().min())
    return cos, float(grassmann_distance(flat, vh[:k]))


def haas_rule(op: JacobianOperator, k: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """The papers' rule (Haas et al., editing/jacobian.py, re-implemented): power iteration on J Jᵀ in output
    space with deflation; per vector at most 50 iterations, stopping once |λ − λ_prev| < 1e-5 (absolute,
    λ ≈ σ²) has happened more than 10 times. Returns the right vectors and the iterations run."""
    gen = torch.Generator().manual_seed(seed)
    out_dim = int(torch.tensor(op.out_shape).prod())
    found, rights, total = [], [], 0
    for _ in range(k):
        v = torch.randn(out_dim, generator=gen, dtype=torch.float64)
        v, previous, small = v / v.norm(), 999.0, 0
        for _ in range(50):
            u = op.vjp(v.reshape(1, *op.out_shape)).reshape(-1).double()
            w = op.jvp(u.reshape(1, *op.in_shape)).reshape(-1).double()
            if found:
                basis = torch.linalg.qr(torch.stack(found, 1)).Q
                w = w - basis @ (basis.T @ w)
            eigenvalue = float(w.norm())
            v, total = w / eigenvalue, total + 1
            small += abs(eigenvalue - previous) < 1e-5
            previous = eigenvalue
            if small > 10:
                break
        u = op.vjp(v.reshape(1, *op.out_shape)).reshape(-1).double()
        rights.append(u / u.norm())
        found.append(v)
    return torch.stack(rights), total


def park_rule(op: JacobianOperator, n: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """The papers' rule (Park et al., re-implemented): V <- orth(JᵀJ V) on n vectors, at least 10 and at most 50
    iterations, stopping when V is elementwise allclose to the previous V (atol = rtol = 1e-4)."""
    gen = torch.Generator().manual_seed(seed)
    in_dim = op.point.numel()
    v = torch.linalg.qr(torch.randn(in_dim, n, generator=gen, dtype=torch.float64)).Q.T
    for iteration in range(1, 51):
        w = op.jvp(v.reshape(n, *op.in_shape))
        z = op.vjp(w).reshape(n, -1).double()
        new = torch.linalg.qr(z.T).Q.T
        done = iteration >= 10 and torch.allclose(new, v, rtol=1e-4, atol=1e-4)
        v = new
        if done:
            break
    return v, iteration


def curve(name: str, solve, baseline_seconds: float, baseline_accuracy: tuple[float, float], vh, repeats: int,
          tolerances=(1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4)) -> None:
    """hspace's accuracy-time curve over tolerances; the ratio at the loosest tolerance as accurate as the rule."""
    matched = None
    for tol in tolerances:
        result = solve(tol)
        cos, dist = accuracy(result.right if hasattr(result, "right") else result.x_basis, vh)
        seconds = interleaved_medians({"run": lambda tol=tol: solve(tol)}, repeats)["run"]
        print(f"[{name}] hspace tol {tol:.0e}: {seconds:7.3f} s  iterations {result.iterations:3d}  "
              f"converged {result.converged!s:5s}  min |cos| {cos:.5f}  Grassmann {dist:.2e}  "
              f"speed-up vs rule {baseline_seconds / seconds:5.2f}x")
        if matched is None and cos >= baseline_accuracy[0] and dist <= baseline_accuracy[1]:
            matched = (tol, seconds)
    if matched:
        print(f"[{name}] at equal or better accuracy (tol {matched[0]:.0e}): {baseline_seconds / matched[1]:.2f}x "
              f"faster than the papers' rule")
    else:
        print(f"[{name}] no tolerance tried reached the papers' rule's accuracy")


def bench_jacobian(den: DiffusersDenoiser, repeats: int, k: int = 3) -> None:
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1))
    sigma = float(den.schedule.sigma(JACOBIAN_T))
    f, h0 = eps_of_h(den, x, sigma)
    dense = JacobianOperator(f, h0).dense().double()
    _, s, vh = torch.linalg.svd(dense, full_matrices=False)
    print(f"[jacobian] J = d eps/d h at t = {JACOBIAN_T} (x seed 1): {dense.shape[0]} x {dense.shape[1]}, "
          f"sigma_1..5 {[round(float(v), 4) for v in s[:5]]}")
    rights, iterations = haas_rule(JacobianOperator(f, h0), k)
    rule = accuracy(rights, vh)
    rule_seconds = interleaved_medians({"rule": lambda: haas_rule(JacobianOperator(f, h0), k)}, repeats)["rule"]
    print(f"[jacobian] Haas rule (abs 1e-5 on sigma^2, >10 small changes, 50 max): {rule_seconds:7.3f} s  "
          f"iterations {iterations}  min |cos| {rule[0]:.5f}  Grassmann {rule[1]:.2e}")
    curve("jacobian", lambda tol: subspace_iteration(JacobianOperator(f, h0), k, oversample=4, tol=tol,
                                                     max_iter=200), rule_seconds, rule, vh, repeats)


def bench_pullback(den: DiffusersDenoiser, repeats: int, n: int = 10) -> None:
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(2))
    sigma = float(den.schedule.sigma(PULLBACK_T))
    f = encoder_function(den, sigma)
    dense = JacobianOperator(f, x).dense().double()
    _, s, vh = torch.linalg.svd(dense, full_matrices=False)
    print(f"[pullback] J = d h/d x at t = {PULLBACK_T} (x seed 2): {dense.shape[0]} x {dense.shape[1]}, "
          f"sigma_{n + 1}/sigma_{n} = {float(s[n] / s[n - 1]):.3f}")
    basis, iterations = park_rule(JacobianOperator(f, x), n)
    rule = accuracy(basis, vh)
    rule_seconds = interleaved_medians({"rule": lambda: park_rule(JacobianOperator(f, x), n)}, repeats)["rule"]
    print(f"[pullback] Park rule (allclose 1e-4 on V, 10-50 iterations): {rule_seconds:7.3f} s  iterations "
          f"{iterations}  min |cos| {rule[0]:.5f}  Grassmann {rule[1]:.2e}")
    result = pullback_basis(f, x, n)
    print(f"[pullback] hspace defaults: gap ratio estimate {result.gap_ratio:.3f}, in cluster {result.in_cluster}")
    curve("pullback", lambda tol: pullback_basis(f, x, n, tol=tol, max_iter=200), rule_seconds, rule, vh, repeats)


def synthetic_chunks(samples: int, seed: int = 0):
    """Chunks of a low-rank-plus-noise capture [n, S, C, H, W], generated on the fly (never all in memory)."""
    d = PCA_SHAPE[0] * PCA_SHAPE[1] * PCA_SHAPE[2]
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(PCA_STEPS, PCA_RANK, d, generator=g)
    scales = torch.logspace(1, 0, PCA_RANK)

    def chunks():
        for start in range(0, samples, PCA_CHUNK):
            n = min(PCA_CHUNK, samples - start)
            gen = torch.Generator().manual_seed(seed + 1 + start)
            coeff = torch.randn(n, PCA_STEPS, PCA_RANK, generator=gen) * scales
            noise = 0.1 * torch.randn(n, PCA_STEPS, d, generator=gen)
            yield (torch.einsum("nsr,srd->nsd", coeff, basis) + noise).reshape(n, PCA_STEPS, *PCA_SHAPE)

    return chunks


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM (reset by exec, unlike ru_maxrss, which a subprocess
    inherits from its parent on Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pca_child(route: str, samples: int) -> None:
    """Run one PCA route and print its peak memory above the post-import baseline, as JSON."""
    def run(chunks):
        if route == "in-memory":
            return pca_directions(torch.cat(list(chunks())), num_components=5)
        return pca_directions(chunks, num_components=5, method=route)  # default tol and pass limit

    for method in ("gram", "covariance", "randomized"):  # warm-up: the linear-algebra libraries loaded
        pca_directions(torch.randn(4, 2, 1, 2, 2), num_components=1, method=method)
    next(iter(synthetic_chunks(PCA_CHUNK, seed=7)()))  # and the data generator's temporaries allocated once
    baseline = peak_rss_mib()
    start = time.perf_counter()
    result = run(synthetic_chunks(samples))
    seconds = time.perf_counter() - start
    peak = peak_rss_mib() - baseline
    print(json.dumps({"route": route, "method": result.method, "peak_mib": peak, "seconds": seconds,
                      "passes": result.iterations, "converged": result.converged, "stds": result.stds[:, :5].tolist()}))


def wide_child(samples: int, chunk: int) -> None:
    """The issue's width: N x 40 steps x 512·8·8, k = 25, streamed in chunks made on the fly; two passes of
    the randomized route (memory is the same on every pass). Prints the peak RSS of the whole process and
    that of the libraries alone (before any chunk)."""
    steps, shape = 40, (512, 8, 8)

    def chunks():
        for start in range(0, samples, chunk):
            gen = torch.Generator().manual_seed(start)
            yield torch.randn(min(chunk, samples - start), steps, *shape, generator=gen)

    libraries = peak_rss_mib()
    start = time.perf_counter()
    result = pca_directions(chunks, num_components=25, method="randomized", max_iter=2)
    print(json.dumps({"samples": samples, "chunk": chunk, "peak_rss_mib": peak_rss_mib(),
                      "libraries_mib": libraries, "chunk_mib": chunk * steps * 512 * 8 * 8 * 4 / 2 ** 20,
                      "seconds": time.perf_counter() - start, "passes": result.iterations}))


def bench_pca_wide(runs: list[tuple[int, int]]) -> None:
    """Each run in a fresh process (peaks never mix). The caller's chunk is the caller's memory; what PCA
    holds beyond it (peak minus one chunk) must not depend on the chunk size."""
    beyond = []
    for samples, chunk in runs:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, __file__, "--wide-child", str(samples), str(chunk)],
                             capture_output=True, text=True, check=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        beyond.append(r["peak_rss_mib"] - r["chunk_mib"])
        print(f"[pca-wide] N {r['samples']:5d} x 40 x 512·8·8, chunks of {r['chunk']:3d} ({r['chunk_mib']:4.0f} MiB), "
              f"k 25 + 10: peak RSS {r['peak_rss_mib']:5.0f} MiB, beyond one chunk {beyond[-1]:5.0f} MiB "
              f"(libraries {r['libraries_mib']:.0f} MiB; {r['passes']} passes, {r['seconds']:.0f} s)")
    print(f"[pca-wide] spread of the peak beyond one chunk over these runs: {max(beyond) - min(beyond):.0f} MiB")


def sd15_jvp_child(block: int) -> None:
    """One Jacobian-vector product (and one vector-Jacobian product) of J = d eps / d h at SD1.5 width:
    a diffusers UNet2DConditionModel with SD1.5's configuration (block_out_channels 320/640/1280/1280, two
    layers per block, cross-attention 768, head dim 8), seeded random weights, a 32x32 latent (h 1280x4x4),
    77 random text tokens, t = 800, a block of ``block`` vectors, the default reverse-over-reverse JVP.
    Prints peak RSS above the level after loading the model and one plain forward."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=32, cross_attention_dim=768).eval().requires_grad_(False)
    den = DiffusersDenoiser(unet, VPSchedule.scaled_linear(), cond=torch.randn(1, 77, 768))
    x = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(1))
    f, h0 = eps_of_h(den, x, float(den.schedule.sigma(JACOBIAN_T)))  # the plain forward (no grad)
    loaded = peak_rss_mib()
    op = JacobianOperator(f, h0)
    start = time.perf_counter()
    jv = op.jvp(torch.randn(block, *h0.shape))
    jvp_seconds = time.perf_counter() - start
    jvp_peak = peak_rss_mib() - loaded
    start = time.perf_counter()
    op.vjp(jv)
    print(json.dumps({"block": block, "parameters": sum(p.numel() for p in unet.parameters()), "loaded_mib": loaded,
                      "h_shape": list(h0.shape), "jvp_peak_mib": jvp_peak, "jvp_seconds": jvp_seconds,
                      "vjp_peak_mib": peak_rss_mib() - loaded, "vjp_seconds": time.perf_counter() - start}))


def bench_sd15_jvp(blocks: list[int]) -> None:
    for block in blocks:  # a fresh process per block size: peaks never mix
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, __file__, "--sd15-jvp-child", str(block)],
                             capture_output=True, text=True, check=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"[jvp-sd15] UNet2DConditionModel SD1.5 width ({r['parameters'] / 1e6:.0f} M parameters, "
              f"{r['loaded_mib']:.0f} MiB loaded), 32x32 latent, h {r['h_shape']}, block {r['block']}: JVP peak "
              f"+{r['jvp_peak_mib']:.0f} MiB ({r['jvp_seconds']:.0f} s), then VJP peak +{r['vjp_peak_mib']:.0f} MiB "
              f"({r['vjp_seconds']:.0f} s)")


def bench_pca(samples: int) -> None:
    d = PCA_SHAPE[0] * PCA_SHAPE[1] * PCA_SHAPE[2]
    data_mib = samples * PCA_STEPS * d * 4 / 2 ** 20
    print(f"[pca] capture {samples} x {PCA_STEPS} steps x {d} = {data_mib:.0f} MiB float32, chunks of {PCA_CHUNK}")

    def child(route: str, n: int) -> dict:
        # glibc's dynamic mmap threshold would keep freed chunks in the heap and count them in the peak;
        # a fixed threshold returns every large buffer, so the peak follows the live tensors.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, __file__, "--pca-child", route, "--samples", str(n)],
                             capture_output=True, text=True, check=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    results = {route: child(route, samples) for route in ("in-memory", "randomized", "covariance")}
    reference = torch.tensor(results["in-memory"]["stds"], dtype=torch.float64)
    for route, r in results.items():
        err = float(((torch.tensor(r["stds"], dtype=torch.float64) - reference).abs() / reference).max())
        print(f"[pca] {route:10s} ({r['method']:10s}) peak +{r['peak_mib']:7.1f} MiB  {r['seconds']:6.2f} s  "
              f"passes {r['passes']:2d} converged {r['converged']!s:5s}  max rel std diff vs in-memory {err:.1e}")
    doubled = child("randomized", 2 * samples)
    print(f"[pca] randomized with {2 * samples} samples: peak +{doubled['peak_mib']:7.1f} MiB (flat in N)")
    for route in ("randomized", "covariance"):
        print(f"[pca] ratio peak memory in-memory / {route}: "
              f"{results['in-memory']['peak_mib'] / max(results[route]['peak_mib'], 1e-3):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000, help="samples of the synthetic PCA capture")
    parser.add_argument("--only", choices=("jacobian", "pullback", "pca", "pca-wide", "jvp-sd15"))
    parser.add_argument("--sd15-jvp-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--wide-child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pca-child", choices=("in-memory", "randomized", "covariance"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.wide_child:
        wide_child(*args.wide_child)
        return
    if args.sd15_jvp_child:
        sd15_jvp_child(args.sd15_jvp_child)
        return
    if args.only == "jvp-sd15":  # not part of the default run: minutes and GBs
        bench_sd15_jvp([1])
        return
    if args.only == "pca-wide":  # flat in N and in the chunk size: N 10,000 runs the same blocks longer
        bench_pca_wide([(100, 25), (100, 50), (100, 100), (200, 50)])
        return
    if args.pca_child:
        pca_child(args.pca_child, args.samples)
        return
    den = small_unet()
    print(f"torch {torch.__version__}, 1 thread; UNet2DModel 16x16x3, block_out_channels (16, 32, 64), "
          f"h {tuple(den.h_shape())}")
    if args.only in (None, "jacobian"):
        bench_jacobian(den, args.repeats)
    if args.only in (None, "pullback"):
        bench_pullback(den, args.repeats)
    if args.only in (None, "pca"):
        bench_pca(args.samples)


if __name__ == "__main__":
    main()
