"""``python -m orthosae_plugin.smollm2 fetch | where``: fill the cache, or print where it is.

``fetch`` fetches and converts SmolLM2 and builds the text corpus's two splits in the cache
(``scripts/setup-env.sh`` runs it; ~3 minutes on 2 CPU cores the first time, seconds after).
``where`` prints the cache folder (``$ORTHOSAE_CACHE``, else ``~/.cache/orthosae-plugin``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from orthosae_plugin.smollm2.cache import MissingExtra, cache_dir, say
from orthosae_plugin.smollm2.corpus import SPLITS, CorpusUnavailable, english_corpus
from orthosae_plugin.smollm2.model import SmolLM2Unavailable, load_smollm2


def fetch(corpus: bool = True) -> None:
    """Fetch and convert the model, and build the text corpus, into the cache."""
    started = time.perf_counter()
    model = load_smollm2()
    if corpus:
        for split in SPLITS:
            english_corpus(model.tokenizer, split=split)
    say(f"SmolLM2 and the corpus are ready in {cache_dir()} ({time.perf_counter() - started:.0f} s)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orthosae_plugin.smollm2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch + convert the model and build the corpus in the cache")
    p_fetch.add_argument("--no-corpus", action="store_true", help="only the model")
    sub.add_parser("where", help="print the cache folder")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(cache_dir())
        return
    try:
        fetch(corpus=not args.no_corpus)
    except (SmolLM2Unavailable, CorpusUnavailable, MissingExtra) as error:
        sys.exit(f"error: {error}")
