"""Public-domain English prose, offline, as a tokenized ``datasets.Dataset``.

    from orthosae_plugin.smollm2.corpus import english_corpus
    train = english_corpus(model.tokenizer)                     # column "input_ids", 128 tokens a row
    heldout = english_corpus(model.tokenizer, split="heldout")  # never seen by training

The default text comes from two Debian packages, fetched with ``apt-get download`` and unpacked
with ``dpkg-deb -x`` into the cache (nothing is installed):

- ``r-cran-janeaustenr``: Jane Austen's six novels (R lazy-load data, read with PyPI ``rdata``);
- ``sword-text-web``: the World English Bible with the Deuterocanon (a SWORD module, read with
  PyPI ``pysword``; footnotes (``<note>``) and markup removed).

``rdata`` and ``pysword`` are the ``[smollm2]`` extra; they are needed only to extract the text
once (a ``text_dir`` of your own needs neither).

Both are public domain. Each novel and each book of the Bible is one document; the held-out
split is the last :data:`HELDOUT_SHARE` of every document (cut at a line break), the training
split the rest, so the two never share text. Any folder of ``.txt`` files (``text_dir``; one
document per file) works the same way.

Rows: each split's documents are tokenized and joined with ``<|endoftext|>`` (the tokenizer's
EOS where it has none), the stream is cut into rows of exactly ``context_size`` tokens (the
remainder dropped), and the rows are shuffled with a fixed seed, so that the first rows
(``max_tokens``) mix all sources. Rows start mid-text, with no special token: a special token
at position 0 makes position 1 an outlier too in ~5-16% of rows (measured; see
``orthosae_plugin.smollm2.activations``), while with text at position 0 only position 0 is.
The result is saved with ``Dataset.save_to_disk`` under the cache, keyed by the tokenizer's
vocabulary, the context size, the source and the split.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, load_from_disk

from orthosae_plugin.smollm2.cache import build_folder, cache_dir, no_datasets_progress_bars, require_extra, say

HELDOUT_SHARE = 0.1
"""Share of every document, at its end, that forms the held-out split."""
DEBIAN_PACKAGES = ("r-cran-janeaustenr", "sword-text-web")
SPLITS = ("train", "heldout")
TEXT_VERSION = 1
"""Version of the text extraction (bumped when it changes; the text is then extracted again)."""
ROWS_VERSION = 3
"""Version of the row layout (bumped when it changes; the rows are then rebuilt)."""
CORPUS_LAYOUT = f"text{TEXT_VERSION}-rows{ROWS_VERSION}"
"""The text extraction and row layout; anything derived from the rows (cached
activations) records it and is reused only under the same layout."""
_SHUFFLE_SEED = 0


class CorpusUnavailable(RuntimeError):
    """The Debian packages can neither be found nor fetched; the message names the commands."""


# --- the Debian text -------------------------------------------------------------------------

def _debian_dir() -> Path:
    return cache_dir() / "debian"


def _fetch_debian_packages() -> Path:
    """Download and unpack the two packages into the cache (no install); returns the root."""
    debs, root = _debian_dir() / "debs", _debian_dir() / "root"
    debs.mkdir(parents=True, exist_ok=True)
    commands = (f"  apt-get update && (cd {debs} && apt-get download {' '.join(DEBIAN_PACKAGES)})\n"
                f"  for f in {debs}/*.deb; do dpkg-deb -x \"$f\" {root}; done\n"
                "(or pass text_dir= a folder of .txt files)")

    def have(name: str) -> list[Path]:
        return sorted(debs.glob(f"{name}_*.deb"))

    missing = [name for name in DEBIAN_PACKAGES if not have(name)]
    if missing:
        if shutil.which("apt-get") is None:
            raise CorpusUnavailable(f"apt-get is not available to fetch {missing}. On a Debian/Ubuntu "
                                    f"machine, run:\n{commands}")
        say(f"fetching the text packages {missing} with apt-get download into {debs}")
        run = lambda *cmd: subprocess.run(cmd, cwd=debs, capture_output=True, text=True)  # noqa: E731
        result = run("apt-get", "download", *missing)
        if result.returncode != 0:
            say("apt-get download failed; running apt-get update and retrying")
            run("apt-get", "update")
            result = run("apt-get", "download", *missing)
        missing = [name for name in DEBIAN_PACKAGES if not have(name)]
        if missing:
            tail = "\n".join(result.stderr.strip().splitlines()[-3:])
            raise CorpusUnavailable(f"could not fetch {missing}:\n{tail}\nFix (as root, with network):\n{commands}")
    root.mkdir(parents=True, exist_ok=True)
    for name in DEBIAN_PACKAGES:
        stamp = root / f".{name}.unpacked"
        if not stamp.exists():
            deb = have(name)[-1]
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            stamp.write_text(deb.name)
    return root


def _rdb_objects(rdx: Path, rdb: Path) -> Iterator[tuple[str, Any]]:
    """Objects of an R lazy-load database (.rdx index + .rdb blobs)."""
    import gzip
    import zlib

    import rdata

    def parse(raw: bytes) -> Any:
        return rdata.conversion.convert(rdata.parser.parse_data(raw))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "Unknown file type: assumed RDS"
        index = parse(gzip.decompress(rdx.read_bytes()))
        blobs = rdb.read_bytes()
        for name, (offset, length) in index["variables"].items():
            blob = blobs[int(offset): int(offset) + int(length)]
            yield name, parse(zlib.decompress(blob[4:]))  # 4 bytes of length, then zlib


def _austen_documents(root: Path) -> Iterator[tuple[str, str]]:
    data = root / "usr/lib/R/site-library/janeaustenr/data"
    for name, lines in _rdb_objects(data / "Rdata.rdx", data / "Rdata.rdb"):
        yield f"austen-{name}", "\n".join(str(line) for line in lines)


_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_EMPTY_TAG = re.compile(r"<[^>]*/>")
_TAG = re.compile(r"<[^>]+>")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?’”)])")


def _osis_to_text(verse: str) -> str:
    text = _NOTE.sub(" ", verse)            # footnotes: not part of the text
    text = _EMPTY_TAG.sub(" ", text)        # milestones (<l sID=.../>, <lb/>): a space
    text = html.unescape(_TAG.sub("", text))  # inline markup (<w>, <q>, <title>): its words
    text = re.sub(r"\s+", " ", text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip()


def _bible_documents(root: Path) -> Iterator[tuple[str, str]]:
    from pysword.modules import SwordModules

    from tqdm.auto import tqdm

    modules = SwordModules(str(root / "usr/share/sword"))
    modules.parse_modules()
    bible = modules.get_bible_from_module("engWEB2015eb")
    books = [book for testament in bible.get_structure().get_books().values() for book in testament]
    for i, book in enumerate(tqdm(books, desc="World English Bible (books)", file=sys.stderr)):
        verses = iter(bible.get_iter(books=[book.osis_name], clean=False))
        chapters = []  # one line per chapter
        for n_verses in book.chapter_lengths:
            text = " ".join(t for t in (_osis_to_text(next(verses, "")) for _ in range(n_verses)) if t)
            if text:
                chapters.append(text)
        if chapters:
            yield f"bible-{i:02d}-{book.osis_name}", "\n".join(chapters)


def debian_text_dir() -> Path:
    """The Debian text as a folder of ``.txt`` files (one per document), built once."""
    out = cache_dir() / "text" / f"debian-v{TEXT_VERSION}"
    if (out / ".complete").exists():
        return out
    require_extra("rdata", "pysword", needed_for="Extracting the English text from its Debian packages")
    root = _fetch_debian_packages()
    say(f"extracting plain text from {', '.join(DEBIAN_PACKAGES)} into {out}")

    def write(tmp: Path) -> None:
        for name, text in [*_austen_documents(root), *_bible_documents(root)]:
            (tmp / f"{name}.txt").write_text(text, encoding="utf-8")
        (tmp / ".complete").write_text(json.dumps({"packages": DEBIAN_PACKAGES}))

    return build_folder(out, write)


# --- splitting, tokenizing, rows ----------------------------------------------------------

def split_document(text: str, split: str, heldout_share: float = HELDOUT_SHARE) -> str:
    """The training part (start) or held-out part (end) of one document, cut at the first line
    break after ``1 - heldout_share`` of its characters (at that point if there is none)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {SPLITS}")
    cut = int(len(text) * (1 - heldout_share))
    newline = text.find("\n", cut)
    cut = newline if newline != -1 else cut
    return text[:cut].strip() if split == "train" else text[cut:].strip()


