"""The thresholded orthogonality penalty against a naive dense reference."""

import math

import pytest
import torch
from torch.testing import assert_close

from orthosae_plugin.orthogonality import (
    decoder_pair_stats,
    ortho_penalty_chunked,
    ortho_penalty_exact,
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
