"""Train an ``ortho_contrastive`` SAE through SAELens's runner, then run SAEBench's
absorption eval on it straight away, on the model object already in memory.

Tiny form (default; offline, CPU, well under a minute): the planted first-letter model
(``orthosae_plugin.evals.planted``), whose residual stream carries a known first-letter
direction, trained on random sequences of its ~1150 words::

    python examples/absorption_eval.py --out runs/absorption_example

Real form (GPU and Hugging Face hub access): Gemma-2-2B, layer 19, as in the experiment
that reported 0.0 absorption for every letter from an SAE trained for 4 steps::

    python examples/absorption_eval.py --gemma --out runs/gemma_absorption

Either way the script prints SAEBench's per-letter table and the alarm's verdict, writes
everything under ``--out`` (``sae/``: the saved SAE; ``absorption/``: the eval), and exits
with status 2 if the verdict is untrustworthy.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from datasets import Dataset
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_lens import LanguageModelSAETrainingRunner
from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
from transformer_lens import HookedTransformer

from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.evals.absorption import (
    format_summary,
    get_alarm,
    result_path,
    run_absorption_eval,
)
from orthosae_plugin.evals.planted import PlantedFirstLetterModel, build_planted_model
from orthosae_plugin.toy import ToySetup, tiny_runner_config


def planted_word_sequences(planted: PlantedFirstLetterModel, n_sequences: int,
                           context_size: int, seed: int) -> Dataset:
    """Pre-tokenised training data: sequences of uniformly random words of the planted
    vocabulary (a ``tokens`` column, as SAELens expects)."""
    generator = torch.Generator().manual_seed(seed)
    ids_T = planted.alpha_token_ids
    picks_NS = torch.randint(len(ids_T), (n_sequences, context_size), generator=generator)
    return Dataset.from_dict({"tokens": ids_T[picks_NS].tolist()})


def train_on_planted(
    out: Path, steps: int, batch_size: int, d_sae: int
) -> tuple[Path, HookedTransformer]:
    """Train on the planted model; returns (saved SAE folder, the model object)."""
    # Every tensor here is tiny: one CPU thread is as fast, and a second one mostly spins
    # against other processes on a shared machine (4-8x slower there with two threads).
    torch.set_num_threads(1)
    planted = build_planted_model()
    setup = ToySetup(
        d_model=planted.config.d_model,
        n_layers=planted.config.n_layers,
        sae_kwargs={"d_sae": d_sae},
    )
    cfg = tiny_runner_config(setup, training_tokens=steps * batch_size,
                             train_batch_size_tokens=batch_size, output_path=str(out / "sae"))
    # The toy runner config names its own toy model; the SAE must record the model it is
    # trained on, so that the eval can check it is evaluated on the same one.
    cfg = replace(cfg, model_name=planted.config.model_name)
    n_sequences = -(-steps * batch_size // setup.context_size)
    dataset = planted_word_sequences(planted, n_sequences, setup.context_size, setup.seed)
    LanguageModelSAETrainingRunner(cfg, override_model=planted.model,
                                   override_dataset=dataset).run()
    return out / "sae", planted.model


def train_on_gemma(
    out: Path, training_tokens: int, d_sae: int
) -> tuple[Path, HookedTransformer]:
    """Train on Gemma-2-2B layer 19 (needs a GPU and the hub); returns (SAE folder, model)."""
    batch_size = 4096
    cfg = LanguageModelSAERunnerConfig(
        sae=OrthoContrastiveTrainingSAEConfig(
            d_in=2304, d_sae=d_sae, l1_coefficient=0.04,
            ortho_threshold_start=0.3, ortho_threshold_end=0.05,
            contrastive_coefficient=0.3, contrastive_warm_up_steps=1000, projection_dim=128,
            ortho_mode="chunked",
        ),
        model_name="gemma-2-2b",
        hook_name="blocks.19.hook_resid_post",
        dataset_path="monology/pile-uncopyrighted",
        streaming=True,
        context_size=128,  # SAEBench's absorption prompts are ~70 tokens
        training_tokens=training_tokens,
        train_batch_size_tokens=batch_size,
        lr=3e-4,
        device="cuda",
        output_path=str(out / "sae"),
        logger=LoggingConfig(log_to_wandb=False),
    )
    runner = LanguageModelSAETrainingRunner(cfg)
    runner.run()
    return out / "sae", runner.model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/absorption_example"))
    parser.add_argument("--gemma", action="store_true",
                        help="Gemma-2-2B layer 19 instead of the planted model (GPU + hub)")
    parser.add_argument("--steps", type=int, default=1200,
                        help="planted form: training steps (default 1200; at least the "
                        "contrastive warm-up, 1000)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="planted form: tokens per step (default 256)")
    parser.add_argument("--training-tokens", type=int, default=100_000_000,
                        help="Gemma form: training tokens (default 1e8, 24414 steps of 4096)")
    parser.add_argument("--d-sae", type=int, default=None,
                        help="dictionary size (default: 256 planted, 16384 Gemma)")
    args = parser.parse_args(argv)

    if args.gemma:
        sae_path, model = train_on_gemma(args.out, args.training_tokens, args.d_sae or 16384)
        config = AbsorptionEvalConfig(llm_batch_size=32)  # SAEBench's batch for Gemma-2-2B
    else:
        sae_path, model = train_on_planted(args.out, args.steps, args.batch_size,
                                           args.d_sae or 256)
        config = AbsorptionEvalConfig()
    output = run_absorption_eval(sae_path, model, args.out / "absorption", config)
    print(format_summary(output, result_path(args.out / "absorption", sae_path.name)))
    return 0 if get_alarm(output).trustworthy else 2


if __name__ == "__main__":
    raise SystemExit(main())
