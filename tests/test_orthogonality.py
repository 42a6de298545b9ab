"""The thresholded orthogonality penalty against a naive dense reference."""

import math

import pytest
import torch
from torch.nn import functional as F
from torch.testing import assert_close

from orthosae_plugin.orthogonality import (
    close_pair_scan,
    float32_accumulation,
    matmul_rounding_bound,
    decoder_pair_stats,
    drift_bound,
    estimated_close_pairs,
    ortho_penalty_chunked,
    ortho_penalty_exact,
    ortho_penalty_pairs,
    ortho_threshold,
)


def naive_ortho_penalty(D_nd: torch.Tensor, tau: float) -> torch.Tensor:
    """mean over ordered pairs i != j of relu(|cos_ij| - tau)^2, with the full n x n matrix."""
    n = D_nd.shape[0]
    C_nn = D_nd @ D_nd.T
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    excess = torch.relu(C_nn.abs() - tau)[off_diagonal]
    return (excess**2).sum() / (n * (n - 1))


def random_unit_decoder(n: int, d: int, seed: int = 0, correlated: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g, dtype=torch.float64)
    if correlated:  # a few near-duplicate directions so that many pairs exceed tau
        W[n // 2 :] = W[: n - n // 2] + 0.3 * torch.randn(n - n // 2, d, generator=g, dtype=torch.float64)
    return W / W.norm(dim=1, keepdim=True)


def value_and_grad(fn, D_nd):
    D = D_nd.clone().requires_grad_(True)
    loss = fn(D)
    (grad,) = torch.autograd.grad(loss, D)
    return loss.detach(), grad


@pytest.mark.parametrize("block_size", [1, 7, 32, 1000])
@pytest.mark.parametrize("tau", [0.0, 0.05, 0.3])
def test_exact_blockwise_equals_dense_reference_in_value_and_gradient(block_size, tau):
    D = random_unit_decoder(48, 16)
    got, got_grad = value_and_grad(lambda D: ortho_penalty_exact(D, tau, block_size), D)
    want, want_grad = value_and_grad(lambda D: naive_ortho_penalty(D, tau), D)
    assert want > 0
    assert_close(got, want)
    assert_close(got_grad, want_grad)


def test_exact_gradient_reaches_w_dec_through_the_row_normalisation():
    g = torch.Generator().manual_seed(1)
    W_dec = torch.randn(40, 12, generator=g, dtype=torch.float64)
    unit = lambda W: W / W.norm(dim=1, keepdim=True)  # noqa: E731
    _, got = value_and_grad(lambda W: ortho_penalty_exact(unit(W), 0.1, 8), W_dec)
    _, want = value_and_grad(lambda W: naive_ortho_penalty(unit(W), 0.1), W_dec)
    assert_close(got, want)


def test_exact_penalty_is_zero_for_an_orthogonal_dictionary():
    D = torch.eye(16, dtype=torch.float64)
    loss, grad = value_and_grad(lambda D: ortho_penalty_exact(D, 0.05, 4), D)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad) == 0


def test_exact_penalty_only_counts_pairs_above_the_threshold():
    # Two pairs: cos 0.6 (above tau=0.5 by 0.1) and cos 0.4 (below), among 4 latents.
    D = torch.zeros(4, 4, dtype=torch.float64)
    D[0, 0] = 1.0
    D[1, 0], D[1, 1] = 0.6, 0.8
    D[2, 2] = 1.0
    D[3, 2], D[3, 3] = 0.4, math.sqrt(1 - 0.16)
    loss = ortho_penalty_exact(D, 0.5, 2)
    # ordered pairs (0,1) and (1,0) each contribute 0.1^2; 12 ordered pairs in all
    assert_close(loss, torch.tensor(2 * 0.1**2 / 12, dtype=torch.float64))


def test_exact_backward_keeps_no_n_by_n_tensor_for_backward():
    D = random_unit_decoder(64, 8).float().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        ortho_penalty_exact(D, 0.1, 16).backward()
    assert saved, "the autograd graph saved nothing, so this test checks nothing"
    assert all(math.prod(shape) <= 64 * 8 for shape in saved), saved


def test_chunked_with_one_chunk_equals_exact():
    D = random_unit_decoder(30, 10)
    g = torch.Generator().manual_seed(0)
    got, got_grad = value_and_grad(lambda D: ortho_penalty_chunked(D, 0.1, 30, g, 8), D)
    want, want_grad = value_and_grad(lambda D: ortho_penalty_exact(D, 0.1, 8), D)
    assert_close(got, want)
    assert_close(got_grad, want_grad)


