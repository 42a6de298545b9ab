"""The orthogonality term as an object, on its own like the kernels: decoder rows and a
step in, a loss out, equal in value and gradient to a naive dense reference written
plainly here, across scans and rescans of the close-pair list, an annealing threshold,
lazy steps, an over-full list and the Matryoshka pair scopes."""

import pytest
import torch
from torch.testing import assert_close

from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.ortho_contrastive import MatryoshkaPairScope, OrthogonalityTerm

D_IN, D_SAE = 32, 96
WIDTHS = [16, 48, 96]


def build_cfg(**kwargs) -> OrthoContrastiveTrainingSAEConfig:
    defaults = dict(d_in=D_IN, d_sae=D_SAE, ortho_anneal_steps=20, ortho_threshold_start=0.5,
                    ortho_threshold_end=0.1, ortho_margin=0.05, ortho_max_pair_fraction=1.0,
                    ortho_lazy_every=1, contrastive_coefficient=0.0)
    return OrthoContrastiveTrainingSAEConfig(**{**defaults, **kwargs})


def naive_term(D: torch.Tensor, tau: float, widths=None, pairs="all") -> torch.Tensor:
    """mean over ordered pairs i != j of relu(|D_i . D_j| - tau)^2, pairs out of scope
    counting 0: the whole cosine matrix at once."""
    n = D.shape[0]
    keep = 1.0 - torch.eye(n)
    if pairs != "all":
        level = torch.zeros(n, dtype=torch.long)
        for start in widths[:-1]:
            level[start:] += 1
        same = (level[:, None] == level[None, :]).float()
        keep = keep * (same if pairs == "within_groups" else 1.0 - same)
    return (torch.relu((D @ D.T).abs() - tau) * keep).pow(2).sum() / (n * (n - 1))


def unit(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=1, keepdim=True)


