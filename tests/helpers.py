"""Scaffolding shared by the test files: tiny configs, step inputs, batches and toy runs."""

from __future__ import annotations

from typing import Any

from sae_lens import LanguageModelSAETrainingRunner

from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset

# The saved runs under tests/data/saved_runs/: SAELens runner checkpoints of two tiny
# ortho_contrastive runs, written by tests/data/write_saved_runs.py.
SAVED_RUN_BATCH = 32
SAVED_RUN_STEPS = 12
SAVED_RUN_CASES: dict[str, dict[str, Any]] = {
    "relu_l1_close_pairs": {"ortho_lazy_every": 2},
    "matryoshka_within_groups_reuse": {
        "sparsity_base": "matryoshka_batchtopk", "k": 4, "topk_threshold_lr": 0.5,
        "matryoshka_widths": [16, 32, 48], "matryoshka_ortho_pairs": "within_groups",
        "ortho_lazy_mode": "reuse", "ortho_lazy_every": 3,
    },
}


def saved_run_setup(case: str) -> ToySetup:
    """The toy run of the saved run ``case``."""
    sae_kwargs = {
        "d_sae": 48, "contrastive_warm_up_steps": 4, "ortho_coefficient": 5.0, "projection_dim": 8,
        "ortho_threshold_start": 0.2, "ortho_threshold_end": 0.02, **SAVED_RUN_CASES[case],
    }
    return ToySetup(d_model=16, n_layers=1, d_vocab=64, context_size=8, n_sequences=256, sae_kwargs=sae_kwargs)


def saved_run_runner(case: str, **runner_kwargs: Any) -> LanguageModelSAETrainingRunner:
    """SAELens's runner for the saved run ``case`` (``checkpoint_path``,
    ``resume_from_checkpoint``, ... in ``runner_kwargs``)."""
    toy = saved_run_setup(case)
    cfg = tiny_runner_config(toy, training_tokens=SAVED_RUN_BATCH * SAVED_RUN_STEPS,
                             train_batch_size_tokens=SAVED_RUN_BATCH, **runner_kwargs)
    return LanguageModelSAETrainingRunner(cfg, override_model=tiny_model(toy),
                                          override_dataset=tiny_token_dataset(toy))