def test_chunked_equals_the_naive_penalty_over_the_drawn_chunks():
    n, chunk, tau = 30, 8, 0.1
    D = random_unit_decoder(n, 10)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))

    def naive_chunked(D):
        total, pairs = 0.0, 0
        for idx in perm.split(chunk):
            c = len(idx)
            total = total + naive_ortho_penalty(D[idx], tau) * c * (c - 1)
            pairs += c * (c - 1)
        return total / pairs

    got, got_grad = value_and_grad(
        lambda D: ortho_penalty_chunked(D, tau, chunk, torch.Generator().manual_seed(5), 3), D
    )
    want, want_grad = value_and_grad(naive_chunked, D)
    assert_close(got, want)
    assert_close(got_grad, want_grad)


def test_chunked_is_unbiased_over_permutations():
    D = random_unit_decoder(40, 10)
    exact = ortho_penalty_exact(D, 0.1).item()
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([ortho_penalty_chunked(D, 0.1, 10, g).item() for _ in range(2000)])
    standard_error = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact) < 4 * standard_error


@pytest.mark.parametrize(
    ("step", "want"),
    [(0, 0.3), (500, 0.175), (1000, 0.05), (5000, 0.05), (250, 0.05 + 0.125 * (1 + math.cos(math.pi / 4)))],
)
def test_threshold_is_cosine_annealed_from_start_to_end(step, want):
    assert ortho_threshold(step, 0.3, 0.05, horizon=1000) == pytest.approx(want)


def test_threshold_horizon_must_be_positive():
    with pytest.raises(ValueError, match="horizon=0"):
        ortho_threshold(0, 0.3, 0.05, horizon=0)


def test_pair_stats_match_the_dense_matrix():
    D = random_unit_decoder(33, 9)
    C = (D @ D.T).abs()
    off = ~torch.eye(33, dtype=torch.bool)
    max_abs, frac = decoder_pair_stats(D, 0.2, block_size=5)
    assert max_abs == pytest.approx(C[off].max().item())
    assert frac == pytest.approx((C[off] > 0.2).float().mean().item())


# --- close-pair list ---------------------------------------------------------------


def dense_close_pairs(D_nd: torch.Tensor, threshold: float) -> set[tuple[int, int]]:
    """Every ordered pair i != j with |cos_ij| > threshold, from the full n x n matrix."""
    C_nn = D_nd @ D_nd.T
    n = D_nd.shape[0]
    return {(i, j) for i in range(n) for j in range(n) if i != j and abs(C_nn[i, j].item()) > threshold}


def naive_pair_penalty(D_nd: torch.Tensor, tau: float, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """sum over the listed ordered pairs of relu(|cos_ij| - tau)^2, divided by n (n - 1)."""
    n = D_nd.shape[0]
    total = D_nd.sum() * 0.0
    for i, j in pairs:
        total = total + torch.relu(torch.dot(D_nd[i], D_nd[j]).abs() - tau) ** 2
    return total / (n * (n - 1))


@pytest.mark.parametrize("block_size", [1, 7, 1000])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5])
def test_scan_lists_every_ordered_pair_above_the_threshold_sorted_by_row(block_size, threshold):
    D = random_unit_decoder(40, 12)
    pairs = close_pair_scan(D, threshold, block_size)
    listed = [tuple(p) for p in pairs.tolist()]
    assert pairs.shape[1] == 2
    assert listed == sorted(listed)  # row-major, as a CSR matrix wants
    assert set(listed) == dense_close_pairs(D, threshold)
    assert len(set(listed)) == len(listed)
    assert len(listed) > 0


def test_scan_gives_up_as_soon_as_the_list_would_exceed_max_pairs():
    D = random_unit_decoder(40, 12)
    n_close = len(dense_close_pairs(D, 0.2))
    assert close_pair_scan(D, 0.2, 8, max_pairs=n_close - 1) is None
    assert close_pair_scan(D, 0.2, 8, max_pairs=n_close).shape == (n_close, 2)


def test_the_estimated_count_scales_the_sampled_rows_count_and_is_exact_on_every_row():
    D = random_unit_decoder(40, 12)
    C = (D @ D.T).abs()
    C.fill_diagonal_(0.0)
    assert estimated_close_pairs(D, 0.2, sample_rows=40) == len(dense_close_pairs(D, 0.2))
    rows = torch.arange(0, 40, 4)  # 10 evenly spaced rows: every 4th
    assert estimated_close_pairs(D, 0.2, sample_rows=10) == (C[rows] > 0.2).sum().item() * 4


