"""Specification of ``orthosae_plugin.evals.saebench_fixes``: the workarounds change where
SAEBench reads and how much it probes, never what it computes."""

from __future__ import annotations

import pytest
import torch
from sae_bench.evals.absorption import common as saebench_common
from sae_bench.evals.absorption.prompting import create_icl_prompt
from sae_bench.evals.absorption.vocab import get_alpha_tokens

from fixtures.planted import one_torch_thread  # noqa: F401  (pytest fixture)
from orthosae_plugin.evals.planted import PlantedModelConfig, build_planted_model
from orthosae_plugin.evals.saebench_fixes import (
    choose_vocabulary,
    first_letter,
    saebench_vocabulary,
    select_words,
    stop_after_layer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def two_layer():
    """A planted model with two blocks, so that stopping after block 0 skips one."""
    return build_planted_model(PlantedModelConfig(n_layers=2))


def test_select_words_takes_at_most_n_per_letter_seeded_and_sorted():
    words = [f" {c}{i}" for c in "abc" for i in range(50)] + [" z1", "Q"]
    picked = select_words(words, 10, seed=3)
    counts = {letter: sum(first_letter(w) == letter for w in picked) for letter in "abczq"}
    assert counts == {"a": 10, "b": 10, "c": 10, "z": 1, "q": 1}
    assert picked == sorted(picked)
    assert select_words(list(reversed(words)), 10, seed=3) == picked  # order-free
    assert select_words(words, 10, seed=4) != picked
    assert select_words(words, None, seed=3) == sorted(words)


def test_a_letters_sample_does_not_depend_on_the_other_letters():
    words = [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(50)]
    only_a = select_words([w for w in words if w.startswith("a")], 10, seed=0)
    assert [w for w in select_words(words, 10, seed=0) if w.startswith("a")] == only_a


def test_saebench_sees_the_subsample_while_patched_and_the_full_list_after(two_layer):
    tokenizer = two_layer.model.tokenizer
    with saebench_vocabulary(5, seed=0):
        patched = saebench_common.get_alpha_tokens(tokenizer)
    assert patched == select_words(get_alpha_tokens(tokenizer), 5, 0)
    assert len(patched) == choose_vocabulary(two_layer.model, 5, 0).n_words_probed
    assert saebench_common.get_alpha_tokens is get_alpha_tokens


def test_a_memo_runs_each_list_of_prompts_once_and_leaves_other_calls_alone(two_layer):
    model = two_layer.model
    hook = "blocks.0.hook_resid_post"
    prompts, others = ["ab has the first letter:", "cd has"], ["ef has the first letter:"]
    _, full = model.run_with_cache(prompts, names_filter=[hook])
    runs = []
    handle = model.blocks[0].register_forward_hook(lambda *args: runs.append(1))
    memo: dict = {}
    try:
        with stop_after_layer(model, 0, memo):
            _, first = model.run_with_cache(prompts, names_filter=[hook])
            _, again = model.run_with_cache(prompts, names_filter=[hook])
            assert len(runs) == 1  # the second call read the memo
            model.run_with_cache(others, names_filter=[hook])
            model.run_with_cache(model.to_tokens(prompts), names_filter=[hook])  # tokens: not memoised
            model.run_with_cache(prompts, names_filter=["blocks.1.hook_resid_post"])  # another hook: likewise
        assert len(runs) == 4 and len(memo) == 2
        with stop_after_layer(model, 0, memo):  # a later eval with the same memo
            _, later = model.run_with_cache(prompts, names_filter=[hook])
        assert len(runs) == 4
    finally:
        handle.remove()
    for cache in (first, again, later):
        torch.testing.assert_close(cache[hook], full[hook], rtol=0, atol=0)
        assert cache[hook].grad_fn is None


def test_forward_that_stops_after_the_layer_gives_the_full_forwards_activations(two_layer):
    model = two_layer.model
    vocab = sorted(get_alpha_tokens(model.tokenizer))
    prompts = [create_icl_prompt(w, examples=vocab, max_icl_examples=10,
                                 base_template="{word} has the first letter:").base
               for w in vocab[::97]]
    hook = "blocks.0.hook_resid_post"
    _, full = model.run_with_cache(prompts, names_filter=[hook])
    blocks_run = []
    handle = model.blocks[1].register_forward_hook(lambda *args: blocks_run.append(1))
    try:
        with stop_after_layer(model, 0):
            out, stopped = model.run_with_cache(prompts, names_filter=[hook])
    finally:
        handle.remove()
    torch.testing.assert_close(stopped[hook], full[hook], rtol=0, atol=0)
    assert blocks_run == []  # block 1 (and the unembedding) never ran
    assert out.shape[-1] == model.cfg.d_model  # the residual, not logits
    # outside the context, and for other hooks, the model runs whole
    logits, _ = model.run_with_cache(prompts, names_filter=["blocks.1.hook_resid_post"])
    assert logits.shape[-1] == model.cfg.d_vocab
