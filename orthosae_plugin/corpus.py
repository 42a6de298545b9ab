"""Moved to :mod:`orthosae_plugin.smollm2.corpus`. This alias keeps code written against the
old path working; it warns once and will be removed in a later release."""

import warnings

from orthosae_plugin.smollm2.corpus import (
    CORPUS_LAYOUT,
    DEBIAN_PACKAGES,
    HELDOUT_SHARE,
    SPLITS,
    CorpusUnavailable,
    debian_text_dir,
    english_corpus,
    separator_token_id,
    split_document,
)

__all__ = ["CORPUS_LAYOUT", "DEBIAN_PACKAGES", "HELDOUT_SHARE", "SPLITS", "CorpusUnavailable", "debian_text_dir",
           "english_corpus", "separator_token_id", "split_document"]

warnings.warn("orthosae_plugin.corpus moved to orthosae_plugin.smollm2.corpus; the old path will be removed "
              "in a later release", FutureWarning, stacklevel=2)
