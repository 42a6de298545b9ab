"""Moved to :mod:`orthosae_plugin.smollm2.model` (the loader) and
:mod:`orthosae_plugin.smollm2.cli` (``python -m orthosae_plugin.smollm2 fetch | where``).

This alias keeps code written against the old path, and ``python -m orthosae_plugin.smollm
fetch``, working; it warns once and will be removed in a later release.
"""

import warnings

from orthosae_plugin.smollm2.cache import CACHE_ENV, cache_dir
from orthosae_plugin.smollm2.cli import fetch, main
from orthosae_plugin.smollm2.model import (
    GGUF_ENV,
    GGUF_IN_WHEEL,
    GGUF_NAME,
    SMOLLM2_MODEL_NAME,
    SMOLLM2_PROCESSING,
    WHEEL_SPEC,
    SmolLM2Unavailable,
    convert_smollm2,
    find_gguf,
    load_hf_smollm2,
    load_smollm2,
)

__all__ = ["CACHE_ENV", "GGUF_ENV", "GGUF_IN_WHEEL", "GGUF_NAME", "SMOLLM2_MODEL_NAME", "SMOLLM2_PROCESSING",
           "WHEEL_SPEC", "SmolLM2Unavailable", "cache_dir", "convert_smollm2", "fetch", "find_gguf",
           "load_hf_smollm2", "load_smollm2", "main"]

warnings.warn("orthosae_plugin.smollm moved to orthosae_plugin.smollm2.model (and the command to "
              "python -m orthosae_plugin.smollm2 fetch); the old path will be removed in a later release",
              FutureWarning, stacklevel=2)

if __name__ == "__main__":
    main()