def _tokenizer_key(tokenizer: Any) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    probe = tokenizer("The quick brown fox. 1234", add_special_tokens=True)["input_ids"]
    return hashlib.sha256((vocab + str(probe) + type(tokenizer).__name__).encode()).hexdigest()[:16]


def _source_key(text_dir: Path) -> str:
    files = sorted(text_dir.rglob("*.txt"))
    if not files:
        raise ValueError(f"text_dir={str(text_dir)!r} holds no .txt files")
    listing = [(str(f.relative_to(text_dir)), f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    return hashlib.sha256(json.dumps([str(text_dir.resolve()), listing]).encode()).hexdigest()[:16]


def separator_token_id(tokenizer: Any) -> int:
    """The token between documents: ``<|endoftext|>`` (SmolLM2's document separator in
    pretraining), else the tokenizer's EOS."""
    sep = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(sep, int) and sep >= 0 and tokenizer.convert_ids_to_tokens(sep) == "<|endoftext|>":
        return sep
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither <|endoftext|> nor an EOS token to start rows with")
    return tokenizer.eos_token_id


def _build_rows(tokenizer: Any, text_dir: Path, split: str, context_size: int) -> np.ndarray:
    from tqdm.auto import tqdm

    sep = separator_token_id(tokenizer)
    stream: list[int] = []
    files = sorted(text_dir.rglob("*.txt"))
    for path in tqdm(files, desc=f"tokenizing {split} split", file=sys.stderr):
        part = split_document(path.read_text(encoding="utf-8"), split)
        if part:
            stream.extend(tokenizer(part, add_special_tokens=False)["input_ids"])
            stream.append(sep)
    n_rows = len(stream) // context_size
    rows = np.asarray(stream[: n_rows * context_size], dtype=np.int32).reshape(n_rows, context_size)
    return rows[np.random.default_rng(_SHUFFLE_SEED).permutation(n_rows)]


def english_corpus(tokenizer: Any, context_size: int = 128, split: str = "train",
                   text_dir: str | Path | None = None, max_tokens: int | None = None) -> Dataset:
    """Tokenized English text in rows of exactly ``context_size`` tokens (column ``input_ids``).

    ``split``: ``"train"`` or ``"heldout"`` (the last :data:`HELDOUT_SHARE` of every
    document; disjoint from ``"train"``). ``text_dir``: a folder of ``.txt`` files, one
    document each; default: the Austen novels and the World English Bible from Debian
    (fetched into the cache on first use). ``max_tokens``: keep only the first
    ``max_tokens // context_size`` rows (rows are shuffled with a fixed seed, so these mix
    all documents). No BOS is added (SmolLM2 is not trained with one).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {SPLITS}")
    if context_size < 2:
        raise ValueError(f"context_size={context_size}; must be at least 2")
    if max_tokens is not None and max_tokens < context_size:
        raise ValueError(f"max_tokens={max_tokens}; must be at least context_size={context_size}")
    if text_dir is None:
        source, source_key = debian_text_dir(), f"debian{TEXT_VERSION}"
    else:
        source = Path(text_dir).expanduser()
        source_key = _source_key(source)
    key = f"{_tokenizer_key(tokenizer)}-{source_key}-ctx{context_size}-{split}-v{ROWS_VERSION}"
    folder = cache_dir() / "corpus" / key
    if not (folder / "dataset_info.json").exists():
        rows = _build_rows(tokenizer, source, split, context_size)
        if len(rows) == 0:
            raise ValueError(f"the {split} split of {source} has fewer than {context_size} tokens")

        def write(tmp: Path) -> None:
            with no_datasets_progress_bars():  # one bar per phase: tokenizing had its own
                Dataset.from_dict({"input_ids": rows}).save_to_disk(str(tmp))

        build_folder(folder, write)
        say(f"corpus {split}: {len(rows)} rows x {context_size} tokens = {rows.size:,} tokens, cached in {folder}")
    data = load_from_disk(str(folder))
    if max_tokens is not None:
        data = data.select(range(min(len(data), max_tokens // context_size)))
    return data

