"""Console scripts.

``orthosae-train`` is SAELens's own training command line (``python -m
sae_lens.llm_sae_training_runner``) with this plugin imported first, so that
``--architecture ortho_contrastive`` and its fields are available::

    orthosae-train --architecture ortho_contrastive --model_name gpt2 \\
        --hook_name blocks.8.hook_resid_pre --d_in 768 --d_sae 16384 \\
        --training_tokens 100_000_000 --contrastive_coefficient 0.3

``--projection_dim None`` and ``--ortho_anneal_steps None`` select exact similarities
and the run's own horizon. Every bad value is refused as the Python and dict forms refuse
it: a ``ValueError`` naming the field, the value and the rule (``orthosae-train`` prints
it and exits with status 2, before any model is loaded).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orthosae_plugin  # noqa: F401  (registers ortho_contrastive)
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, _parse_cfg_args


def parse_train_args(args: Sequence[str]) -> LanguageModelSAERunnerConfig:
    """The runner config that SAELens's command line builds from ``args``.

    A value that does not parse (``--ortho_block_size 2.5``) raises the same kind of
    error as one that parses but is out of range: a ``ValueError`` naming the field.
    """
    try:
        return _parse_cfg_args(args)
    except argparse.ArgumentError as error:
        field = (error.argument_name or "argument").split("/")[0].lstrip("-")
        raise ValueError(f"{field}: {error.message}") from None


def train_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``orthosae-train``: SAELens's CLI with the plugin registered."""
    try:
        cfg = parse_train_args(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(f"orthosae-train: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    LanguageModelSAETrainingRunner(cfg=cfg).run()


if __name__ == "__main__":  # `python -m orthosae_plugin.cli ...` is `orthosae-train ...`
    train_main()
