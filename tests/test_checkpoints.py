"""Checkpoints whole or absent, resumes that refuse damaged checkpoints and changed
settings, configs without silent keys, early errors, and losses logged like SAELens's."""

import json
import math
import os
import random
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig, TrainStepInput
from sae_lens.saes.topk_sae import TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from benchmarks import kill_loop
from orthosae_plugin import OrthoContrastiveSAEConfig, OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.checkpoints import checkpoint_problems
from orthosae_plugin.run_budget import bind_to_training_run
from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset

BATCH = 128
SETUP = ToySetup(sae_kwargs={"contrastive_warm_up_steps": 5, "ortho_coefficient": 5.0})


def make_runner(cfg, setup=SETUP):
    return LanguageModelSAETrainingRunner(cfg, override_model=tiny_model(setup), override_dataset=tiny_token_dataset(setup))


def checkpointed_run(tmp_path, n_checkpoints=2, steps=12, setup=SETUP):
    """A short run with checkpoints; returns the checkpoint folders, oldest first."""
    cfg = tiny_runner_config(setup, training_tokens=BATCH * steps, train_batch_size_tokens=BATCH,
                             checkpoint_path=str(tmp_path / "checkpoints"), n_checkpoints=n_checkpoints)
    make_runner(cfg, setup).run()
    (run,) = (tmp_path / "checkpoints").iterdir()
    return sorted((p for p in run.iterdir() if not p.name.startswith(".")), key=lambda p: int(p.name))


def resume(tmp_path, checkpoint, steps=12, setup=SETUP, **sae_kwargs):
    setup = replace(setup, sae_kwargs={**setup.sae_kwargs, **sae_kwargs})
    cfg = tiny_runner_config(setup, training_tokens=BATCH * steps, train_batch_size_tokens=BATCH,
                             checkpoint_path=str(tmp_path / "resumed"), resume_from_checkpoint=str(checkpoint))
    return make_runner(cfg, setup).run()


# --- checkpoints whole or absent --------------------------------------------------------


def test_a_checkpoint_save_that_dies_midway_leaves_no_checkpoint_folder(tmp_path, monkeypatch):
    # Before: the SAE's files stayed in the checkpoint folder without trainer_state.pt
    # and runner_cfg.json, a checkpoint that cannot be resumed.
    real = SAETrainer.save_trainer_state

    def dies_after_the_sae_files(self, path):
        real(self, path)
        (path / "trainer_state.pt").write_bytes((path / "trainer_state.pt").read_bytes()[:100])
        raise RuntimeError("killed (simulated)")  # the process dies here, before the runner's files

    monkeypatch.setattr(SAETrainer, "save_trainer_state", dies_after_the_sae_files)
    cfg = tiny_runner_config(SETUP, training_tokens=BATCH * 12, train_batch_size_tokens=BATCH,
                             checkpoint_path=str(tmp_path / "checkpoints"), n_checkpoints=1)
    with pytest.raises(RuntimeError, match="simulated"):
        make_runner(cfg).run()
    (run,) = (tmp_path / "checkpoints").iterdir()
    assert sorted(p.name for p in run.iterdir()) == [], "a partial checkpoint or a temporary is left"


def test_a_kill_during_a_checkpoint_save_leaves_only_whole_checkpoints_and_the_resume_cleans_up(tmp_path):
    """kill -9 a training run while it writes a checkpoint, then resume from its newest
    checkpoint, both through subprocesses (benchmarks/kill_loop.py, one kill)."""
    row = kill_loop.checkpoint_kill(tmp_path / "run", random.Random(1), save_seconds=0.05)
    assert row["killed"]
    assert row["checkpoints"] >= 1
    assert row["damaged"] == {}
    assert row["resumed"], row.get("resume_error")
    assert row["temporaries_after_next_save"] == []


def test_resuming_a_damaged_checkpoint_is_refused_naming_it_and_the_newest_whole_one(tmp_path):
    older, newer = checkpointed_run(tmp_path)
    assert checkpoint_problems(older) == checkpoint_problems(newer) == []
    # What SAELens's own save left after a kill: a truncated trainer state, no runner config.
    state = newer / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    (newer / "runner_cfg.json").unlink()
    with pytest.raises(ValueError) as error:
        resume(tmp_path, newer)
    message = str(error.value)
    assert f"resume_from_checkpoint={str(newer)!r} is invalid: it is not a whole checkpoint" in message
    assert "trainer_state.pt is unreadable" in message and "runner_cfg.json is missing" in message
    assert f"The newest whole checkpoint beside it is {str(older)!r}" in message


