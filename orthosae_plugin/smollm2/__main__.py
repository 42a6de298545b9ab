"""``python -m orthosae_plugin.smollm2 fetch | where`` (see :mod:`orthosae_plugin.smollm2.cli`)."""

from orthosae_plugin.smollm2.cli import main

main()