def rows_along_a_run(steps: int, jump_at: int | None = None):
    """Decoder rows that drift a little every step, and jump once at ``jump_at``."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D_SAE, D_IN, generator=g)
    for step in range(steps):
        yield step, unit(W)
        W = W + (0.5 if step + 1 == jump_at else 0.02) * torch.randn(D_SAE, D_IN, generator=g)


def term_step(term: OrthogonalityTerm, D_leaf: torch.Tensor, step: int, coefficient: float) -> torch.Tensor:
    """One step as the training SAE takes it: the term, then the list's movement check,
    and the step computed again if an unlisted pair could have contributed."""
    loss = term(D_leaf, step, coefficient)
    drift = term.take_drift()
    if drift is not None and term.missed_a_pair(step, drift.item()):
        loss = term(D_leaf, step, coefficient)
        term.after_recompute(step)
    return loss


def value_and_grad(fn, D: torch.Tensor):
    D_leaf = D.clone().requires_grad_()
    value = fn(D_leaf)
    if not value.requires_grad:  # a loss that does not depend on the rows (a lazy step)
        return value.detach(), torch.zeros_like(D)
    (grad,) = torch.autograd.grad(value, D_leaf, allow_unused=True)
    return value.detach(), torch.zeros_like(D) if grad is None else grad


@pytest.mark.parametrize("mode", ["close_pairs", "exact"])
@pytest.mark.parametrize("pairs", ["all", "within_groups", "across_groups"])
def test_every_step_equals_the_naive_term_across_rescans_and_a_falling_threshold(mode, pairs):
    matryoshka = {} if pairs == "all" else dict(sparsity_base="matryoshka_batchtopk", k=8,
                                               matryoshka_widths=WIDTHS, matryoshka_ortho_pairs=pairs)
    cfg = build_cfg(ortho_mode=mode, **matryoshka)
    term = OrthogonalityTerm(cfg, None if pairs == "all" else MatryoshkaPairScope(cfg))
    for step, D in rows_along_a_run(20, jump_at=9):
        tau = term.threshold_at(step)
        got, got_grad = value_and_grad(lambda D_leaf: term_step(term, D_leaf, step, 3.0), D)
        want, want_grad = value_and_grad(lambda D_leaf: 3.0 * naive_term(D_leaf, tau, WIDTHS, pairs), D)
        assert want > 0
        assert_close(got, want, rtol=1e-4, atol=1e-9)
        assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-8)
    lists = term.close_pair_list
    if mode == "close_pairs":  # the run went through several lists and one recomputed step
        assert lists.scans > 1 and lists.recomputed_steps >= 1
    else:
        assert (lists.scans, lists.pairs) == (0, None)


def test_the_threshold_follows_the_cosine_anneal_and_needs_a_horizon():
    term = OrthogonalityTerm(build_cfg())
    assert term.threshold_at(0) == pytest.approx(0.5)
    assert term.threshold_at(10) == pytest.approx(0.3)
    assert term.threshold_at(20) == term.threshold_at(25) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="ortho_anneal_steps=None"):
        OrthogonalityTerm(build_cfg(ortho_anneal_steps=None)).threshold_at(0)


@pytest.mark.parametrize("mode", ["close_pairs", "exact", "chunked"])
def test_weighted_lazy_steps_count_r_times_on_every_r_th_step_and_zero_between(mode):
    """The gradient: r times the term's on every r-th step, none between. The value (what
    is logged): one step's term, and the last computed one between (before: r times the
    term, then 0, which made loss curves jump)."""
    term = OrthogonalityTerm(build_cfg(ortho_mode=mode, ortho_lazy_every=3, ortho_chunk_size=D_SAE))
    for step, D in rows_along_a_run(7):
        got, got_grad = value_and_grad(lambda D_leaf: term_step(term, D_leaf, step, 2.0), D)
        weight = 2.0 * 3 if step % 3 == 0 else 0.0
        want, want_grad = value_and_grad(lambda D_leaf: weight * naive_term(D_leaf, term.threshold_at(step)), D)
        if step % 3 == 0:
            logged = want / 3
        assert term.computes_at(step) == (step % 3 == 0)
        assert_close(got, logged, rtol=1e-4, atol=1e-9)
        assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("mode", ["close_pairs", "exact"])
def test_reuse_keeps_the_value_and_gradient_of_the_last_computing_step(mode):
    term = OrthogonalityTerm(build_cfg(ortho_mode=mode, ortho_lazy_every=3, ortho_lazy_mode="reuse"))
    for step, D in rows_along_a_run(8):
        if step % 3 == 0:  # the value and the gradient with respect to the unit rows, kept
            kept, kept_grad = value_and_grad(lambda D_leaf: naive_term(D_leaf, term.threshold_at(step)), D)
        got, got_grad = value_and_grad(lambda D_leaf: term_step(term, D_leaf, step, 2.0), D)
        assert term.reused_step == step - step % 3
        assert_close(got, 2.0 * kept, rtol=1e-4, atol=1e-9)
        assert_close(got_grad, 2.0 * kept_grad, rtol=1e-4, atol=1e-8)
    assert term.reused_grad_change is not None and 0 < term.reused_grad_change < 10


def test_forget_drops_the_list_and_the_kept_gradient():
    term = OrthogonalityTerm(build_cfg(ortho_lazy_every=3, ortho_lazy_mode="reuse"))
    (_, D0), (_, D1) = list(rows_along_a_run(2))
    term_step(term, D0, 0, 1.0)
    assert term.close_pair_list.scan_step == 0 and term.reused_step == 0
    term.forget()
    assert (term.close_pair_list.pairs, term.close_pair_list.scan_step, term.reused_step) == (None, -1, -1)
    got = term_step(term, D1, 1, 1.0)  # computed again at once, at step 1's rows and threshold
    assert term.reused_step == 1 and term.close_pair_list.scan_step == 1
    assert_close(got, naive_term(D1, term.threshold_at(1)), rtol=1e-4, atol=1e-9)


def test_an_over_full_list_computes_the_exact_term_and_retries_every_rescan_interval():
    term = OrthogonalityTerm(build_cfg(ortho_max_pair_fraction=1e-4, ortho_rescan_every=4))
    for step, D in rows_along_a_run(9):
        got, got_grad = value_and_grad(lambda D_leaf: term_step(term, D_leaf, step, 1.0), D)
        want, want_grad = value_and_grad(lambda D_leaf: naive_term(D_leaf, term.threshold_at(step)), D)
        assert term.close_pair_list.pairs is None and term.take_drift() is None
        assert term.close_pair_list.scan_step == step - step % 4
        assert_close(got, want, rtol=1e-4, atol=1e-9)
        assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-8)
    lists = term.close_pair_list
    assert lists.scans + lists.scans_skipped == 3  # steps 0, 4 and 8


def test_the_over_full_estimate_averages_to_the_exact_term_over_permutations():
    term = OrthogonalityTerm(build_cfg(ortho_overfull_chunks=3))
    (_, D), = list(rows_along_a_run(1))
    estimates = torch.stack([term.overfull_estimate(D, 0.2, step) for step in range(300)])
    assert_close(estimates.mean(), naive_term(D, 0.2), rtol=0.05, atol=0)
    assert estimates.std() > 0  # a new permutation every step
    assert_close(term.overfull_estimate(D, 0.2, 5), term.overfull_estimate(D, 0.2, 5))  # fixed by (seed, step)
