"""Specification of ``orthosae_plugin.evals.steps``: the alarm counts the steps an SAE was
actually trained for, from the checkpoint's own clock, never the planned budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_lens import SAE

from fixtures.planted import one_torch_thread, planted, untrained_sae  # noqa: F401
from orthosae_plugin.evals.absorption import load_output, main, result_path
from orthosae_plugin.evals.alarm import get_alarm
from orthosae_plugin.evals.steps import run_schedule, training_steps_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXAMPLE = Path(__file__).parents[1] / "examples" / "absorption_eval.py"
BATCH = 256


def runner_cfg(folder: Path, tokens: int = 1200 * BATCH) -> None:
    (folder / "runner_cfg.json").write_text(json.dumps(
        {"training_tokens": tokens, "train_batch_size_tokens": BATCH, "lr_warm_up_steps": 0}))


def test_metadata_then_final_save_runner_cfg_then_unknown(planted, tmp_path):
    assert training_steps_of(untrained_sae(planted, training_steps=4)) == (
        4, "cfg.metadata.training_steps")
    untrained_sae(planted).save_model(tmp_path)
    runner_cfg(tmp_path, tokens=10 * BATCH)  # a final save: the budget was consumed
    steps, source = training_steps_of(SAE.load_from_disk(tmp_path), tmp_path)
    assert steps == 10 and "final save" in source
    assert training_steps_of(untrained_sae(planted)) == (None, "unknown")


def test_a_checkpoints_planned_budget_is_never_its_step_count(planted, tmp_path):
    untrained_sae(planted).save_model(tmp_path)
    runner_cfg(tmp_path)  # planned: 1200 steps
    torch.save({"n_training_steps": 397}, tmp_path / "trainer_state.pt")
    assert training_steps_of(SAE.load_from_disk(tmp_path), tmp_path) == (
        397, "trainer_state.pt n_training_steps (the checkpoint's clock)")
    (tmp_path / "trainer_state.pt").write_bytes(b"not a torch file")
    assert training_steps_of(SAE.load_from_disk(tmp_path), tmp_path) == (None, "unknown")


def test_warm_ups_and_planned_steps_come_from_the_run(planted, tmp_path):
    sae = untrained_sae(planted)
    sae.cfg.metadata.training_architecture_details = {"contrastive_warm_up_steps": 1000,
                                                      "l1_warm_up_steps": 0}
    sae.save_model(tmp_path)
    runner_cfg(tmp_path)
    warm_ups, planned = run_schedule(SAE.load_from_disk(tmp_path), tmp_path)
    assert warm_ups == {"contrastive_warm_up_steps": 1000, "l1_warm_up_steps": 0,
                        "lr_warm_up_steps": 0}
    assert planned == 1200


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    """ortho_contrastive on the planted model for 40 steps (contrastive warm-up 20), with
    a SAELens training checkpoint after step 10 (n_checkpoints=1 at the 10-step mark)."""
    import importlib.util
    from unittest import mock

    from sae_lens.training.sae_trainer import SAETrainer

    out = tmp_path_factory.mktemp("run")
    spec = importlib.util.spec_from_file_location("absorption_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    original_init, real_config = SAETrainer.__init__, example.tiny_runner_config

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.checkpoint_thresholds = [10 * BATCH - 1]  # saves once 10 steps have run

    def config(setup, **kwargs):
        setup.sae_kwargs["contrastive_warm_up_steps"] = 20
        return real_config(setup, **kwargs, checkpoint_path=str(out / "checkpoints"),
                           n_checkpoints=1)

    with mock.patch.object(SAETrainer, "__init__", init), \
            mock.patch.object(example, "tiny_runner_config", config):
        final, _ = example.train_on_planted(out, 40, batch_size=BATCH, d_sae=256)
    (state,) = (out / "checkpoints").rglob("trainer_state.pt")
    return {"checkpoint": state.parent, "final": final, "out": out}


def test_checkpoint_at_step_n_of_m_records_n_and_is_flagged(checkpointed_run, capsys):
    checkpoint = checkpointed_run["checkpoint"]
    assert json.loads((checkpoint / "runner_cfg.json").read_text())["training_tokens"] == (
        40 * BATCH)  # the planned budget, which must not be used
    steps, source = training_steps_of(SAE.load_from_disk(checkpoint), checkpoint)
    assert steps == 10 and "n_steps_trained" in source
    out = checkpointed_run["out"] / "eval"
    status = main(["--sae", str(checkpoint), "--model", "planted-first-letter", "--out",
                   str(out), "--name", "ckpt", "--max-k-value", "3", "--strict", "--quiet"])
    assert status == 2
    alarm = get_alarm(load_output(result_path(out, "ckpt")))
    assert alarm.measured["training_steps"] == 10
    assert alarm.measured["planned_steps"] == 40
    assert any("trained for 10 steps" in reason for reason in alarm.reasons)
    assert "UNTRUSTWORTHY" in capsys.readouterr().out


def test_final_save_records_the_steps_it_trained(checkpointed_run):
    final = checkpointed_run["final"]
    assert training_steps_of(SAE.load_from_disk(final), final) == (
        40, "cfg.metadata.training_steps")
