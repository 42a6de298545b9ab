"""The warning at the start of training about an end threshold that the decoder's
geometry will not let the orthogonality term meet."""

import warnings

import pytest
from sae_lens import LanguageModelSAETrainingRunner

from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.run_budget import ThresholdBelowChanceWarning, threshold_warning
from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset


def cfg(d_in: int, expansion: int = 4, **kwargs) -> OrthoContrastiveTrainingSAEConfig:
    return OrthoContrastiveTrainingSAEConfig(d_in=d_in, d_sae=expansion * d_in, **kwargs)


def test_the_seed_threshold_is_warned_about_at_smollm2_width_only():
    # SmolLM2-135M (d_in 576): 0.05 is 1.2x the chance level 1/sqrt(576) = 0.0417.
    message = threshold_warning(cfg(576))
    assert message is not None
    assert "ortho_threshold_end=0.05" in message and "1.20x the chance level" in message
    assert "1/sqrt(576) = 0.0417" in message
    assert "To restrict it to near-duplicates, set ortho_threshold_end=2.4/sqrt(d_in) = 0.1000" in message
    assert "the restricted penalty absorbed more than the default" in message  # what was measured
    # Gemma-2-2B (d_in 2304): 0.05 is 2.4x chance, the setting the seed was chosen for.
    assert threshold_warning(cfg(2304)) is None
    assert threshold_warning(cfg(2304, expansion=16)) is None


def test_below_the_welch_bound_is_called_unmeetable():
    # d_sae 32 x d_in 8: Welch bound sqrt(24 / (8 * 31)) = 0.311.
    message = threshold_warning(cfg(8, ortho_threshold_start=0.9, ortho_threshold_end=0.3))
    assert message is not None and "below the Welch bound 0.3111 for d_sae=32, d_in=8" in message
    assert "0.8485" in message  # 2.4 / sqrt(8), above the Welch bound


def test_no_warning_when_the_thresholded_term_is_off():
    assert threshold_warning(cfg(576, ortho_coefficient=0.0)) is None
    assert threshold_warning(cfg(576, ortho_mode="ortsae", sparsity_base="batchtopk", k=8)) is None


@pytest.mark.parametrize(("tau_end", "expected"), [(0.05, 1), (0.65, 0)])
def test_a_run_warns_once_at_its_start(tau_end, expected):
    # Toy width 16: chance 0.25, so 0.05 warns and 0.65 (> 2.4 x 0.25) does not.
    toy = ToySetup(d_model=16, n_layers=1, d_vocab=64, context_size=8, n_sequences=64, sae_kwargs=dict(
        d_sae=32, ortho_threshold_start=0.7, ortho_threshold_end=tau_end, contrastive_coefficient=0.0,
    ))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg_run = tiny_runner_config(toy, training_tokens=32 * 12, train_batch_size_tokens=32)
        LanguageModelSAETrainingRunner(cfg_run, override_model=tiny_model(toy),
                                       override_dataset=tiny_token_dataset(toy)).run()
    ours = [w for w in caught if issubclass(w.category, ThresholdBelowChanceWarning)]
    assert len(ours) == expected
