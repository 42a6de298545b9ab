"""The self-contrastive InfoNCE loss against a naive reference, projected and exact."""

import math

import pytest
import torch
from torch.testing import assert_close

from orthosae_plugin.contrastive import make_projection, self_contrastive_loss


def naive_contrastive_loss(x, x_hat, temperature, P=None):
    """Written out row by row: -log softmax of each reconstruction's similarity to its own input."""
    B = x.shape[0]
    c = sum(x[i] for i in range(B)) / B
    proj = (lambda v: v @ P) if P is not None else (lambda v: v)
    z = [proj(x[j] - c) for j in range(B)]
    z = [v / v.norm() for v in z]
    total = 0.0
    for i in range(B):
        zh = proj(x_hat[i] - c)
        zh = zh / zh.norm()
        logits = torch.stack([torch.dot(zh, z[j]) / temperature for j in range(B)])
        total = total - (logits[i] - torch.logsumexp(logits, dim=0))
    return total / B


def batch(B=12, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=torch.float64) + 3.0  # a shared offset, as in residual streams
    x_hat = x + 0.5 * torch.randn(B, d, generator=g, dtype=torch.float64)
    return x, x_hat


@pytest.mark.parametrize("k", [None, 4, 16])
@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_loss_and_gradient_match_the_naive_reference(k, temperature):
    x, x_hat = batch()
    P = None if k is None else make_projection(20, k, seed=3, dtype=torch.float64)
    xh1 = x_hat.clone().requires_grad_(True)
    xh2 = x_hat.clone().requires_grad_(True)
    got = self_contrastive_loss(x, xh1, temperature, P)
    want = naive_contrastive_loss(x, xh2, temperature, P)
    got.backward()
    want.backward()
    assert_close(got.double(), want)
    assert_close(xh1.grad, xh2.grad)


@pytest.mark.parametrize("k", [None, 4])
@pytest.mark.parametrize("block_size", [1, 5, 12, 1000])
def test_block_size_changes_nothing_but_memory(k, block_size):
    x, x_hat = batch()
    P = None if k is None else make_projection(20, k, seed=3, dtype=torch.float64)
    xh1 = x_hat.clone().requires_grad_(True)
    xh2 = x_hat.clone().requires_grad_(True)
    got = self_contrastive_loss(x, xh1, 0.1, P, block_size=block_size)
    want = naive_contrastive_loss(x, xh2, 0.1, P)
    got.backward()
    want.backward()
    assert_close(got.double(), want)
    assert_close(xh1.grad, xh2.grad)


def test_the_loss_is_the_same_without_a_gradient():
    x, x_hat = batch()
    with_grad = self_contrastive_loss(x, x_hat.clone().requires_grad_(True), 0.1, block_size=5)
    with torch.no_grad():
        without = self_contrastive_loss(x, x_hat, 0.1, block_size=5)
    assert_close(without, with_grad.detach())


def test_no_batch_by_batch_tensor_is_kept_for_backward():
    B, d, k = 64, 20, 4
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, generator=g)
    x_hat = (x + 0.1 * torch.randn(B, d, generator=g)).requires_grad_(True)
    P = make_projection(d, k, seed=0)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        self_contrastive_loss(x, x_hat, 0.1, P, block_size=16).backward()
    assert saved, "the autograd graph saved nothing, so this test checks nothing"
    assert all(math.prod(shape) < B * B for shape in saved), saved
    assert x_hat.grad is not None


def test_no_gradient_flows_into_the_inputs():
    x, x_hat = batch()
    x.requires_grad_(True)
    x_hat.requires_grad_(True)
    self_contrastive_loss(x, x_hat, 0.1).backward()
    assert x.grad is None
    assert x_hat.grad is not None


def test_perfect_reconstructions_give_a_lower_loss_than_shuffled_ones():
    x, _ = batch()
    perfect = self_contrastive_loss(x, x.clone(), 0.1)
    shuffled = self_contrastive_loss(x, x[torch.randperm(12)], 0.1)
    assert perfect < shuffled
    assert perfect < math.log(12)  # better than chance


def test_projection_is_fixed_by_its_seed_with_entries_of_variance_one_over_k():
    P = make_projection(512, 128, seed=7)
    assert P.shape == (512, 128)
    assert torch.equal(P, make_projection(512, 128, seed=7))
    assert not torch.equal(P, make_projection(512, 128, seed=8))
    assert P.mean().item() == pytest.approx(0.0, abs=0.01)
    assert P.var().item() == pytest.approx(1 / 128, rel=0.05)


def test_batch_of_one_is_refused():
    x, x_hat = batch(B=1)
    with pytest.raises(ValueError, match="batch size=1 .* at least 2"):
        self_contrastive_loss(x, x_hat, 0.1)


def test_non_positive_temperature_is_refused():
    x, x_hat = batch()
    with pytest.raises(ValueError, match="temperature=0 .* > 0"):
        self_contrastive_loss(x, x_hat, 0)


def test_non_positive_block_size_is_refused():
    x, x_hat = batch()
    with pytest.raises(ValueError, match="block_size=0 .* >= 1"):
        self_contrastive_loss(x, x_hat, 0.1, block_size=0)
