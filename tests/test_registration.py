"""The budget hooks: the anneal horizon comes from the run that trains (never a stale
one), and every SAELens runner, MultiSAETrainingRunner included, gets the same checks."""

import dataclasses
import json

import pytest
import torch
from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

import helpers
from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig


def build_cfg(**kwargs) -> OrthoContrastiveTrainingSAEConfig:
    return OrthoContrastiveTrainingSAEConfig(**{"d_in": 16, "d_sae": 32, "contrastive_warm_up_steps": 10, **kwargs})


def runner_cfg(sae_cfg, **kwargs):
    return helpers.runner_cfg(sae_cfg, **{"training_tokens": 64 * 1000, "train_batch_size_tokens": 64, **kwargs})


def start_training(sae_cfg, steps: int, batch: int = 64) -> OrthoContrastiveTrainingSAE:
    """Build the SAE and SAELens's trainer, as every SAELens runner does before step 0."""
    sae = OrthoContrastiveTrainingSAE(sae_cfg)
    trainer_cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr_end=1e-4)
    SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    return sae


# --- the anneal horizon -------------------------------------------------------------------


def test_replacing_the_budget_of_a_runner_config_re_derives_the_horizon():
    # Before: the horizon of the first config (1000) was kept, and reached 0.05 at 10%.
    cfg = runner_cfg(build_cfg())
    longer = dataclasses.replace(cfg, training_tokens=64 * 10_000)
    assert longer.sae.ortho_anneal_steps == 10_000
    assert longer.sae.to_dict()["metadata"]["training_architecture_details"]["ortho_anneal_steps"] == 10_000


def test_an_edited_budget_in_a_saved_json_re_derives_the_horizon():
    saved = json.loads(json.dumps(runner_cfg(build_cfg()).to_dict()))
    assert saved["sae"]["ortho_anneal_steps"] == 1000 and saved["sae"]["ortho_anneal_steps_derived"]
    saved["training_tokens"] = 64 * 3000
    assert LanguageModelSAERunnerConfig.from_dict(saved).sae.ortho_anneal_steps == 3000


def test_one_sae_config_reused_across_a_sweep_gets_each_run_s_horizon():
    shared = build_cfg()
    runner_cfg(shared, training_tokens=64 * 500)  # binds the shared config first
    for steps in (200, 5000, 800):
        assert start_training(shared, steps).cfg.ortho_anneal_steps == steps


def test_the_trainer_derives_the_horizon_even_without_a_runner_config():
    # e.g. sae_lens.synthetic.train_toy_sae, or SAETrainer used directly
    sae = start_training(build_cfg(), steps=321)
    assert sae.cfg.ortho_anneal_steps == 321 and sae.cfg.ortho_anneal_steps_derived
    assert sae.ortho_threshold_at(321) == pytest.approx(0.05)


def test_an_explicit_horizon_stays_as_given_everywhere():
    cfg = runner_cfg(build_cfg(ortho_anneal_steps=777), training_tokens=64 * 2000)
    assert cfg.sae.ortho_anneal_steps == 777 and not cfg.sae.ortho_anneal_steps_derived
    assert dataclasses.replace(cfg, training_tokens=64 * 9000).sae.ortho_anneal_steps == 777
    assert start_training(cfg.sae, steps=5000).cfg.ortho_anneal_steps == 777
    round_trip = LanguageModelSAERunnerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert start_training(round_trip.sae, steps=5000).cfg.ortho_anneal_steps == 777


def test_resuming_with_the_same_budget_keeps_the_horizon(tmp_path):
    first = start_training(build_cfg(), steps=400)
    first.save_model(tmp_path / "checkpoint")
    resumed = start_training(build_cfg(), steps=400)
    resumed.load_weights_from_checkpoint(tmp_path / "checkpoint")
    assert resumed.cfg.ortho_anneal_steps == 400


def test_resuming_with_another_budget_is_refused_naming_both_horizons(tmp_path):
    start_training(build_cfg(), steps=400).save_model(tmp_path / "checkpoint")
    resumed = start_training(build_cfg(), steps=1000)
    with pytest.raises(ValueError, match=r"ortho_anneal_steps: .* horizon of 400 steps, and this run's budget gives 1000"):
        resumed.load_weights_from_checkpoint(tmp_path / "checkpoint")
    explicit = start_training(build_cfg(ortho_anneal_steps=400), steps=1000)
    explicit.load_weights_from_checkpoint(tmp_path / "checkpoint")  # the user chose it


# --- MultiSAETrainingRunner ---------------------------------------------------------------


def multi_cfg(saes, **kwargs):
    defaults = dict(
        hook_names="blocks.0.hook_resid_post", model_name="tiny", dataset_path="in-memory",
        training_tokens=64 * 1000, train_batch_size_tokens=64, device="cpu",
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None,
    )
    return MultiSAETrainingRunnerConfig(saes=saes, **{**defaults, **kwargs})


def test_the_multi_sae_config_derives_each_horizon():
    cfg = multi_cfg({"a": build_cfg(), "b": build_cfg(ortho_anneal_steps=50)})
    assert (cfg.saes["a"].ortho_anneal_steps, cfg.saes["b"].ortho_anneal_steps) == (1000, 50)


@pytest.mark.parametrize(
    ("sae_kwargs", "run_kwargs", "message"),
    [
        ({"contrastive_warm_up_steps": 1000}, {"training_tokens": 64 * 100},
         r"saes\['sweep_1'\]: ortho_contrastive: training_tokens=6400 // train_batch_size_tokens=64 = 100 training steps, fewer than contrastive_warm_up_steps=1000"),
        ({}, {"training_tokens": 10}, r"saes\['sweep_0'\]: .* = 0 training steps, so nothing would be trained"),
        ({}, {"train_batch_size_tokens": 0}, r"saes\['sweep_0'\]: train_batch_size_tokens=0 is invalid"),
        ({"contrastive_warm_up_steps": 0}, {"train_batch_size_tokens": 1}, r"saes\['sweep_0'\]: .*train batch size=1 is invalid"),
        ({"sparsity_base": "batchtopk", "k": 4}, {"training_tokens": 64 * 20},
         r"saes\['sweep_1'\]: .* too few for sparsity_base='batchtopk'"),
    ],
)
def test_the_multi_sae_config_refuses_what_the_single_runner_refuses_before_loading_a_model(sae_kwargs, run_kwargs, message):
    # Before: accepted, then "ortho_anneal_steps=None" at step 1 after the model loaded.
    with pytest.raises(ValueError, match=message):
        multi_cfg({"sweep_0": build_cfg(), "sweep_1": build_cfg(**sae_kwargs)}, **run_kwargs)


# --- TrainStepInput -----------------------------------------------------------------------


def test_a_hand_built_step_input_without_the_coefficients_is_a_clear_error():
    # Before: KeyError: 'ortho'.
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_anneal_steps=10))
    step_input = TrainStepInput(sae_in=torch.randn(8, 16), coefficients={"l1": 1.0},
                                dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    with pytest.raises(ValueError, match=r"TrainStepInput.coefficients=\{'l1': 1.0\} is invalid: it lacks 'ortho', 'contrastive'"):
        sae.training_forward_pass(step_input)
