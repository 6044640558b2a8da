"""PCA directions (ALGORITHMS.md §2.4; acceptance test 14, 15)."""
import numpy as np
import pytest
import torch

from hspace_core.direction import Direction, Trajectory
from hspace_core.discovery.pca import pca_directions
from hspace_core.errors import HSpaceError

torch.set_num_threads(1)


def _data(n=12, s=3, shape=(2, 3, 3), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.1, int(np.prod(shape)), dtype=dtype)
    h = torch.randn(n, s, *shape, generator=g, dtype=dtype) * scales.view(*shape)
    return h + 5.0  # a mean far from zero: centring must matter


def _match_up_to_sign(a, b, atol):
    signs = torch.sign((a * b).sum(-1, keepdim=True))
    torch.testing.assert_close(a * signs, b, atol=atol, rtol=0)


@pytest.mark.parametrize("method", ["gram", "svd", "covariance", "randomized"])
def test_components_match_numpy_svd(method):
    h = _data(n=12)
    res = pca_directions(h, num_components=5, method=method, tol=1e-12, max_iter=200)
    assert res.method == method
    for t in range(h.shape[1]):
        x = h[:, t].reshape(12, -1).numpy()
        x = x - x.mean(0)
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        comps = res.components[t]
        eye = comps @ comps.T
        assert (eye - torch.eye(5, dtype=eye.dtype)).abs().max() < 1e-6
        _match_up_to_sign(comps, torch.from_numpy(vt[:5]), atol=1e-6)
        torch.testing.assert_close(res.stds[t], torch.from_numpy(s[:5] / np.sqrt(11)), rtol=1e-6, atol=0)
        assert torch.all(res.stds[t][1:] <= res.stds[t][:-1])
        expected_ratio = float((s[:5] ** 2).sum() / (s ** 2).sum())
        torch.testing.assert_close(res.explained_variance_ratio[t].sum(), torch.tensor(expected_ratio, dtype=torch.float64))


def test_gram_route_equals_direct_svd_when_n_less_than_d():
    h = _data(n=6, shape=(4, 4, 4))  # d = 64 > n
    gram = pca_directions(h, num_components=4, method="gram")
    direct = pca_directions(h, num_components=4, method="svd")
    torch.testing.assert_close(gram.components, direct.components, atol=1e-8, rtol=0)
    torch.testing.assert_close(gram.stds, direct.stds, rtol=1e-10, atol=0)
    assert pca_directions(h, num_components=4).method == "gram"
    assert pca_directions(_data(n=30, shape=(1, 2, 2)), num_components=2).method == "covariance"  # n >= d


def test_signs_first_coordinate_and_alignment_with_first_step():
    h = _data(n=20, s=5)
    res = pca_directions(h, num_components=4)
    assert torch.all(res.components[0, :, 0] > 0)
    agreement = (res.components * res.components[:1]).sum(-1)
    assert torch.all(agreement > 0)
    concat = pca_directions(h, num_components=4, per_timestep=False)
    assert torch.all(concat.components[0, :, 0] > 0)


def test_planted_direction_is_recovered():
    g = torch.Generator().manual_seed(3)
    d = 4 * 4 * 4
    w = torch.randn(d, generator=g)
    w /= w.norm()
    n = 200
    h = torch.randn(n, d, generator=g) * 0.3 + torch.randn(n, 1, generator=g) * 5.0 * w
    res = pca_directions(h.reshape(n, 1, 4, 4, 4), num_components=3)
    assert abs(float(res.components[0, 0] @ w)) > 0.99
    assert res.explained_variance_ratio[0, 0] > 0.8


def test_per_timestep_and_concatenated_agree_with_one_step():
    h = _data(n=10, s=1)
    a = pca_directions(h, num_components=3, per_timestep=True)
    b = pca_directions(h, num_components=3, per_timestep=False)
    torch.testing.assert_close(a.components, b.components)
    torch.testing.assert_close(a.stds, b.stds)


def test_concatenated_is_pca_of_the_flattened_trajectory():
    h = _data(n=9, s=3)
    res = pca_directions(h, num_components=2, per_timestep=False)
    x = h.reshape(9, -1).numpy()
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    _match_up_to_sign(res.components[0], torch.from_numpy(vt[:2]), atol=1e-8)
    assert res.direction(0, scaled=False).shape == (3, 2, 3, 3)
    assert abs(float(res.direction(0, scaled=False).norm()) - 1) < 1e-10


