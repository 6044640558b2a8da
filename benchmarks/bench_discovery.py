"""Costs of the discovery methods, as ratios measured in one run (medians of repeats).

1. Jacobian directions (Haas): the top-3 right singular vectors of J = d eps / d h of a small random UNet by
   batched subspace iteration vs the papers' sequential power iteration with deflation, both run to the
   same accuracy against a dense SVD (sigma within 1e-4 relative, |cos| >= 0.999).
2. Pullback basis (Park, n = 10, fixed iterations): f = the encoder only (stops after the mid block) vs
   h read from a full UNet forward; with the default cached reverse-over-reverse JVP (the forward runs once
   per block size) and with forward-mode JVPs (the forward runs on every product, as Park's jacfwd does;
   only on an attention-free UNet, where PyTorch's forward mode runs through diffusers).
3. PCA of a capture larger than one chunk: peak resident memory of the streamed routes (randomized subspace
   iteration, exact scatter) vs the in-memory route (all chunks concatenated, then ``method="auto"``), each
   in a fresh subprocess (VmHWM above the level after loading the libraries), with the agreement
   of the standard deviations.

    OMP_NUM_THREADS=1 python benchmarks/bench_discovery.py [--repeats 3] [--samples 2000]
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
from hspace_core.discovery.jacobian import (JacobianOperator, eps_of_h, power_iteration_deflation,
                                            subspace_iteration)
from hspace_core.discovery.pca import pca_directions
from hspace_core.discovery.pullback import encoder_function, pullback_basis
from hspace_core.schedule import VPSchedule

PCA_STEPS, PCA_SHAPE, PCA_RANK, PCA_CHUNK = 10, (64, 4, 4), 8, 100


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


def accuracy(result, s, vh, k=3) -> tuple[float, float]:
    rel = float(((result.singular_values[:k].double() - s[:k]).abs() / s[:k]).max())
    cos = float((result.right.reshape(k, -1).double() * vh[:k]).sum(-1).abs().min())
    return rel, cos


TARGET_SIGMA_REL, TARGET_COS = 1e-4, 0.999
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)


def bench_jacobian(den: DiffusersDenoiser, repeats: int) -> None:
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1))
    f, h0 = eps_of_h(den, x, 1.0)
    dense = JacobianOperator(f, h0).dense().double()
    _, s, vh = torch.linalg.svd(dense, full_matrices=False)
    print(f"[jacobian] J = d eps/d h: {dense.shape[0]} x {dense.shape[1]}, top singular values "
          f"{[round(float(v), 4) for v in s[:4]]}; target: sigma within {TARGET_SIGMA_REL:g} relative, "
          f"|cos| >= {TARGET_COS}")
    solvers = {
        "subspace (block 3+2, batched)": lambda tol: subspace_iteration(JacobianOperator(f, h0), 3, oversample=2,
                                                                         tol=tol, max_iter=2000),
        "power + deflation (sequential)": lambda tol: power_iteration_deflation(JacobianOperator(f, h0), 3,
                                                                                tol=tol, max_iter=5000),
    }
    runs, products = {}, {}
    for name, solve in solvers.items():
        for tol in TOLERANCES:  # the loosest tolerance that reaches the target accuracy
            result = solve(tol)
            rel, cos = accuracy(result, s, vh)
            if rel <= TARGET_SIGMA_REL and cos >= TARGET_COS:
                break
        width = 5 if name.startswith("subspace") else 1
        products[name] = result.iterations * width + (0 if width > 1 else 3)
        runs[name] = lambda solve=solve, tol=tol: solve(tol)
        print(f"[jacobian] {name:32s} tol {tol:.0e}  iterations {result.iterations:4d}  JVPs+VJPs "
              f"{2 * products[name]:5d}  max rel sigma err {rel:.1e}  min |cos| {cos:.5f}")
    timings = interleaved_medians(runs, repeats)
    for name, seconds in timings.items():
        print(f"[jacobian] {name:32s} {seconds:7.3f} s")
    sub, power = timings.values()
    print(f"[jacobian] ratio sequential / batched at equal accuracy: {power / sub:.2f}x")


def attention_free_unet() -> DiffusersDenoiser:
    """The same UNet without attention, where torch.func.jvp (forward mode) runs through the encoder."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                       norm_num_groups=8, add_attention=False).eval().requires_grad_(False)
    return DiffusersDenoiser(unet, VPSchedule.linear())


