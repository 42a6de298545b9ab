"""The English corpus: fixed-length rows of real text, and a held-out split training never sees."""

import numpy as np
import pytest

from orthosae_plugin.smollm2 import corpus
from orthosae_plugin.smollm2.corpus import CorpusUnavailable, english_corpus, separator_token_id, split_document


@pytest.fixture(scope="module")
def splits(smollm2):
    return {s: np.asarray(english_corpus(smollm2.tokenizer, split=s)["input_ids"]) for s in ("train", "heldout")}


def test_rows_are_full_context_and_none_is_empty(smollm2, splits):
    sep = separator_token_id(smollm2.tokenizer)
    for rows in splits.values():
        assert rows.ndim == 2 and rows.shape[1] == 128
        assert ((rows != sep).sum(1) > 64).all()  # every row is mostly text
    # Austen and the World English Bible: ~2M tokens for training, a tenth held out (measured)
    assert 1_800_000 < splits["train"].size < 2_100_000
    assert 150_000 < splits["heldout"].size < 250_000
    text = smollm2.tokenizer.decode(splits["train"][0])
    assert len(text.split()) > 50


def test_heldout_rows_never_occur_in_training(splits):
    train = {row.tobytes() for row in splits["train"]}
    assert not any(row.tobytes() in train for row in splits["heldout"])


def test_each_split_holds_only_its_own_part_of_every_document(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHOSAE_CACHE", str(tmp_path / "cache"))
    docs = tmp_path / "texts"
    docs.mkdir()
    texts = ["\n".join(f"Document {d} says sentence number {i}." for i in range(300)) for d in range(3)]
    for d, text in enumerate(texts):
        (docs / f"doc{d}.txt").write_text(text)
    for split in ("train", "heldout"):
        parts = [split_document(t, split) for t in texts]
        assert all(("number 299." in p, "number 0." in p) == (split == "heldout", split == "train") for p in parts)
        data = english_corpus(smollm2.tokenizer, context_size=32, split=split, text_dir=docs)
        for row in data["input_ids"]:
            for piece in smollm2.tokenizer.decode(row).split("<|endoftext|>"):
                assert any(piece in p for p in parts), (split, piece)
    assert len(english_corpus(smollm2.tokenizer, context_size=32, text_dir=docs, max_tokens=64)) == 2


def test_split_document_partitions_the_text():
    text = "\n".join(f"line {i}" for i in range(100))
    train, heldout = split_document(text, "train"), split_document(text, "heldout")
    assert train + "\n" + heldout == text
    assert heldout.startswith("line 9") and 8 <= len(heldout.splitlines()) <= 12  # the last ~10%


def test_bad_arguments_name_the_field(smollm2, tmp_path):
    with pytest.raises(ValueError, match="split='test'"):
        english_corpus(smollm2.tokenizer, split="test")
    with pytest.raises(ValueError, match="holds no .txt files"):
        english_corpus(smollm2.tokenizer, text_dir=tmp_path)


def test_without_apt_get_the_error_gives_the_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHOSAE_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(CorpusUnavailable, match=r"apt-get download r-cran-janeaustenr sword-text-web"):
        corpus.debian_text_dir()