@pytest.mark.parametrize("method", ["covariance", "randomized"])
def test_streamed_chunks_equal_in_memory(method):
    h = _data(n=23, s=2)
    chunks = list(h.split(5))
    streamed = pca_directions(chunks, num_components=4, method=method, tol=1e-12, max_iter=300)
    reference = pca_directions(h, num_components=4, method="svd")
    torch.testing.assert_close(streamed.components, reference.components, atol=1e-6, rtol=0)
    torch.testing.assert_close(streamed.stds, reference.stds, rtol=1e-8, atol=0)
    torch.testing.assert_close(streamed.mean, reference.mean)
    assert streamed.num_samples == 23


def test_factory_of_chunks_and_progress_callback_can_stop():
    h = _data(n=16, s=2)
    seen = []
    res = pca_directions(lambda: iter(h.split(4)), num_components=2, method="randomized",
                         callback=seen.append)
    assert res.num_samples == 16 and seen and seen[-1]["samples"] == 16

    class Stop(Exception):
        pass

    def stop(info):
        raise Stop

    with pytest.raises(Stop):
        pca_directions(list(h.split(4)), num_components=2, method="covariance", callback=stop)


def test_one_shot_iterator_single_pass_only():
    h = _data(n=10, s=2)
    res = pca_directions(iter(h.split(3)), num_components=2, method="covariance")
    assert res.num_samples == 10
    with pytest.raises(HSpaceError, match="several times"):
        pca_directions(iter(h.split(3)), num_components=2, method="randomized")


def test_auto_picks_randomized_under_a_small_memory_budget():
    h = _data(n=30, s=2, shape=(4, 4, 4))
    res = pca_directions(list(h.split(7)), num_components=3, max_memory_bytes=1000, tol=1e-10, max_iter=500)
    assert res.method == "randomized"
    ref = pca_directions(h, num_components=3)
    torch.testing.assert_close(res.stds, ref.stds, rtol=1e-6, atol=0)


def test_direction_units_and_metadata():
    h = _data(n=10, s=3).float()
    res = pca_directions(Trajectory(h, [900, 500, 100], [1.0, 0.5, 0.1]), num_components=2)
    unit = res.direction(1, scaled=False)
    scaled = res.direction(1)
    assert unit.dtype == torch.float32 and unit.shape == (3, 2, 3, 3)
    torch.testing.assert_close(scaled.flatten(1).norm(dim=1), res.stds[:, 1].float())
    d = res.to_direction(1, [900, 500, 100])
    assert isinstance(d, Direction) and d.meta["units"] == "std" and d.meta["method"] == "pca"
    with pytest.raises(HSpaceError, match="3 timesteps"):
        res.to_direction(0, [1, 2])


def test_rank_deficient_data_stays_finite():
    h = _data(n=3, shape=(4, 4, 4)).repeat(2, 1, 1, 1, 1)  # 6 samples, rank 2 after centring
    res = pca_directions(h, num_components=5, method="gram")
    assert torch.isfinite(res.components).all() and torch.isfinite(res.stds).all()
    assert torch.all(res.stds[:, 2:] < 1e-6 * res.stds[:, :1])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(HSpaceError, match=r"\[N, S, C, H, W\]"):
        pca_directions(torch.zeros(4, 3, 2))
    with pytest.raises(HSpaceError, match="at least 2 samples"):
        pca_directions(torch.zeros(1, 1, 1, 2, 2))
    with pytest.raises(HSpaceError, match="NaN"):
        pca_directions(torch.full((3, 1, 1, 2, 2), float("nan")))
    with pytest.raises(HSpaceError, match="empty"):
        pca_directions([], method="covariance")
    with pytest.raises(HSpaceError, match="per-sample shape"):
        pca_directions([torch.zeros(2, 1, 1, 2, 2), torch.zeros(2, 1, 1, 2, 3)], method="covariance")
    with pytest.raises(HSpaceError, match="in memory"):
        pca_directions([torch.zeros(2, 1, 1, 2, 2)], method="gram")


