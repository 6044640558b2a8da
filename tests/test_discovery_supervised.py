"""Supervised directions and joint projection (ALGORITHMS.md §2.6; acceptance tests 20, 21)."""
import pytest
import torch

from hspace_core.discovery.supervised import (disentangle, linear_probe_direction, mean_difference,
                                              supervised_direction, top_bottom_k)
from hspace_core.errors import HSpaceError

torch.set_num_threads(1)


def test_mean_difference_is_the_difference_of_means_and_linear():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(7, 2, 4, 3, 3, generator=g), torch.randn(5, 2, 4, 3, 3, generator=g)
    torch.testing.assert_close(mean_difference(pos, neg), pos.mean(0) - neg.mean(0))
    pos2, neg2 = torch.randn(7, 2, 4, 3, 3, generator=g), torch.randn(5, 2, 4, 3, 3, generator=g)
    torch.testing.assert_close(mean_difference(2 * pos + 3 * pos2, 2 * neg + 3 * neg2),
                               2 * mean_difference(pos, neg) + 3 * mean_difference(pos2, neg2))
    paired_pos, paired_neg = pos[:5], neg
    torch.testing.assert_close(mean_difference(paired_pos, paired_neg), (paired_pos - paired_neg).mean(0))


def test_top_bottom_selection():
    scores = torch.tensor([0.3, 0.9, -1.0, 0.5, 0.95, 0.0, -0.2])
    top, bottom = top_bottom_k(scores, 2)
    assert top.tolist() == [4, 1] and bottom.tolist() == [2, 6]
    h = torch.arange(7.0).view(7, 1, 1, 1) * torch.ones(7, 2, 2, 2)
    torch.testing.assert_close(supervised_direction(h, scores, 2), torch.full((2, 2, 2), 2.5 - 4.0))
    with pytest.raises(HSpaceError, match="2K distinct"):
        top_bottom_k(scores, 4)
    with pytest.raises(HSpaceError, match="one score per sample"):
        supervised_direction(h, scores[:3], 1)


def test_linear_probe_recovers_the_separating_axis():
    g = torch.Generator().manual_seed(1)
    axis = torch.zeros(4, 2, 2)
    axis[1, 0, 1] = 1.0
    noise = lambda n: torch.randn(n, 4, 2, 2, generator=g) * torch.linspace(0.1, 3.0, 16).view(4, 2, 2)
    pos, neg = noise(60) + 1.5 * axis, noise(60) - 1.5 * axis
    normal = linear_probe_direction(pos, neg)
    assert abs(float(normal.norm()) - 1) < 1e-6
    assert float((normal * axis).sum()) > 0.9


def test_joint_projection_is_exact_idempotent_and_identity_on_orthogonal():
    g = torch.Generator().manual_seed(2)
    n = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    conditions = [torch.randn(3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    projected = disentangle(n, conditions)
    for c in conditions:
        assert abs(float((projected * c).sum())) < 1e-8 * float(n.norm() * c.norm())
    torch.testing.assert_close(disentangle(projected, conditions), projected, atol=1e-12, rtol=0)
    e = torch.eye(48, dtype=torch.float64)
    torch.testing.assert_close(disentangle(e[0].view(3, 4, 4), [e[1].view(3, 4, 4), e[2].view(3, 4, 4)]),
                               e[0].view(3, 4, 4))
    torch.testing.assert_close(disentangle(n, torch.stack(conditions)), projected)


def test_joint_differs_from_sequential_for_correlated_conditions():
    g = torch.Generator().manual_seed(3)
    n = torch.randn(32, generator=g, dtype=torch.float64)
    c1 = torch.randn(32, generator=g, dtype=torch.float64)
    c2 = c1 + 0.3 * torch.randn(32, generator=g, dtype=torch.float64)  # strongly correlated with c1
    sequential = n.clone()
    for c in (c1, c2):
        sequential = sequential - (sequential @ c) / (c @ c) * c
    joint = disentangle(n, [c1, c2])
    assert abs(float(sequential @ c1)) > 1e-3 * float(n.norm() * c1.norm())  # residual left behind
    assert abs(float(joint @ c1)) < 1e-10 and abs(float(joint @ c2)) < 1e-10
    assert (joint - sequential).norm() > 1e-3


def test_dependent_conditions_and_bad_shapes():
    n = torch.tensor([1.0, 2.0, 3.0])
    c = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(disentangle(n, [c, 2 * c]), torch.tensor([0.0, 2.0, 3.0]))
    torch.testing.assert_close(disentangle(n, [torch.zeros(3)]), n)
    with pytest.raises(HSpaceError, match="shape"):
        disentangle(n, [torch.zeros(4)])
    with pytest.raises(HSpaceError, match="same per-sample shape"):
        mean_difference(torch.zeros(2, 3), torch.zeros(2, 4))