def test_scan_of_an_orthogonal_dictionary_is_empty():
    pairs = close_pair_scan(torch.eye(16, dtype=torch.float64), -0.5, 4)
    assert pairs.shape == (0, 2)


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.3])
def test_pair_penalty_equals_a_naive_sum_over_the_listed_pairs(tau):
    D = random_unit_decoder(30, 10)
    # a list that holds pairs below tau and misses some above: only the listed ones count
    pairs = close_pair_scan(D, 0.2, 4)
    as_list = [tuple(p) for p in pairs.tolist()]
    got, got_grad = value_and_grad(lambda D: ortho_penalty_pairs(D, tau, pairs), D)
    want, want_grad = value_and_grad(lambda D: naive_pair_penalty(D, tau, as_list), D)
    assert want > 0
    assert_close(got, want)
    assert_close(got_grad, want_grad)


def test_pair_penalty_equals_exact_until_a_pair_crosses_the_margin():
    tau, margin = 0.3, 0.05
    D0 = random_unit_decoder(48, 16)
    pairs = close_pair_scan(D0, tau - margin, 16)  # the scan, then the decoder moves
    g = torch.Generator().manual_seed(3)
    step = torch.randn(D0.shape, generator=g, dtype=torch.float64)
    moved = lambda size: F.normalize(D0 + size * step, dim=1)  # noqa: E731
    max_move = lambda D: (D @ D.T - D0 @ D0.T).abs().max().item()  # noqa: E731

    small = moved(0.005)
    assert max_move(small) < margin  # no pair has crossed the margin
    got, got_grad = value_and_grad(lambda D: ortho_penalty_pairs(D, tau, pairs), small)
    want, want_grad = value_and_grad(lambda D: ortho_penalty_exact(D, tau, 16), small)
    assert want > 0
    assert_close(got, want)
    assert_close(got_grad, want_grad)

    large = moved(0.2)  # pairs outside the list now exceed tau: the stale list misses them
    assert max_move(large) > margin
    assert ortho_penalty_pairs(large, tau, pairs) < ortho_penalty_exact(large, tau, 16)


def test_pair_penalty_over_an_empty_list_is_zero_with_a_zero_gradient():
    D = random_unit_decoder(10, 4)
    loss, grad = value_and_grad(lambda D: ortho_penalty_pairs(D, 0.1, close_pair_scan(D, 2.0)), D)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad) == 0


