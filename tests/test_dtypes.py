"""The ortho and contrastive terms train in every dtype SAELens trains in (CPU).

Found on CPU, torch 2.13: float32, float64 and bfloat16 SAEs train through SAELens's
``SAETrainer`` (before this change, bfloat16 and float64 crashed at step 0 with
``expected m1 and m2 to have the same dtype`` in the contrastive term). A float16 SAE
computes both terms and their gradients at step 0 (before: the same crash), but SAELens's
Adam step then writes NaN into float16 weights, for SAELens's own ``standard`` exactly as
for ours (Adam's second moment and eps=1e-8 underflow to 0 in float16); our guard stops the next step with the term
named. Mixed precision (float32 weights under SAELens's ``autocast``) trains.
"""

import pytest
import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig

STEPS = 5


def build_sae(dtype: str, **kwargs) -> OrthoContrastiveTrainingSAE:
    cfg = OrthoContrastiveTrainingSAEConfig(
        d_in=16, d_sae=32, dtype=dtype, contrastive_warm_up_steps=0, ortho_chunk_size=8,
        ortho_threshold_start=0.05,  # low threshold: pairs are penalised from step 0
        ortho_lazy_every=1,  # the term on every step, so every step exercises it
        **kwargs,
    )
    return OrthoContrastiveTrainingSAE(cfg)


def trainer_for(sae, autocast: bool = False) -> SAETrainer:
    cfg = SAETrainerConfig(total_training_samples=8 * STEPS, train_batch_size_samples=8, lr_end=1e-4, autocast=autocast)
    return SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))


def batches(n=STEPS):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(8, 16, generator=generator) + 1.0 for _ in range(n)]


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("ortho_mode", ["close_pairs", "exact", "chunked"])
@pytest.mark.parametrize("projection_dim", [8, None])
def test_both_terms_train_in_each_dtype(dtype, ortho_mode, projection_dim):
    sae = build_sae(dtype, ortho_mode=ortho_mode, projection_dim=projection_dim)
    trainer = trainer_for(sae)
    for x in batches():
        output = trainer.step(x)
        assert output.losses["ortho_loss"] > 0 and output.losses["contrastive_loss"] > 0
        assert torch.isfinite(output.loss)
    assert sae.current_step() == STEPS
    assert sae.W_dec.dtype == getattr(torch, dtype)  # trained in its own dtype
    assert all(torch.isfinite(p).all() for p in sae.parameters())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_terms_compute_in_float32_and_match_a_float32_sae(dtype):
    ours = build_sae(dtype, ortho_anneal_steps=10)
    reference = build_sae("float32", ortho_anneal_steps=10)
    reference.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
    reference.n_steps_trained.fill_(0)
    x = batches(1)[0]

    def losses(sae):
        step_input = TrainStepInput(
            sae_in=x, coefficients={"l1": 1.0, "ortho": 1.0, "contrastive": 1.0},
            dead_neuron_mask=None, n_training_steps=0, is_logging_step=False,
        )
        return sae.training_forward_pass(step_input).losses

    low, full = losses(ours), losses(reference)
    for name in ("ortho_loss", "contrastive_loss"):
        assert low[name].dtype == torch.float32
        torch.testing.assert_close(low[name], full[name], rtol=0.05, atol=1e-3)


def test_float16_computes_both_terms_and_finite_gradients_at_step_0():
    sae = build_sae("float16")
    output = trainer_for(sae).step(batches(1)[0])  # before: RuntimeError at this step
    assert torch.isfinite(output.loss)
    assert output.losses["ortho_loss"] > 0 and output.losses["contrastive_loss"] > 0


def test_float16_adam_breaks_saelens_standard_too_so_float16_is_not_claimed():
    """What the README states: SAELens's trainer cannot train float16 weights on CPU."""
    standard = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=16, d_sae=32, dtype="float16"))
    trainer = trainer_for(standard)
    trainer.step(batches(1)[0])
    assert not torch.isfinite(standard.W_enc).all()


def test_float32_weights_under_saelens_autocast_train():
    sae = build_sae("float32")
    trainer = trainer_for(sae, autocast=True)
    for x in batches():
        assert torch.isfinite(trainer.step(x).loss)
    assert sae.current_step() == STEPS
