"""Workarounds for SAEBench's absorption eval (sae-bench 0.6.0), one function each.

Every function here names the upstream file and line it works around (paths relative to
``sae_bench/evals/absorption/`` unless given), so a reader can see what goes when SAEBench
fixes it. :mod:`orthosae_plugin.evals.absorption_eval` runs SAEBench's own building blocks with
these applied; nothing here changes what SAEBench measures, only where it reads, writes
and how long it takes:

* :func:`saebench_vocabulary`: lists the alphabetic vocabulary in sorted order (vocab.py:16
  iterates a Rust hash map) and, optionally, a seeded subsample of words per letter;
* :func:`stop_after_layer`: SAEBench's forward passes (probing.py:357,
  feature_absorption_calculator.py:152) run the whole model and its unembedding although
  only ``blocks.{layer}.hook_resid_post`` is read;
* :func:`probe_batch_size`, :func:`precalc_fits`: probe settings scaled to small vocabularies;
* :func:`fold_decoder_norms`: SAEBench only warns about non-unit decoder rows;
* :func:`model_fingerprint`: SAEBench keys its probe cache by model name and layer only;
* :func:`check_hook`, :func:`check_prompt_position`, :func:`check_split_covers_letters`:
  refuse inputs that SAEBench would evaluate wrongly, or crash on, without a word.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch
from sae_bench.evals.absorption import common as saebench_common
from sae_bench.evals.absorption import feature_absorption as saebench_feature_absorption
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_bench.evals.absorption.prompting import create_icl_prompt
from sae_bench.evals.absorption.vocab import LETTERS, get_alpha_tokens
from sae_lens import SAE
from transformer_lens import HookedTransformer

from orthosae_plugin.evals.alarm import NORM_TOLERANCE

RESID_POST_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
# SAEBench splits the alphabetic vocabulary 80/20 into probe train/test words
# (probing.py:247, create_dataset_probe_training, train_test_fraction=0.8).
SAEBENCH_TRAIN_FRACTION = 0.8
MIN_PROBE_STEPS_PER_EPOCH = 8
"""k-sparse probe batches are capped so that each epoch takes at least this many steps."""
PRECALC_MAX_BYTES = 2**30


# --------------------------------------------------------------------------- vocabulary


@dataclass
class VocabularyChoice:
    """Which alphabetic words SAEBench probes: all of them, or a seeded subsample."""

    n_alpha_tokens: int
    """Alphabetic tokens in the model's vocabulary (SAEBench's ``get_alpha_tokens``)."""
    words_per_letter: int | None
    """At most this many words per first letter; None: SAEBench's full vocabulary."""
    seed: int
    """Seeds the subsample (the eval's ``config.random_seed``)."""
    n_words_probed: int
    """Words SAEBench probes after subsampling (all alphabetic tokens when None)."""
    words_per_letter_probed: dict[str, int] = field(default_factory=dict)
    """Words probed per first letter."""


def first_letter(word: str) -> str:
    """The letter SAEBench's answer is built from (prompting.py:first_letter, with its
    defaults: leading space and non-letters ignored), lower-cased."""
    letters = [c for c in word.strip() if c.isalpha()]
    return letters[0].lower() if letters else ""


def select_words(words: list[str], words_per_letter: int | None, seed: int) -> list[str]:
    """`words` sorted; with `words_per_letter`, a seeded sample of at most that many words
    per first letter (each letter's words sorted before sampling, so the choice depends
    only on the vocabulary and the seed)."""
    ordered = sorted(words)
    if words_per_letter is None:
        return ordered
    by_letter: dict[str, list[str]] = {}
    for word in ordered:
        by_letter.setdefault(first_letter(word), []).append(word)
    chosen: list[str] = []
    for letter in sorted(by_letter):
        group = by_letter[letter]
        # one generator per letter: a letter's sample does not depend on the others
        rng = random.Random(f"{seed}-{letter}")
        chosen.extend(group if len(group) <= words_per_letter
                      else rng.sample(group, words_per_letter))
    return sorted(chosen)


