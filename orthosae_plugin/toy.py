"""A tiny, randomly initialised language model and an in-memory token dataset.

Everything here is built locally (nothing is downloaded), so that the demo, the examples
and the tests can train an SAE through SAELens's own runner on a CPU in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from orthosae_plugin.ortho_contrastive import OrthoContrastiveTrainingSAEConfig


@dataclass
class ToySetup:
    """Sizes of the toy model, its data and the SAE trained on it."""

    d_model: int = 64
    """Residual width of the toy model, and the SAE's d_in."""
    n_layers: int = 2
    """Transformer blocks; the SAE reads blocks.{n_layers - 1}.hook_resid_post."""
    d_vocab: int = 512
    """Vocabulary size of the random token data."""
    context_size: int = 32
    """Tokens per sequence."""
    n_sequences: int = 2048
    """Sequences in the in-memory dataset (SAELens cycles through it if needed)."""
    seed: int = 0
    """Seed of the model weights and the token data."""
    sae_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides of OrthoContrastiveTrainingSAEConfig fields (d_sae defaults to 4 x d_model)."""

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.n_layers - 1}.hook_resid_post"


def tiny_model(setup: ToySetup) -> HookedTransformer:
    """A random ``HookedTransformer`` with no tokenizer."""
    torch.manual_seed(setup.seed)
    cfg = HookedTransformerConfig(
        n_layers=setup.n_layers,
        d_model=setup.d_model,
        d_head=16,
        n_heads=setup.d_model // 16,
        d_mlp=4 * setup.d_model,
        d_vocab=setup.d_vocab,
        n_ctx=setup.context_size,
        act_fn="gelu",
        normalization_type="LN",
        seed=setup.seed,
    )
    return HookedTransformer(cfg)


def tiny_token_dataset(setup: ToySetup) -> Dataset:
    """Pre-tokenised sequences (a ``tokens`` column) drawn from a Zipf-like unigram law,
    so that some tokens are frequent and some rare, as in text."""
    generator = torch.Generator().manual_seed(setup.seed)
    probs_V = 1.0 / torch.arange(1, setup.d_vocab + 1, dtype=torch.float64)
    tokens_NS = torch.multinomial(
        probs_V / probs_V.sum(),
        setup.n_sequences * setup.context_size,
        replacement=True,
        generator=generator,
    ).view(setup.n_sequences, setup.context_size)
    return Dataset.from_dict({"tokens": tokens_NS.tolist()})


def tiny_runner_config(
    setup: ToySetup,
    training_tokens: int,
    train_batch_size_tokens: int = 256,
    output_path: str | None = None,
    checkpoint_path: str | None = None,
    logger: LoggingConfig | None = None,
    **runner_kwargs: Any,
) -> LanguageModelSAERunnerConfig[OrthoContrastiveTrainingSAEConfig]:
    """A SAELens runner config that trains ``ortho_contrastive`` on the toy model."""
    sae_kwargs = {"d_in": setup.d_model, "d_sae": 4 * setup.d_model, **setup.sae_kwargs}
    return LanguageModelSAERunnerConfig(
        sae=OrthoContrastiveTrainingSAEConfig(**sae_kwargs),
        model_name="orthosae-toy",
        hook_name=setup.hook_name,
        dataset_path="in-memory",
        is_dataset_tokenized=True,
        context_size=setup.context_size,
        prepend_bos=False,
        training_tokens=training_tokens,
        train_batch_size_tokens=train_batch_size_tokens,
        store_batch_size_prompts=16,
        # SAELens's mixing buffer holds n_batches_in_buffer * context_size activations
        # and must hold two training batches.
        n_batches_in_buffer=max(4, -(-2 * train_batch_size_tokens // setup.context_size)),
        lr=1e-3,
        device="cpu",
        seed=setup.seed,
        output_path=output_path,
        checkpoint_path=checkpoint_path,
        logger=logger or LoggingConfig(log_to_wandb=False),
        verbose=False,
        **runner_kwargs,
    )
