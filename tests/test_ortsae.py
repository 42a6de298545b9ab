"""OrtSAE's penalty (``ortho_mode='ortsae'``): the kernel against a naive reference, the
chunks' permutation, the config's rules, and a run through SAELens's runner."""

import math

import pytest
import torch
from sae_lens import LanguageModelSAETrainingRunner
from torch.testing import assert_close

from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.ortho_term import OrthogonalityTerm
from orthosae_plugin.ortsae import ortsae_penalty
from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset

N, D = 24, 8


def unit_rows(seed: int, n: int = N, d: int = D) -> torch.Tensor:
    W = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return W / W.norm(dim=1, keepdim=True)


def naive_ortsae(D_nd: torch.Tensor, chunk_size: int, perm: list[int]) -> torch.Tensor:
    """The paper's penalty, one latent at a time: chunks are consecutive slices of the
    permutation; each latent's largest squared cosine with another latent of its chunk;
    the mean over all latents (a latent alone in its chunk counts 0)."""
    n = D_nd.shape[0]
    chunks = [perm[start:start + chunk_size] for start in range(0, n, chunk_size)]
    total = D_nd.sum() * 0.0
    for chunk in chunks:
        for i in chunk:
            others = [torch.dot(D_nd[i], D_nd[j]) ** 2 for j in chunk if j != i]
            if others:
                total = total + torch.stack(others).max()
    return total / n


def tiny_cfg(**kwargs) -> OrthoContrastiveTrainingSAEConfig:
    base = dict(d_in=D, d_sae=N, sparsity_base="batchtopk", k=4, ortho_mode="ortsae",
                contrastive_coefficient=0.0, ortho_anneal_steps=100)
    return OrthoContrastiveTrainingSAEConfig(**{**base, **kwargs})


@pytest.mark.parametrize("chunk_size", [N, 100, 12, 8, 5, 2])  # 1 chunk (all latents), 2, 3, 5 (last of 4), 12
def test_the_penalty_matches_the_naive_reference_in_value_and_gradient(chunk_size):
    D_a = unit_rows(0).requires_grad_()
    D_b = D_a.detach().clone().requires_grad_()
    seed = 7
    fast = ortsae_penalty(D_a, chunk_size, torch.Generator().manual_seed(seed))
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed)).tolist()
    slow = naive_ortsae(D_b, chunk_size, perm)
    assert_close(fast, slow)
    fast.backward()
    slow.backward()
    assert_close(D_a.grad, D_b.grad)
    assert slow.item() > 0


def test_one_chunk_is_the_whole_dictionary_whatever_the_permutation():
    D_nd = unit_rows(1)
    cos_sq = (D_nd @ D_nd.T).square().fill_diagonal_(0.0)
    whole = cos_sq.max(dim=1).values.mean()
    for seed in range(3):
        assert_close(ortsae_penalty(D_nd, N, torch.Generator().manual_seed(seed)), whole)


def test_orthogonal_rows_cost_nothing_and_duplicates_cost_one():
    eye = torch.eye(D, dtype=torch.float64)
    assert ortsae_penalty(eye, D, torch.Generator().manual_seed(0)).item() == 0.0
    twice = torch.cat([eye, eye])  # every latent has an exact duplicate
    assert_close(ortsae_penalty(twice, 2 * D, torch.Generator().manual_seed(0)), torch.tensor(1.0, dtype=torch.float64))


def test_the_term_draws_the_same_chunks_from_the_seed_and_step():
    D_nd = unit_rows(2).float()
    cfg = tiny_cfg(ortho_chunk_size=6)
    first, second = OrthogonalityTerm(cfg), OrthogonalityTerm(tiny_cfg(ortho_chunk_size=6))
    for step in (0, 1, 37):
        value = first.penalty(D_nd, 0.0, step)
        # A fresh term (e.g. after a resume) draws the same permutation at the same step.
        assert_close(second.penalty(D_nd, 0.0, step), value)
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(cfg.projection_seed * 1_000_003 + step))
        assert_close(value, naive_ortsae(D_nd, 6, perm.tolist()))
    # Another step or another seed: another permutation, another value.
    assert first.penalty(D_nd, 0.0, 0).item() != first.penalty(D_nd, 0.0, 1).item()
    other_seed = OrthogonalityTerm(tiny_cfg(ortho_chunk_size=6, projection_seed=1))
    assert other_seed.penalty(D_nd, 0.0, 0).item() != first.penalty(D_nd, 0.0, 0).item()


def test_the_term_ignores_the_threshold_and_weighs_by_the_coefficient():
    D_nd = unit_rows(3).float()
    term = OrthogonalityTerm(tiny_cfg(ortho_chunk_size=N, ortho_lazy_every=1))
    assert_close(term.penalty(D_nd, 0.3, 5), term.penalty(D_nd, 0.05, 5))
    assert_close(term(D_nd, 5, 2.5), 2.5 * ortsae_penalty(D_nd, N, torch.Generator()))


@pytest.mark.parametrize(("field", "value"), [
    ("ortho_threshold_end", 0.01), ("ortho_threshold_start", 0.5), ("ortho_matmul_dtype", "bfloat16"),
])
def test_the_config_refuses_fields_ortsae_does_not_read(field, value):
    with pytest.raises(ValueError, match=rf"{field}=.*ortho_mode='ortsae' does not read it"):
        tiny_cfg(**{field: value})


def test_the_config_refuses_a_restricted_matryoshka_scope():
    with pytest.raises(ValueError, match=r"matryoshka_ortho_pairs='within_groups'.*ortho_mode='ortsae'"):
        tiny_cfg(sparsity_base="matryoshka_batchtopk", matryoshka_widths=[6, 12, N],
                 matryoshka_ortho_pairs="within_groups")
    with pytest.raises(ValueError, match=r"ortho_mode='bogus'.*ortsae"):
        tiny_cfg(ortho_mode="bogus")


def test_it_trains_through_saelens_runner_and_lowers_the_penalty(monkeypatch):
    """Toy model, BatchTopK base: the run logs a positive ortho_loss, and the decoder
    ends with a smaller OrtSAE penalty than the same run without it."""
    losses: list[float] = []
    original = OrthoContrastiveTrainingSAE.training_forward_pass

    def spy(self, step_input):
        out = original(self, step_input)
        losses.append(out.losses["ortho_loss"].item())
        return out

    monkeypatch.setattr(OrthoContrastiveTrainingSAE, "training_forward_pass", spy)
    ends = {}
    for coefficient in (0.0, 5.0):
        toy = ToySetup(d_model=16, n_layers=1, d_vocab=64, context_size=8, n_sequences=256, sae_kwargs=dict(
            d_sae=64, sparsity_base="batchtopk", k=4, topk_threshold_lr=0.5, ortho_mode="ortsae",
            ortho_chunk_size=32, ortho_coefficient=coefficient, contrastive_coefficient=0.0, ortho_lazy_every=1,
        ))
        cfg = tiny_runner_config(toy, training_tokens=64 * 40, train_batch_size_tokens=64)
        runner = LanguageModelSAETrainingRunner(cfg, override_model=tiny_model(toy),
                                                override_dataset=tiny_token_dataset(toy))
        sae = runner.run()
        D_nd = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
        ends[coefficient] = ortsae_penalty(D_nd, 64, torch.Generator()).item()
    assert len(losses) == 80
    assert all(math.isfinite(v) for v in losses)
    assert all(v == 0.0 for v in losses[:40]) and all(v > 0.0 for v in losses[40:])
    assert ends[5.0] < ends[0.0]