# --- resumes that refuse what changes the loss --------------------------------------------


@pytest.fixture(scope="module")
def one_checkpoint(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("checkpointed")
    (checkpoint,) = checkpointed_run(tmp_path, n_checkpoints=1)
    return checkpoint


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ortho_mode": "chunked"}, r"ortho_mode: 'close_pairs' -> 'chunked'"),
        ({"ortho_coefficient": 7.0}, r"ortho_coefficient: 5.0 -> 7.0"),
        ({"ortho_threshold_start": 0.4}, r"ortho_threshold_start: 0.3 -> 0.4"),
        ({"projection_seed": 3}, r"projection_seed: 0 -> 3"),
    ],
)
def test_resuming_with_a_changed_loss_setting_is_refused_naming_old_and_new(tmp_path, one_checkpoint, change, message):
    # Before: these resumes went ahead without a word.
    with pytest.raises(ValueError, match=r"change the loss or its schedule halfway through training: " + message + r".*resume_allow_changes"):
        resume(tmp_path, one_checkpoint, **change)


def test_a_listed_change_is_allowed(tmp_path, one_checkpoint):
    sae = resume(tmp_path, one_checkpoint, ortho_coefficient=7.0, resume_allow_changes=["ortho_coefficient"])
    assert sae.cfg.ortho_coefficient == 7.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"projection_dim": 64}, r"projection_dim: 128 -> 64"),  # before: a size-mismatch RuntimeError
        ({"sparsity_base": "topk", "k": 8}, r"sparsity_base: 'relu_l1' -> 'topk'"),  # before: KeyError: 'l1'
    ],
)
def test_resuming_with_a_changed_shape_setting_is_refused_with_the_same_message(tmp_path, one_checkpoint, change, message):
    with pytest.raises(ValueError, match=r"cannot be loaded into it: " + message):
        resume(tmp_path, one_checkpoint, **change)


def test_a_shape_setting_cannot_be_opted_into():
    with pytest.raises(ValueError, match=r"resume_allow_changes=\['d_sae'\] is invalid: 'd_sae' changes the SAE's parameter shapes"):
        OrthoContrastiveTrainingSAEConfig(d_in=8, d_sae=16, resume_allow_changes=["d_sae"])
    with pytest.raises(ValueError, match=r"'ortho_coeficient' is not a setting .*did you mean 'ortho_coefficient'"):
        OrthoContrastiveTrainingSAEConfig(d_in=8, d_sae=16, resume_allow_changes=["ortho_coeficient"])


def test_a_json_of_the_previous_version_re_derives_its_horizon():
    # The previous version wrote a derived horizon (here 20 steps) without the flag.
    cfg = OrthoContrastiveTrainingSAEConfig(d_in=64, d_sae=256, contrastive_warm_up_steps=5)
    bind_to_training_run(cfg, 20, BATCH, "a 20-step run")
    old_json = cfg.to_dict()
    del old_json["ortho_anneal_steps_derived"]
    loaded = TrainingSAEConfig.from_dict(json.loads(json.dumps(old_json)))
    run = tiny_runner_config(SETUP, training_tokens=BATCH * 60, train_batch_size_tokens=BATCH)
    run = replace(run, sae=loaded)
    assert run.sae.ortho_anneal_steps == 60  # before: 20, the threshold at its end at step 20
    # A dict written by hand (no SAELens metadata) keeps the horizon it sets.
    assert OrthoContrastiveTrainingSAEConfig.from_dict({"d_in": 8, "d_sae": 16, "ortho_anneal_steps": 20}).ortho_anneal_steps_derived is False


# --- no silent settings -------------------------------------------------------------------