def test_pair_penalty_keeps_only_the_decoder_and_per_pair_values_for_backward():
    n, d = 64, 8
    D = random_unit_decoder(n, d).float().requires_grad_(True)
    pairs = close_pair_scan(D.detach(), 0.1, 16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        ortho_penalty_pairs(D, 0.2, pairs).backward()
    assert saved, "the autograd graph saved nothing, so this test checks nothing"
    # D itself, the (P, 2) list and the P cosines: nothing of size n x n, nothing P x d
    assert all(math.prod(shape) <= max(n * d, pairs.numel()) for shape in saved), saved
    assert pairs.shape[0] < n * (n - 1)


def test_pair_penalty_refuses_a_list_that_is_not_p_by_2():
    with pytest.raises(ValueError, match=r"pairs_P2 of shape \(5,\) is invalid: it must be \(P, 2\)"):
        ortho_penalty_pairs(torch.eye(4), 0.1, torch.zeros(5, dtype=torch.long))


# --- the movement bound behind close_pairs' exactness ----------------------------------


def test_exact_value_without_a_gradient_is_the_same_as_with_one():
    D = random_unit_decoder(40, 16)
    with torch.no_grad():
        no_grad = ortho_penalty_exact(D, 0.1, 8)
    assert_close(no_grad, naive_ortho_penalty(D, 0.1))
    assert_close(no_grad, value_and_grad(lambda D: ortho_penalty_exact(D, 0.1, 8), D)[0])


def test_drift_bound_is_the_sum_of_the_two_largest_row_movements():
    D_scan = random_unit_decoder(30, 8)
    D = random_unit_decoder(30, 8, seed=1)
    moved = sorted(((D - D_scan).norm(dim=1)).tolist(), reverse=True)
    assert_close(drift_bound(D, D_scan).item(), moved[0] + moved[1])


@pytest.mark.parametrize("step_size", [0.01, 0.1, 1.0])
def test_no_cosine_moves_more_than_the_drift_bound(step_size):
    # |a'.b' - a.b| <= ||a' - a|| + ||b' - b|| for unit rows: every pair, checked densely.
    D_scan = random_unit_decoder(64, 12)
    g = torch.Generator().manual_seed(2)
    D = F.normalize(D_scan + step_size * torch.randn(64, 12, generator=g, dtype=torch.float64), dim=1)
    moved_n = (D - D_scan).norm(dim=1)
    change_nn = (D @ D.T - D_scan @ D_scan.T).abs()
    assert (change_nn <= moved_n[:, None] + moved_n[None, :] + 1e-12).all()
    off_diagonal = ~torch.eye(64, dtype=torch.bool)
    assert change_nn[off_diagonal].max() <= drift_bound(D, D_scan) + 1e-12


# ------------------------------------------------------------------ bf16 products


def test_bf16_products_keep_every_cosine_within_the_stated_bound():
    D = random_unit_decoder(300, 64, seed=5).float()
    exact = D @ D.T
    rounded = (D.bfloat16() @ D.bfloat16().T).float()
    bound = matmul_rounding_bound(torch.bfloat16)
    assert bound == pytest.approx(3 * 2.0**-8)
    assert (rounded - exact).abs().max() <= bound
    assert matmul_rounding_bound(None) == 0.0


@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_exact_with_bf16_products_is_close_to_the_reference_in_value_and_gradient(tau):
    D = random_unit_decoder(96, 32, seed=2).float()
    got, got_grad = value_and_grad(lambda D: ortho_penalty_exact(D, tau, 40, matmul_dtype=torch.bfloat16), D)
    want, want_grad = value_and_grad(lambda D: naive_ortho_penalty(D, tau), D)
    assert want > 0
    assert got.dtype == torch.float32 and got_grad.dtype == torch.float32
    assert abs(got - want) / want < 0.02
    assert (got_grad - want_grad).norm() / want_grad.norm() < 0.02
    assert F.cosine_similarity(got_grad.flatten(), want_grad.flatten(), dim=0) > 0.999


def test_a_bf16_scan_lists_every_pair_a_float32_scan_lists():
    D = random_unit_decoder(200, 24, seed=3).float()
    for threshold in (0.05, 0.2, 0.5):
        full = set(map(tuple, close_pair_scan(D, threshold, 64).tolist()))
        bf16 = set(map(tuple, close_pair_scan(D, threshold, 64, matmul_dtype=torch.bfloat16).tolist()))
        assert full <= bf16
        C = D @ D.T
        for i, j in bf16 - full:  # the extra pairs lie within twice the bound below it
            assert abs(C[i, j]) > threshold - 2 * matmul_rounding_bound(torch.bfloat16)


def test_chunked_passes_the_products_dtype_on():
    D = random_unit_decoder(64, 16, seed=4).float()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    bf16 = ortho_penalty_chunked(D, 0.1, 64, g(), matmul_dtype=torch.bfloat16)
    assert_close(bf16, ortho_penalty_exact(D, 0.1, matmul_dtype=torch.bfloat16))
    assert bf16 != ortho_penalty_exact(D, 0.1)


def test_bf16_products_accumulate_in_float32_while_they_run_and_the_flag_is_put_back(monkeypatch):
    flags = torch.backends.cuda.matmul  # a module of properties: set and restored by hand
    before = flags.allow_bf16_reduced_precision_reduction
    flags.allow_bf16_reduced_precision_reduction = True
    seen = []
    D = random_unit_decoder(32, 8, seed=6).float()
    original_to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):  # observed at the products' casts
        seen.append(flags.allow_bf16_reduced_precision_reduction)
        return original_to(self, *args, **kwargs)

    try:
        monkeypatch.setattr(torch.Tensor, "to", recording_to)
        ortho_penalty_exact(D.requires_grad_(), 0.1, 8, matmul_dtype=torch.bfloat16)
        close_pair_scan(D.detach(), 0.1, 8, matmul_dtype=torch.bfloat16)
        monkeypatch.setattr(torch.Tensor, "to", original_to)
        assert False in seen  # inside: reduced-precision reduction off
        assert flags.allow_bf16_reduced_precision_reduction is True  # afterwards: as it was
        with float32_accumulation(None):  # full precision: nothing touched
            assert flags.allow_bf16_reduced_precision_reduction is True
    finally:
        flags.allow_bf16_reduced_precision_reduction = before
