"""Console scripts.

``orthosae-train`` is SAELens's own training command line (``python -m
sae_lens.llm_sae_training_runner``) with this plugin imported first, so that
``--architecture ortho_contrastive`` and its fields are available::

    orthosae-train --architecture ortho_contrastive --model_name gpt2 \\
        --hook_name blocks.8.hook_resid_pre --d_in 768 --d_sae 16384 \\
        --training_tokens 100_000_000 --contrastive_coefficient 0.3
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import orthosae_plugin  # noqa: F401  (registers ortho_contrastive)
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, _parse_cfg_args
from sae_lens.config import LanguageModelSAERunnerConfig


def parse_train_args(args: Sequence[str]) -> LanguageModelSAERunnerConfig:
    """The runner config that SAELens's command line builds from ``args``."""
    return _parse_cfg_args(args)


def train_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``orthosae-train``: SAELens's CLI with the plugin registered."""
    cfg = parse_train_args(sys.argv[1:] if argv is None else argv)
    LanguageModelSAETrainingRunner(cfg=cfg).run()