@pytest.mark.parametrize("method", ["covariance", "randomized"])
def test_chunks_are_read_in_small_work_blocks_with_the_same_result(method, monkeypatch):
    from hspace_core.discovery import pca

    h = _data(n=30, s=2)
    reference = pca_directions([h], num_components=3, method=method, tol=1e-7, max_iter=300)
    monkeypatch.setattr(pca, "WORK_BYTES", 8 * 2 * 18 * 4)  # 4 samples per block, one chunk of 30
    split = pca_directions([h], num_components=3, method=method, tol=1e-7, max_iter=300)
    torch.testing.assert_close(split.components, reference.components, atol=1e-8, rtol=0)
    torch.testing.assert_close(split.stds, reference.stds, rtol=1e-10, atol=0)


def _signal_plus_noise_tail(n=400, d=60, rank=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64)).Q.T
    coefficients = torch.randn(n, rank, generator=g, dtype=torch.float64) * torch.linspace(10, 4, rank,
                                                                                             dtype=torch.float64)
    h = coefficients @ basis + torch.randn(n, d, generator=g, dtype=torch.float64)  # a flat noise tail
    return h.reshape(n, 1, d, 1, 1)


def test_randomized_converges_on_the_components_asked_for_despite_a_noise_tail():
    h = _signal_plus_noise_tail()
    res = pca_directions(list(h.split(100)), num_components=8, method="randomized", oversample=4, max_iter=30)
    assert res.converged and res.iterations < 30 and res.residual <= 1e-4
    exact = pca_directions(h, num_components=8, method="svd")
    # the planted components (clear gaps) are accurate; the noise-tail ones need not be, but their variances are
    cos = (res.components[0, :5] * exact.components[0, :5]).sum(-1).abs()
    assert float(cos.min()) > 0.999
    torch.testing.assert_close(res.stds[0, :8], exact.stds[0, :8], rtol=1e-3, atol=0)


def test_randomized_reports_not_converged_at_the_pass_limit():
    h = _signal_plus_noise_tail()
    res = pca_directions(list(h.split(100)), num_components=8, method="randomized", oversample=0, max_iter=2,
                         tol=1e-9)
    assert not res.converged and res.iterations == 2 and res.residual > 1e-9
    assert pca_directions(h, num_components=3, method="gram").converged


def _largest_new_allocation(run) -> int:
    """Bytes of the largest storage any torch op makes during ``run()`` (views of existing storage excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    largest = [0]

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor)}
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    largest[0] = max(largest[0], t.untyped_storage().nbytes())
            return out

    with Allocations():
        run()
    return largest[0]


def test_streaming_allocations_do_not_grow_with_the_chunk_size(monkeypatch):
    from hspace_core import checks
    from hspace_core.discovery import pca

    h = _data(n=64, s=2, shape=(4, 4, 4)).transpose(3, 4)  # strided chunks: no contiguous copy of a whole one
    monkeypatch.setattr(pca, "WORK_BYTES", 8 * 2 * 64 * 4)  # 4 samples per work block
    monkeypatch.setattr(checks, "FINITE_CHECK_ELEMENTS", 2 * 64 * 4)

    def largest(chunk):
        return _largest_new_allocation(lambda: pca_directions(list(h.split(chunk)), num_components=3,
                                                              method="randomized", max_iter=2))

    small, whole = largest(8), largest(64)
    assert small == whole < h.numel() * h.element_size() / 4  # the Q and Z blocks, never a chunk-sized copy
    bad = h.clone()
    bad[-1, -1, -1, -1, -1] = float("nan")  # in the last slice the finiteness check reads
    with pytest.raises(HSpaceError, match="NaN or Inf"):
        pca_directions([bad], num_components=3, method="randomized")


def test_the_previous_chunk_is_released_before_the_next_is_made():
    import weakref

    h = _data(n=40, s=2)
    alive_at_next = []

    def chunks():
        previous = None
        for part in h.split(10):
            alive_at_next.append(previous is not None and previous() is not None)
            chunk = part.clone()
            previous = weakref.ref(chunk)
            yield chunk
            del chunk

    for method in ("covariance", "randomized"):
        pca_directions(chunks, num_components=3, method=method, max_iter=2)
    assert len(alive_at_next) > 8 and not any(alive_at_next)