def bench_pullback(den: DiffusersDenoiser, label: str, modes: tuple[str, ...], repeats: int) -> None:
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(2))
    sigma = 2.0

    def full_forward_h(batch: torch.Tensor) -> torch.Tensor:
        stored = {}
        handle = den.unet.mid_block.register_forward_hook(lambda module, args, out: stored.setdefault("h", out))
        try:
            den.eps(batch, sigma)
        finally:
            handle.remove()
        return stored["h"]

    variants = {"encoder only": encoder_function(den, sigma), "full forward": full_forward_h}
    for mode in modes:
        runs = {name: lambda f=f: pullback_basis(f, x, num_vectors=10, min_iter=10, max_iter=10, jvp_mode=mode)
                for name, f in variants.items()}
        timings = interleaved_medians(runs, repeats)
        for name, seconds in timings.items():
            print(f"[pullback] {label}, JVP {mode:7s}: n=10, 10 iterations, {name:13s} {seconds:7.3f} s")
        print(f"[pullback] {label}, JVP {mode:7s}: ratio full / encoder-only basis "
              f"{timings['full forward'] / timings['encoder only']:.2f}x")
    with torch.no_grad():
        passes = interleaved_medians({"encoder only": lambda: den.encode(x[None], sigma),
                                      "full forward": lambda: den.eps(x[None], sigma)}, 5 * repeats)
    print(f"[pullback] {label}: ratio full / encoder-only, one forward pass "
          f"{passes['full forward'] / passes['encoder only']:.2f}x")


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
        return pca_directions(chunks, num_components=5, method=route, tol=1e-6, max_iter=50)

    for method in ("gram", "covariance", "randomized"):  # warm-up: the linear-algebra libraries loaded
        pca_directions(torch.randn(4, 2, 1, 2, 2), num_components=1, method=method)
    next(iter(synthetic_chunks(PCA_CHUNK, seed=7)()))  # and the data generator's temporaries allocated once
    baseline = peak_rss_mib()
    start = time.perf_counter()
    result = run(synthetic_chunks(samples))
    seconds = time.perf_counter() - start
    peak = peak_rss_mib() - baseline
    print(json.dumps({"route": route, "method": result.method, "peak_mib": peak, "seconds": seconds,
                      "passes": result.iterations, "stds": result.stds[:, :5].tolist()}))


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
              f"passes {r['passes']:2d}  max rel std diff vs in-memory {err:.1e}")
    doubled = child("randomized", 2 * samples)
    print(f"[pca] randomized with {2 * samples} samples: peak +{doubled['peak_mib']:7.1f} MiB (flat in N)")
    for route in ("randomized", "covariance"):
        print(f"[pca] ratio peak memory in-memory / {route}: "
              f"{results['in-memory']['peak_mib'] / max(results[route]['peak_mib'], 1e-3):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000, help="samples of the synthetic PCA capture")
    parser.add_argument("--pca-child", choices=("in-memory", "randomized", "covariance"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.pca_child:
        pca_child(args.pca_child, args.samples)
        return
    den = small_unet()
    print(f"torch {torch.__version__}, 1 thread; UNet2DModel 16x16x3, block_out_channels (16, 32, 64), "
          f"h {tuple(den.h_shape())}")
    bench_jacobian(den, args.repeats)
    bench_pullback(den, "with attention", ("reverse",), args.repeats)
    bench_pullback(attention_free_unet(), "attention-free", ("reverse", "forward"), args.repeats)
    bench_pca(args.samples)


if __name__ == "__main__":
    main()
