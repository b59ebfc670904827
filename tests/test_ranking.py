"""The pieces of the float32 ranking (``intentrec.ranking``) that its exactness rests on."""

from __future__ import annotations

import pytest
import torch

from intentrec.ranking import _error_bound, activation_thresholds, scores_of_record


def test_scores_of_record_add_left_to_right_whatever_the_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 33, generator=g) * 10
    weight = torch.randn(50, 33, generator=g)
    bias = torch.randn(50, generator=g)
    rows = torch.randint(0, 7, (200,), generator=g)
    cols = torch.randint(0, 50, (200,), generator=g)
    got = scores_of_record(hidden, weight, bias, rows, cols)
    for p in range(200):
        acc = 0.0  # Python floats are float64: the explicit order k = 0..d-1, then the bias
        for k in range(33):
            acc += float(hidden[rows[p], k]) * float(weight[cols[p], k])
        assert got[p].item() == acc + float(bias[cols[p]])
    # The same pair gives the same bits alone, in a small call and in a large one.
    assert torch.equal(scores_of_record(hidden, weight, bias, rows[5:6], cols[5:6]), got[5:6])
    assert torch.equal(scores_of_record(hidden, weight, bias, rows[:3], cols[:3]), got[:3])


def test_activation_threshold_is_the_smallest_float_reaching_the_target() -> None:
    targets = torch.tensor([20.0, 0.5, -3.0, -30.0, 0.0], dtype=torch.float32)
    z = activation_thresholds(targets, torch.tanh)
    for zi, t in zip(z, targets):
        assert torch.tanh(zi) >= torch.tanh(t)  # reaches the target's activated score
        assert zi <= t
        if zi > float("-inf"):  # and it is the smallest that does
            assert torch.tanh(torch.nextafter(zi, torch.tensor(float("-inf")))) < torch.tanh(t)
    assert z[3] == float("-inf")  # tanh(-30) = -1.0 = tanh(-inf): every item ties or beats
    assert z[0] < 10  # tanh saturates at 1.0 in float32 long before 20
    assert z[1] == targets[1]  # no saturation: the target's own score
    # relu: a target at or below 0 ties with everything (-inf), above 0 only with itself.
    relu = activation_thresholds(torch.tensor([-2.0, 0.0, 1.5]), torch.relu)
    assert relu.tolist() == [float("-inf"), float("-inf"), 1.5]


def test_error_bound_covers_the_float32_gemm() -> None:
    """|float32 GEMM - exact| stays far inside the bound used to decide (half of it)."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 256, generator=g)
    weight = torch.randn(4000, 256, generator=g)
    z = torch.randn(64, generator=g)
    exact = hidden.double() @ weight.double().T - z.double()[:, None]  # [N, V]
    rough = hidden @ weight.T - z[:, None]
    bound = _error_bound(hidden, weight, None, z.double(), 2.0**-24)  # [N]
    worst = ((rough.double() - exact).abs().max(1).values / (bound / 2)).max()
    assert worst < 0.1


def test_max_item_norm_is_the_finiteness_check_of_the_items() -> None:
    from intentrec.ranking import max_item_norm

    weight = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    norms = weight[1:].double().norm(dim=1)
    assert float(max_item_norm(weight)) == pytest.approx(float(norms.max()), rel=1e-6)
    weight[0] = float("nan")  # the padding row is not an item
    assert torch.isfinite(max_item_norm(weight))
    for bad in (float("nan"), float("inf"), float("-inf"), 1e30):  # 1e30: its norm overflows
        broken = weight.clone()
        broken[57, 3] = bad
        assert not torch.isfinite(max_item_norm(broken)), bad


def test_items_whose_norm_overflows_are_ranked_by_the_float64_path() -> None:
    from intentrec.metrics import target_ranks

    gen = torch.Generator().manual_seed(1)
    weight, hidden = torch.randn(300, 8, generator=gen), torch.randn(40, 8, generator=gen)
    weight[7] = 3e19  # finite, but its squared norm is not a float32
    targets = torch.randint(1, 300, (40,), generator=gen)
    fast = target_ranks(hidden, weight, None, targets, 64, score_dtype="float32")
    reference = target_ranks(hidden, weight, None, targets, 64, score_dtype="float64")
    assert torch.equal(fast, reference)