def test_a_misspelled_key_is_refused_with_the_closest_name(tmp_path):
    message = r"ortho_coeficient=5 is invalid: it is not a setting of the ortho_contrastive config \(did you mean 'ortho_coefficient'\?\)"
    with pytest.raises(ValueError, match=message):
        OrthoContrastiveTrainingSAEConfig.from_dict({"d_in": 8, "d_sae": 16, "ortho_coeficient": 5})
    with pytest.raises(ValueError, match=message):  # through SAELens's base class
        TrainingSAEConfig.from_dict({"architecture": "ortho_contrastive", "d_in": 8, "d_sae": 16, "ortho_coeficient": 5})
    runner_dict = tiny_runner_config(SETUP, training_tokens=BATCH * 12, train_batch_size_tokens=BATCH).to_dict()
    runner_dict["sae"]["ortho_coeficient"] = 5
    with pytest.raises(ValueError, match=message):  # a runner JSON
        LanguageModelSAERunnerConfig.from_dict(json.loads(json.dumps(runner_dict)))


def test_a_checkpoint_cfg_json_is_validated_and_checked_for_unknown_keys(tmp_path):
    sae = OrthoContrastiveTrainingSAE(OrthoContrastiveTrainingSAEConfig(d_in=8, d_sae=16, ortho_anneal_steps=10))
    sae.save_model(tmp_path)
    saved = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**saved, "ortho_coefficient": "abc"}))
    with pytest.raises(ValueError, match=r"ortho_coefficient='abc' is invalid"):  # before: loaded
        SAE.load_from_disk(tmp_path)
    with pytest.raises(ValueError, match=r"ortho_coefficient='abc' is invalid"):
        TrainingSAE.load_from_disk(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**saved, "ortho_treshold_end": 0.1}))
    with pytest.raises(ValueError, match=r"did you mean 'ortho_threshold_end'"):
        SAE.load_from_disk(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(saved))
    assert SAE.load_from_disk(tmp_path).cfg.d_sae == 16


def test_a_nan_coefficient_mid_run_stops_the_run(tmp_path, monkeypatch):
    # Before: `nan > 0` is false, so the contrastive term was off for the rest of the run,
    # which finished and saved.
    real = SAETrainer.get_coefficients

    def nan_from_step_3(self):
        coefficients = real(self)
        if self.n_training_steps >= 3:
            coefficients["contrastive"] = math.nan
        return coefficients

    monkeypatch.setattr(SAETrainer, "get_coefficients", nan_from_step_3)
    cfg = tiny_runner_config(SETUP, training_tokens=BATCH * 12, train_batch_size_tokens=BATCH,
                             output_path=str(tmp_path / "sae"))
    with pytest.raises(FloatingPointError, match=r"non-finite loss at training step 3: coefficient contrastive=nan"):
        make_runner(cfg).run()
    assert not (tmp_path / "sae" / "cfg.json").exists()


# --- early, clear errors ------------------------------------------------------------------


def test_d_in_other_than_the_hooks_width_is_refused_before_the_first_step(monkeypatch):
    steps = []
    monkeypatch.setattr(OrthoContrastiveTrainingSAE, "training_forward_pass", lambda self, step_input: steps.append(1))
    setup = replace(SETUP, sae_kwargs={**SETUP.sae_kwargs, "d_in": 32})
    cfg = tiny_runner_config(setup, training_tokens=BATCH * 12, train_batch_size_tokens=BATCH)
    with pytest.raises(ValueError, match=r"d_in=32 is invalid: the hook 'blocks.1.hook_resid_post' .* width 64. Set d_in=64"):
        make_runner(cfg, setup).run()
    assert steps == []


@pytest.mark.parametrize("sizes", [{"projection_dim": 10**9}, {"d_sae": 10**9}])
def test_sizes_that_cannot_fit_are_refused_before_allocating(sizes):
    cfg = OrthoContrastiveTrainingSAEConfig(**{"d_in": 64, "d_sae": 256, "ortho_anneal_steps": 10, **sizes})
    with pytest.raises(ValueError, match=r"the SAE's parameters need [\d,]+ bytes .* more than the [\d,]+ bytes free on device 'cpu'"):
        OrthoContrastiveTrainingSAE(cfg)


def test_python_dash_m_cli_runs_the_training_command_line():
    # Before: `python -m orthosae_plugin.cli ...` did nothing and exited 0.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "orthosae_plugin.cli", "--architecture", "ortho_contrastive", "--ortho_coefficient", "-1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "orthosae-train: error: ortho_coefficient=-1.0 is invalid" in result.stderr


# --- losses that read like SAELens's ----------------------------------------------------


