"""Checkpoints written by earlier versions of the plugin (tests/data/saved_runs/, from
version 0.1.0) load into this one with the same state-dict keys and resume training:
the schedule clock, the projection, the weights and the ortho term carry on where the
saved run stopped."""

import math
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file
from torch.testing import assert_close

from helpers import SAVED_RUN_CASES, SAVED_RUN_STEPS, saved_run_runner, saved_run_setup
from orthosae_plugin import OrthoContrastiveTrainingSAE

SAVED_RUNS = Path(__file__).parent / "data" / "saved_runs"


def naive_penalty(W_dec: torch.Tensor, tau: float, widths: list[int] | None) -> torch.Tensor:
    """mean over ordered pairs i != j of relu(|cos| - tau)^2, counting only pairs of the
    same prefix level when ``widths`` is given."""
    D = W_dec / W_dec.norm(dim=1, keepdim=True)
    n = D.shape[0]
    keep = 1.0 - torch.eye(n)
    if widths is not None:
        level = torch.zeros(n, dtype=torch.long)
        for start in widths[:-1]:
            level[start:] += 1
        keep = keep * (level[:, None] == level[None, :]).float()
    return (torch.relu((D @ D.T).abs() - tau) * keep).pow(2).sum() / (n * (n - 1))


@pytest.mark.parametrize("case", sorted(SAVED_RUN_CASES))
def test_a_checkpoint_of_an_earlier_version_loads_and_resumes(case, tmp_path, monkeypatch):
    checkpoint = SAVED_RUNS / case / "checkpoint"
    saved = load_file(checkpoint / "sae_weights.safetensors")
    seen = []
    original = OrthoContrastiveTrainingSAE.training_forward_pass

    def spy(self, step_input):
        step, W_dec = self.current_step(), self.W_dec.detach().clone()
        out = original(self, step_input)
        seen.append((step, self.ortho_threshold_at(step), W_dec, out.losses["ortho_loss"].detach()))
        return out

    monkeypatch.setattr(OrthoContrastiveTrainingSAE, "training_forward_pass", spy)
    runner = saved_run_runner(case, checkpoint_path=str(tmp_path / "checkpoints"),
                              resume_from_checkpoint=str(checkpoint), output_path=str(tmp_path / "sae"))
    assert set(saved) == set(runner.sae.state_dict())  # the same keys, loaded strictly
    sae = runner.run()

    first = int(saved["n_steps_trained"])
    assert 0 < first < SAVED_RUN_STEPS
    assert [step for step, *_ in seen] == list(range(first, SAVED_RUN_STEPS))
    assert torch.equal(seen[0][2], saved["W_dec"])  # the first resumed step trains the saved weights
    assert torch.equal(sae.projection, saved["projection"])
    assert int(sae.n_steps_trained) == SAVED_RUN_STEPS

    cfg = sae.cfg
    widths = cfg.matryoshka_widths if cfg.matryoshka_ortho_pairs == "within_groups" else None
    r, weight = cfg.ortho_lazy_every, cfg.ortho_coefficient
    kept = None
    for step, tau, W_dec, ortho_loss in seen:
        anneal = 0.5 * (1 + math.cos(math.pi * step / SAVED_RUN_STEPS))
        assert tau == pytest.approx(cfg.ortho_threshold_end + (cfg.ortho_threshold_start - cfg.ortho_threshold_end) * anneal)
        # The logged value, in both lazy modes: computed on the first step after the load
        # and every r-th step, kept in between ('weighted' counts its gradient r times on
        # the computing steps and not at all between; 'reuse' applies it on every step).
        if kept is None or step % r == 0:
            kept = naive_penalty(W_dec, tau, widths)
        want = weight * kept
        assert_close(ortho_loss, want, rtol=1e-4, atol=1e-9)

    assert any(ortho_loss > 0 for *_, ortho_loss in seen)  # the term did act

    inference = SAE.load_from_disk(tmp_path / "sae")
    assert inference.cfg.metadata.training_steps == SAVED_RUN_STEPS
    assert saved_run_setup(case).sae_kwargs["d_sae"] == inference.cfg.d_sae