def choose_vocabulary(model: HookedTransformer, words_per_letter: int | None,
                      seed: int) -> VocabularyChoice:
    """What :func:`saebench_vocabulary` will make SAEBench probe on `model`."""
    words = get_alpha_tokens(model.tokenizer)  # type: ignore[arg-type]
    chosen = select_words(words, words_per_letter, seed)
    counts = {letter: 0 for letter in LETTERS}
    for word in chosen:
        if first_letter(word) in counts:
            counts[first_letter(word)] += 1
    return VocabularyChoice(len(words), words_per_letter, seed, len(chosen), counts)


@contextlib.contextmanager
def saebench_vocabulary(words_per_letter: int | None, seed: int) -> Iterator[None]:
    """While it runs, make SAEBench list the alphabetic vocabulary sorted and, with
    `words_per_letter`, subsampled (:func:`select_words`).

    Works around vocab.py:16: SAEBench lists the vocabulary in ``tokenizer.vocab`` order,
    which for fast tokenizers comes from a Rust hash map and changes from call to call, so
    its seeded 80/20 probe split (probing.py:276) and in-context examples differ between
    runs with the same seed. The subsample replaces the list that SAEBench's probe
    training (common.py:284) and absorption experiment (feature_absorption.py:206) take;
    everything downstream (split, probes, scoring) is SAEBench's own, on fewer words.
    """

    def alpha_tokens(tokenizer: Any, *args: Any, **kwargs: Any) -> list[str]:
        return select_words(get_alpha_tokens(tokenizer, *args, **kwargs), words_per_letter,
                            seed)

    with (
        mock.patch.object(saebench_common, "get_alpha_tokens", alpha_tokens),
        mock.patch.object(saebench_feature_absorption, "get_alpha_tokens", alpha_tokens),
    ):
        yield


# --------------------------------------------------------------------------- forward


@contextlib.contextmanager
def stop_after_layer(model: HookedTransformer, layer: int, memo: dict[Any, Any] | None = None) -> Iterator[None]:
    """While it runs, SAEBench's forward passes stop after block `layer`.

    SAEBench reads only ``blocks.{layer}.hook_resid_post`` (probing.py:357,
    feature_absorption_calculator.py:152) but runs the whole model, unembedding included
    (for SmolLM2 at layer 15 of 30 with a 49k vocabulary, more than half the cost).
    ``run_with_cache(..., stop_at_layer=layer + 1)`` computes the same activations at that
    hook and nothing after it. Calls reading any other hook are left alone.

    With a ``memo`` dict, such a call on a list of prompts is run once (without autograd:
    SAEBench reads the activations as data) and kept in the memo under the prompts and the
    hook; the same call again, in this eval or a later one given the same memo, reads it
    from there. Those forwards do not depend on the SAE, so a memo shared by the evals of
    several SAEs of one model runs the model once for all of them. Only share a memo
    between evals of the same model: its weights are not part of the key.
    """
    hook = f"blocks.{layer}.hook_resid_post"
    original = model.run_with_cache

    def run_with_cache(*args: Any, **kwargs: Any) -> Any:
        names = kwargs.get("names_filter")
        if "stop_at_layer" not in kwargs and (names == hook or names == [hook]):
            kwargs["stop_at_layer"] = layer + 1
            prompts = args[0] if len(args) == 1 else None
            if (memo is not None and isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)
                    and set(kwargs) == {"names_filter", "stop_at_layer"}):
                key = (hook, tuple(prompts))
                if key not in memo:
                    with torch.no_grad():
                        memo[key] = original(*args, **kwargs)
                return memo[key]
        return original(*args, **kwargs)

    with mock.patch.object(model, "run_with_cache", run_with_cache):
        yield


# --------------------------------------------------------------------------- settings


