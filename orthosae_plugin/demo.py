"""Moved to :mod:`orthosae_plugin.smollm2.demo` (``orthosae-demo``, ``make demo``). This alias
keeps ``python -m orthosae_plugin.demo`` and code written against the old path working; it
warns once and will be removed in a later release."""

import warnings

from orthosae_plugin.smollm2.demo import DEFAULT_LAYER, DEFAULT_TOKENS, main, plot_losses, record_losses, run_demo

__all__ = ["DEFAULT_LAYER", "DEFAULT_TOKENS", "main", "plot_losses", "record_losses", "run_demo"]

warnings.warn("orthosae_plugin.demo moved to orthosae_plugin.smollm2.demo; the old path will be removed in a "
              "later release", FutureWarning, stacklevel=2)

if __name__ == "__main__":
    main()