def test_a_lazy_run_logs_a_loss_curve_without_jumps_and_returns_the_saved_metadata(tmp_path, monkeypatch):
    """SAELens's loss-decreases test failed on 907, 88, 88, 88, 895: with lazy
    regularization the logged loss held the term x r every r-th step and 0 between."""
    losses = []
    real = OrthoContrastiveTrainingSAE.training_forward_pass

    def spy(self, step_input):
        out = real(self, step_input)
        losses.append({name: value.item() for name, value in out.losses.items()} | {"overall": out.loss.item()})
        return out

    monkeypatch.setattr(OrthoContrastiveTrainingSAE, "training_forward_pass", spy)
    setup = replace(SETUP, sae_kwargs={**SETUP.sae_kwargs, "ortho_coefficient": 1000.0, "ortho_lazy_every": 4})
    cfg = tiny_runner_config(setup, training_tokens=BATCH * 40, train_batch_size_tokens=BATCH,
                             output_path=str(tmp_path / "sae"))
    sae = make_runner(cfg, setup).run()
    ortho = [step["ortho_loss"] for step in losses]
    assert all(value > 0 for value in ortho)  # before: 0 on 3 steps of 4
    for before, after in zip(losses, losses[1:]):
        assert after["overall"] < 2 * before["overall"], (before, after)
    assert losses[-1]["overall"] < losses[0]["overall"]
    saved = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    in_memory = json.loads(json.dumps(sae.cfg.metadata.to_dict()))  # tuples as JSON lists
    assert in_memory == saved["metadata"]  # before: no training_steps in memory
    assert sae.cfg.metadata.training_steps == 40


def test_the_topk_checkpoints_inference_default_is_the_training_default_and_encodes_like_training(tmp_path):
    """SAELens's TopKSAEConfig (a saved inference SAE) defaults rescale_acts_by_decoder_norm
    to False; a training checkpoint holds unfolded training weights, so the config that
    opens it defaults to the training default, TopKTrainingSAEConfig's True."""
    assert OrthoContrastiveSAEConfig(d_in=8, d_sae=16).rescale_acts_by_decoder_norm is TopKTrainingSAEConfig(d_in=8, d_sae=16).rescale_acts_by_decoder_norm is True
    torch.manual_seed(0)
    sae = OrthoContrastiveTrainingSAE(OrthoContrastiveTrainingSAEConfig(d_in=8, d_sae=16, sparsity_base="topk", k=4, ortho_anneal_steps=10))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(16, 1) * 3)  # rows of different norms, so the choice matters
    sae.save_model(tmp_path)
    saved = json.loads((tmp_path / "cfg.json").read_text())
    del saved["rescale_acts_by_decoder_norm"]  # a cfg.json without the field falls back to the default
    (tmp_path / "cfg.json").write_text(json.dumps(saved))
    x = torch.randn(32, 8)
    torch.testing.assert_close(SAE.load_from_disk(tmp_path).encode(x), sae.encode(x))


def test_a_nan_coefficient_leaves_the_weights_untouched():
    sae = OrthoContrastiveTrainingSAE(OrthoContrastiveTrainingSAEConfig(d_in=8, d_sae=16, ortho_anneal_steps=10))
    before = {name: value.clone() for name, value in sae.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"coefficient ortho=nan"):
        sae.training_forward_pass(TrainStepInput(
            sae_in=torch.randn(4, 8), coefficients={"l1": 1.0, "ortho": math.nan, "contrastive": 0.3},
            dead_neuron_mask=None, n_training_steps=0, is_logging_step=False,
        ))
    for name, value in sae.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_resumed_run_between_lazy_steps_logs_the_terms_value_without_a_gradient():
    from orthosae_plugin.orthogonality import ortho_penalty_exact

    torch.manual_seed(0)
    sae = OrthoContrastiveTrainingSAE(OrthoContrastiveTrainingSAEConfig(d_in=16, d_sae=64, ortho_anneal_steps=10, ortho_lazy_every=4))
    sae.load_state_dict(sae.state_dict())  # as a resume does
    sae.n_steps_trained.fill_(5)  # a step between two that compute the term
    out = sae.training_forward_pass(TrainStepInput(
        sae_in=torch.randn(8, 16), coefficients={"l1": 1.0, "ortho": 2.0, "contrastive": 0.0},
        dead_neuron_mask=None, n_training_steps=5, is_logging_step=False,
    ))
    D = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close(out.losses["ortho_loss"], 2.0 * ortho_penalty_exact(D, sae.ortho_threshold_at(5)))
    assert not out.losses["ortho_loss"].requires_grad
