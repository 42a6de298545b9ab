"""Moved to :mod:`orthosae_plugin.smollm2.activations`. This alias keeps code written against
the old path working; it warns once and will be removed in a later release."""

import warnings

from orthosae_plugin.smollm2.activations import (
    DEFAULT_HOOK,
    SEQPOS_SLICE,
    cache_info,
    cached_activations,
    heldout_metrics,
    smollm2_runner_config,
    smollm2_training_runner,
)

__all__ = ["DEFAULT_HOOK", "SEQPOS_SLICE", "cache_info", "cached_activations", "heldout_metrics",
           "smollm2_runner_config", "smollm2_training_runner"]

warnings.warn("orthosae_plugin.activations moved to orthosae_plugin.smollm2.activations; the old path will "
              "be removed in a later release", FutureWarning, stacklevel=2)
