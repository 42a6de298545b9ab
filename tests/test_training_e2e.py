"""End to end through SAELens's LanguageModelSAETrainingRunner on a tiny local model."""

import json
import textwrap

import pytest
import torch
import wandb
from sae_lens import LanguageModelSAETrainingRunner, LoggingConfig
from safetensors.torch import save_file

from orthosae_plugin import OrthoContrastiveTrainingSAE
from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset

BATCH = 128
STEPS = 150
SETUP = ToySetup(sae_kwargs={"contrastive_warm_up_steps": 40, "ortho_coefficient": 5.0})


def make_runner(cfg):
    return LanguageModelSAETrainingRunner(
        cfg, override_model=tiny_model(SETUP), override_dataset=tiny_token_dataset(SETUP)
    )


def record_steps(monkeypatch):
    """Spy on every training step: (step, contrastive weight, threshold, losses)."""
    seen = []
    original = OrthoContrastiveTrainingSAE.training_forward_pass

    def spy(self, step_input):
        step = self.current_step()
        out = original(self, step_input)
        seen.append(
            dict(
                step=step,
                contrastive=step_input.coefficients["contrastive"],
                tau=self.ortho_threshold_at(step),
                loss=out.loss.item(),
            )
        )
        return out

    monkeypatch.setattr(OrthoContrastiveTrainingSAE, "training_forward_pass", spy)
    return seen


@torch.no_grad()
def held_out_mse(sae, model, n_seq=16):
    tokens = tiny_token_dataset(ToySetup(seed=123, n_sequences=n_seq))["tokens"]
    _, cache = model.run_with_cache(torch.tensor(tokens), names_filter=SETUP.hook_name)
    x = cache[SETUP.hook_name].flatten(0, 1)
    return (sae(x) - x).pow(2).sum(-1).mean().item()


def test_runner_trains_for_the_whole_budget_and_saves_a_plugin_free_standard_sae(tmp_path, monkeypatch, plugin_free_python):
    seen = record_steps(monkeypatch)
    cfg = tiny_runner_config(SETUP, training_tokens=BATCH * STEPS, train_batch_size_tokens=BATCH,
                             output_path=str(tmp_path / "sae"))
    runner = make_runner(cfg)
    mse_before = held_out_mse(runner.sae, runner.model)
    sae = runner.run()

    assert [s["step"] for s in seen] == list(range(STEPS))  # tokens // batch, no more, no less
    assert int(sae.n_steps_trained) == STEPS
    assert sae.cfg.ortho_anneal_steps == STEPS
    first, last = seen[:10], seen[-10:]
    assert sum(s["loss"] for s in last) < 0.5 * sum(s["loss"] for s in first)
    mse_after = held_out_mse(sae, runner.model)
    assert mse_after < 0.5 * mse_before

    # The saved SAE loads as `standard` in a process that never imports the plugin (one per session).
    x = torch.randn(8, SETUP.d_model)
    with torch.no_grad():
        save_file({"x": x, "acts": sae.encode(x), "out": sae(x)}, tmp_path / "expected.safetensors")
    script = textwrap.dedent(f"""
        import sys
        from safetensors.torch import load_file
        import torch
        from sae_lens import SAE
        sae = SAE.load_from_disk({str(tmp_path / "sae")!r})
        assert "orthosae_plugin" not in sys.modules
        assert type(sae).__name__ == "StandardSAE", type(sae)
        t = load_file({str(tmp_path / "expected.safetensors")!r})
        torch.testing.assert_close(sae.encode(t["x"]), t["acts"])
        torch.testing.assert_close(sae(t["x"]), t["out"])
        print(sae.cfg.architecture(), sae.cfg.metadata.training_steps)
    """)
    result = plugin_free_python.run(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["standard", str(STEPS)]
    saved = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert saved["architecture"] == "standard"
    assert not list((tmp_path / "sae").glob("*.partial"))


def test_a_resumed_run_continues_the_same_schedules_and_projection(tmp_path, monkeypatch):
    seen = record_steps(monkeypatch)
    common = dict(training_tokens=BATCH * 100, train_batch_size_tokens=BATCH, output_path=None)
    full = make_runner(tiny_runner_config(SETUP, checkpoint_path=str(tmp_path / "full"), n_checkpoints=1, **common))
    full.run()
    uninterrupted = list(seen)
    checkpoints = list((tmp_path / "full").glob("*/*"))
    assert len(checkpoints) == 1, checkpoints
    resume_at = json.loads((checkpoints[0] / "cfg.json").read_text())["ortho_anneal_steps"]
    assert resume_at == 100

    seen.clear()
    resumed_runner = make_runner(
        tiny_runner_config(SETUP, checkpoint_path=str(tmp_path / "resumed"),
                           resume_from_checkpoint=str(checkpoints[0]), **common)
    )
    resumed_runner.run()
    resumed = list(seen)

    assert resumed, "the resumed run took no step"
    first_step = resumed[0]["step"]
    assert 0 < first_step < 100
    assert [s["step"] for s in resumed] == list(range(first_step, 100))
    for got, want in zip(resumed, uninterrupted[first_step:]):
        assert got["contrastive"] == pytest.approx(want["contrastive"])
        assert got["tau"] == pytest.approx(want["tau"])
    assert torch.equal(resumed_runner.sae.projection, full.sae.projection)


def test_wandb_offline_run_records_every_loss_term_the_threshold_and_the_coefficients(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged = []
    real_log = wandb.sdk.wandb_run.Run.log

    def spy_log(run, data, *args, **kwargs):
        logged.append(dict(data))
        return real_log(run, data, *args, **kwargs)

    # wandb.init rebinds the module-level wandb.log to the run's method, so spy on that.
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy_log)
    logger = LoggingConfig(log_to_wandb=True, wandb_log_frequency=5, eval_every_n_wandb_logs=1000,
                           log_weights_to_wandb=False, wandb_project="orthosae-test")
    cfg = tiny_runner_config(SETUP, training_tokens=BATCH * 60, train_batch_size_tokens=BATCH,
                             output_path=None, logger=logger)
    make_runner(cfg).run()

    keys = set().union(*logged)
    for key in [
        "losses/mse_loss", "losses/l1_loss", "losses/ortho_loss", "losses/contrastive_loss",
        "losses/overall_loss", "metrics/ortho_threshold", "metrics/decoder_max_abs_cos",
        "metrics/decoder_frac_pairs_above_threshold", "details/contrastive_coefficient",
        "details/ortho_coefficient", "details/l1_coefficient",
    ]:
        assert key in keys, f"{key} missing from wandb logs: {sorted(keys)}"
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline wandb run was written"