def probe_batch_size(config: AbsorptionEvalConfig, n_alpha_tokens: int) -> int:
    """``config.k_sparse_probe_batch_size``, lowered so that each epoch over the probe's
    training words takes at least MIN_PROBE_STEPS_PER_EPOCH steps.

    Works around eval_config.py's ``k_sparse_probe_batch_size = 4096``: on a small
    vocabulary that is one optimiser step per epoch (k_sparse_probing.py:57). Unchanged
    from 40,960 probed words up, so SAEBench-scale vocabularies get SAEBench's setting;
    117 for the planted model's 1175. Measured there: at 4096 (one step per epoch) the
    clean reference SAE scores 0.65 instead of 0.0; from 470 (two steps) down, 0.0.
    """
    n_train = int(n_alpha_tokens * SAEBENCH_TRAIN_FRACTION)
    return max(1, min(config.k_sparse_probe_batch_size, n_train // MIN_PROBE_STEPS_PER_EPOCH))


def precalc_fits(n_alpha_tokens: int, d_sae: int) -> bool:
    """Whether the SAE activations of all probe training words fit in PRECALC_MAX_BYTES.

    SAEBench then encodes them once instead of once per probe step and per (k, letter)
    probe (k_sparse_probing.py:134-170, with its encode batch = the probe batch); same
    numbers, and on small vocabularies most of the eval's time saved.
    """
    n_train = int(n_alpha_tokens * SAEBENCH_TRAIN_FRACTION)
    return n_train * d_sae * 4 <= PRECALC_MAX_BYTES


def seed_everything(seed: int) -> None:
    """SAEBench's config has a ``random_seed`` that run_eval never applies (main.py:40-65).

    Seeds every generator SAEBench draws from: Python's ``random`` (the 80/20 split,
    probing.py:276; in-context examples, prompting.py:108-121), NumPy, and torch (probe
    initialisation, and the order of the probes' ``DataLoader(shuffle=True)`` batches,
    probing.py:93)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with every generator seeded by `seed` (:func:`seed_everything`), then
    give the caller's Python, NumPy and torch (CPU) random states back, so that an eval
    neither depends on nor changes what the caller drew before."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# --------------------------------------------------------------------------- the SAE


def fold_decoder_norms(sae: SAE) -> tuple[float, bool, str | None]:
    """Fold decoder norms into the encoder (in place) so that SAEBench's cosines and
    projections are taken against unit decoder rows, as its metric assumes.

    Works around sae_bench_utils/general_utils.py:115 (check_decoder_norms), which only
    warns: the planted 60 % reference SAE with decoder norms spread over 0.2 .. 5 scores
    0.35 unfolded. Returns (max |‖W_dec[i]‖ - 1| before folding, whether rows are unit-norm
    now, and the architecture's reason when it cannot be folded).
    """
    deviation = float((sae.W_dec.detach().norm(dim=-1) - 1).abs().max())
    if deviation <= NORM_TOLERANCE:
        return deviation, True, None
    try:
        sae.fold_W_dec_norm()
    except NotImplementedError as error:
        return deviation, False, str(error)
    return deviation, True, None


def model_fingerprint(model: HookedTransformer, *settings: object) -> str:
    """A short hash of the model's weights and vocabulary and the probe `settings`.

    Works around common.py:50-63: SAEBench caches its ground-truth probe under
    ``{model_name}/layer_{L}`` only, and ``force`` does not retrain it; this fingerprint
    goes into the cache path so that a different model with the same name (a fine-tune,
    another seed of a toy model) never reuses another model's probe. Per weight it hashes
    the name, shape, a strided sample of 1024 values and the float64 sum.
    """
    digest = hashlib.sha256(repr(settings).encode())
    vocab = sorted(model.tokenizer.get_vocab().items())  # type: ignore[union-attr]
    digest.update(json.dumps(vocab).encode())
    with torch.no_grad():
        for name, weight in model.state_dict().items():
            flat = weight.detach().flatten()
            sample = flat[:: max(1, flat.numel() // 1024)][:1024].float().cpu().numpy()
            digest.update(f"{name}{tuple(weight.shape)}".encode())
            digest.update(sample.tobytes())
            digest.update(np.float64(flat.sum(dtype=torch.float64).item()).tobytes())
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------- refusals


def check_hook(sae: SAE, model: HookedTransformer) -> int:
    """Return the layer SAEBench will read, or raise if it would read the wrong place.

    Works around sae_bench_utils/general_utils.py:296: SAEBench reads activations at
    ``blocks.{layer}.hook_resid_post`` with ``layer`` the first number in the SAE's hook
    name, so an SAE trained on any other hook would be evaluated on activations it never
    saw, without a word.
    """
    hook_name = sae.cfg.metadata.hook_name
    match = RESID_POST_HOOK.match(str(hook_name))
    allowed = f"'blocks.N.hook_resid_post' with 0 <= N < {model.cfg.n_layers}"
    if match is None:
        hint = ""
        pre = re.match(r"^blocks\.(\d+)\.hook_resid_pre$", str(hook_name))
        if pre and int(pre.group(1)) > 0:
            hint = (
                f" (blocks.{pre.group(1)}.hook_resid_pre carries the same activations as "
                f"blocks.{int(pre.group(1)) - 1}.hook_resid_post; set "
                "sae.cfg.metadata.hook_name to that if you mean it)"
            )
        raise ValueError(
            f"sae.cfg.metadata.hook_name={hook_name!r}: SAEBench's absorption eval reads "
            f"only residual-stream outputs; allowed: {allowed}{hint}"
        )
    layer = int(match.group(1))
    if layer >= model.cfg.n_layers:
        raise ValueError(
            f"sae.cfg.metadata.hook_name={hook_name!r}: model {model.cfg.model_name!r} has "
            f"{model.cfg.n_layers} layers; allowed: {allowed}"
        )
    if sae.cfg.metadata.hook_head_index is not None:
        raise ValueError(
            f"sae.cfg.metadata.hook_head_index={sae.cfg.metadata.hook_head_index}; allowed: None "
            "(the eval reads the whole residual stream)"
        )
    if sae.cfg.d_in != model.cfg.d_model:
        raise ValueError(
            f"sae.cfg.d_in={sae.cfg.d_in} but model {model.cfg.model_name!r} has "
            f"d_model={model.cfg.d_model}; allowed: d_in == d_model"
        )
    return layer


def check_prompt_position(model: HookedTransformer, config: AbsorptionEvalConfig) -> None:
    """Raise unless ``config.prompt_token_pos`` points at the word in SAEBench's prompts.

    Works around eval_config.py's default ``prompt_token_pos = -6``, which assumes
    " has the first letter:" is five tokens, as in Gemma's and GPT-2's tokenizers; with
    another tokenizer every activation would be read from the wrong token.
    """
    vocab = sorted(get_alpha_tokens(model.tokenizer))  # type: ignore[arg-type]
    words = vocab[:: max(1, len(vocab) // 20)][:20]
    hits = 0
    for word in words:
        prompt = create_icl_prompt(
            word,
            examples=vocab,
            base_template=config.prompt_template,
            max_icl_examples=min(10, len(vocab) - 1),
            prepend_separator_to_first_example=True,
        )
        str_tokens = model.to_str_tokens(prompt.base)
        hits += str(str_tokens[config.prompt_token_pos]).strip() == word.strip()
    if 2 * hits < len(words):
        tail = model.to_str_tokens(config.prompt_template.format(word=words[0]))
        raise ValueError(
            f"config.prompt_token_pos={config.prompt_token_pos} does not point at the word "
            f"for {len(words) - hits} of {len(words)} sample words; this model tokenizes "
            f"{config.prompt_template.format(word=words[0])!r} as {tail}; allowed: the "
            "negative index of the word token"
        )


def check_split_covers_letters(split_dir: Any, error: type[Exception]) -> None:
    """Refuse a probe split in which a letter has no train or no test word (raise `error`).

    SAEBench fails deep inside for a letter without train words (KeyError at
    k_sparse_probing.py:283) and silently scores one without test words as probe F1 0
    (scikit-learn only warns); say so plainly instead.
    """
    for split in ("train", "test"):
        answers = pd.read_csv(split_dir / f"{split}_df.csv", keep_default_na=False)["answer"]
        present = {str(a).strip().lower() for a in answers}
        missing = [letter for letter in LETTERS if letter not in present]
        if missing:
            raise error(
                f"letters {missing} have no {split} words in SAEBench's random 80/20 split of "
                f"the alphabetic vocabulary ({split_dir}); the model's vocabulary has too few "
                "tokens starting with them (or words_per_letter is too small). Use "
                "config.random_seed to draw another split, more words per letter, or a model "
                "with a larger vocabulary."
            )
