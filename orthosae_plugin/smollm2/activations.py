"""SmolLM2 activations cached once with SAELens, SAE training on the cache, held-out metrics.

    from orthosae_plugin.smollm2.activations import (
        cached_activations, smollm2_runner_config, smollm2_training_runner, heldout_metrics)
    from orthosae_plugin.smollm2.model import load_smollm2

    path = cached_activations("blocks.15.hook_resid_post", n_tokens=600_000)   # forward once
    cfg = smollm2_runner_config(sae_cfg, path, training_tokens=600_000)        # then SAE speed
    sae = smollm2_training_runner(cfg).run()
    print(heldout_metrics(sae, load_smollm2(), "blocks.15.hook_resid_post"))

Position 0 of every row is left out everywhere: its residual norm is ~20,000 at layer 15
against a median of ~170 elsewhere (an attention sink), and one such vector per row would
dominate both the SAE's loss and the explained variance. The cache is written with SAELens's
``seqpos_slice=(1, None)``. The ``<|endoftext|>`` tokens between documents are sinks too
(same norm); training leaves them out with SAELens's ``exclude_special_tokens``.

Because the cached rows are already sliced, the training config says ``context_size=127``
(``context_size - 1``) and ``seqpos_slice=(None,)``: SAELens checks the cache's shape against
those two fields. The cache folder's ``orthosae_cache.json`` records the original layout.

Held-out metrics: SAELens's ``run_evals`` can leave out tokens only by token id, not by
position, so :func:`heldout_metrics` computes the same three quantities with SAELens's
definitions (its ``ExplainedVarianceCalculator``, its CE-loss score) on positions >= 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
from sae_lens.cache_activations_runner import CacheActivationsRunner
from sae_lens.config import CacheActivationsRunnerConfig

from orthosae_plugin.smollm2.cache import build_folder, cache_dir, no_datasets_progress_bars, say
from orthosae_plugin.smollm2.corpus import CORPUS_LAYOUT, english_corpus, separator_token_id
from orthosae_plugin.smollm2.model import SMOLLM2_MODEL_NAME, SMOLLM2_PROCESSING, load_smollm2

SEQPOS_SLICE = (1, None)
"""Positions kept from every row when caching: all but position 0 (the attention sink)."""
DEFAULT_HOOK = "blocks.15.hook_resid_post"
"""The middle of SmolLM2's 30 layers; docs/real-model.md has the measurement (residual norms and forward speed per layer)."""
SAVED_KWARGS_ADVICE = r"\s*This SAE has non-empty model_from_pretrained_kwargs"
"""SAELens's warning, on every SAE recording ``model_from_pretrained_kwargs``, to load the model
with them: :func:`load_smollm2` already applies exactly those (:data:`SMOLLM2_PROCESSING`).
A pattern for ``warnings.filterwarnings``."""
_BUFFER_TOKENS = 32_768  # tokens per cache shard: one progress-bar step, ~75 MB at d_in 576
_META = "orthosae_cache.json"


def _sliced(context_size: int) -> int:
    return len(range(context_size)[slice(*SEQPOS_SLICE)])


def _activations_root(hook_name: str, context_size: int) -> Path:
    return cache_dir() / "activations" / SMOLLM2_MODEL_NAME / f"{hook_name}-ctx{context_size}"


def _existing_cache(hook_name: str, context_size: int, n_tokens: int, source: str) -> Path | None:
    """The smallest complete cache for this hook, context, text and corpus layout
    (:data:`CORPUS_LAYOUT`) with at least n_tokens: a cache made from rows of another
    layout is never reused."""
    best = None
    for meta_path in _activations_root(hook_name, context_size).glob(f"[!.]*/{_META}"):  # not a folder being built
        meta = json.loads(meta_path.read_text())
        same_rows = meta.get("source") == source and meta.get("corpus_layout") == CORPUS_LAYOUT
        if same_rows and meta["n_tokens"] >= n_tokens:
            if best is None or meta["n_tokens"] < best[0]:
                best = (meta["n_tokens"], meta_path.parent)
    return None if best is None else best[1]


def cached_activations(hook_name: str = DEFAULT_HOOK, n_tokens: int = 600_000, context_size: int = 128,
                       *, model: Any = None, text_dir: str | Path | None = None,
                       model_batch_size: int = 16) -> Path:
    """SAELens ``CacheActivationsRunner`` output for ``hook_name`` on the training split.

    ``n_tokens`` counts SAE training tokens (positions 1..context_size-1 of each row); the
    cache is rounded up to whole shards. An existing cache with at least as many tokens (same
    hook, context and text) is reused. ``model`` defaults to :func:`load_smollm2`. The forward
    pass stops after the hook's layer.
    """
    source = "debian" if text_dir is None else str(Path(text_dir).expanduser().resolve())
    found = _existing_cache(hook_name, context_size, n_tokens, source)
    if found is not None:
        return found
    model = model if model is not None else load_smollm2()
    sliced = _sliced(context_size)
    batch_tokens = model_batch_size * sliced
    # as few shards of at most ~_BUFFER_TOKENS as needed, each as small as covers n_tokens
    n_shards = math.ceil(n_tokens / (max(1, _BUFFER_TOKENS // batch_tokens) * batch_tokens))
    batches_per_shard = math.ceil(n_tokens / n_shards / batch_tokens)
    shard_tokens = batches_per_shard * batch_tokens
    total = n_shards * shard_tokens
    n_rows = total // sliced
    corpus = english_corpus(model.tokenizer, context_size=context_size, split="train", text_dir=text_dir)
    if len(corpus) < n_rows:
        raise ValueError(f"n_tokens={n_tokens:,} needs {n_rows:,} rows of {context_size} tokens; the training "
                         f"split has {len(corpus):,} rows ({len(corpus) * sliced:,} tokens after position 0)")
    out = _activations_root(hook_name, context_size) / f"{total}tok-{source.replace('/', '_')[-40:]}-{CORPUS_LAYOUT}"
    bytes_per_token = model.cfg.d_model * 4
    say(f"caching {total:,} activations of {hook_name} ({n_shards} shards, "
        f"{total * bytes_per_token / 1e9:.2f} GB) into {out}")
    started = time.perf_counter()

    def write(tmp: Path) -> None:
        cfg = CacheActivationsRunnerConfig(
            dataset_path=f"orthosae-english-{source}",
            model_name=SMOLLM2_MODEL_NAME,
            model_batch_size=model_batch_size,
            hook_name=hook_name,
            d_in=model.cfg.d_model,
            training_tokens=total,
            context_size=context_size,
            new_cached_activations_path=str(tmp),
            shuffle=False,  # the corpus rows are already shuffled; SAELens's shuffle is not saved anyway
            dtype="float32",
            device=str(model.cfg.device),
            # one shard = shard_tokens tokens (half a token's bytes of slack against float rounding)
            buffer_size_gb=(shard_tokens + 0.5) * bytes_per_token / 1e9,
            prepend_bos=False,
            seqpos_slice=SEQPOS_SLICE,
        )
        runner = _cache_runner(cfg, model, corpus.select(range(n_rows)))
        with no_datasets_progress_bars(), warnings.catch_warnings():  # "Caching activations": the phase's one bar
            # SAELens copies each token row with torch.tensor(row), which torch warns about
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            runner.run()
        (tmp / _META).write_text(json.dumps({
            "model_name": SMOLLM2_MODEL_NAME, "hook_name": hook_name, "context_size": context_size,
            "seqpos_slice": list(SEQPOS_SLICE), "cached_context_size": sliced, "n_tokens": total,
            "n_rows": n_rows, "d_in": model.cfg.d_model, "source": source, "split": "train",
            "corpus_layout": CORPUS_LAYOUT,
            "separator_token_id": separator_token_id(model.tokenizer),
            "seconds": round(time.perf_counter() - started, 1),
        }, indent=1))

    build_folder(out, write)
    say(f"cached {total:,} activations in {time.perf_counter() - started:.0f} s")
    return out


def _cache_runner(cfg: CacheActivationsRunnerConfig, model: Any, dataset: Dataset) -> CacheActivationsRunner:
    """SAELens's ``CacheActivationsRunner`` on an in-memory model. Its ``__init__`` always
    loads the model by name (``sae_lens.load_model``); SmolLM2 is not a name TransformerLens
    knows, so the loader is swapped for the model in hand during construction only."""
    import sae_lens.cache_activations_runner as module

    original = module.load_model
    module.load_model = lambda **_: model  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            # SAELens compares the dataset's rows (each context_size tokens) with the token
            # budget: "contains fewer samples (1568) than ... required (199136)" for exactly enough rows.
            warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
            return CacheActivationsRunner(cfg, override_dataset=dataset)
    finally:
        module.load_model = original


def cache_info(activations_path: str | Path) -> dict[str, Any]:
    """What :func:`cached_activations` recorded about a cache folder."""
    return json.loads((Path(activations_path) / _META).read_text())


def smollm2_runner_config(sae_cfg: Any, activations_path: str | Path, training_tokens: int, *,
                          train_batch_size_tokens: int = 1024, lr: float = 1e-3,
                          output_path: str | None = None, **runner_kwargs: Any) -> LanguageModelSAERunnerConfig:
    """A SAELens runner config that trains ``sae_cfg`` on a cache from :func:`cached_activations`.

    ``use_cached_activations=True``; W&B logging off, no checkpoints (override either through
    ``runner_kwargs``). ``training_tokens`` beyond the cache's size start a second epoch
    (SAELens warns). Run it with :func:`smollm2_training_runner`.
    """
    info = cache_info(activations_path)
    if sae_cfg.d_in != info["d_in"]:
        raise ValueError(f"sae_cfg.d_in={sae_cfg.d_in}; the cache holds d_in={info['d_in']}")
    context = info["cached_context_size"]
    kwargs: dict[str, Any] = dict(
        sae=sae_cfg,
        model_name=SMOLLM2_MODEL_NAME,
        hook_name=info["hook_name"],
        dataset_path=str(activations_path),
        is_dataset_tokenized=True,
        use_cached_activations=True,
        cached_activations_path=str(activations_path),
        context_size=context,  # the cached rows, position 0 already sliced off
        seqpos_slice=(None,),
        prepend_bos=False,
        exclude_special_tokens=[info["separator_token_id"]],
        # what load_smollm2 applies (SAELens's default for HookedTransformer says otherwise)
        model_from_pretrained_kwargs=dict(SMOLLM2_PROCESSING),
        training_tokens=training_tokens,
        train_batch_size_tokens=train_batch_size_tokens,
        store_batch_size_prompts=16,
        # SAELens's mixing buffer holds n_batches_in_buffer * context activations; two batches fit
        n_batches_in_buffer=max(8, -(-4 * train_batch_size_tokens // context)),
        lr=lr,
        device="cpu",
        output_path=output_path,
        checkpoint_path=None,
        logger=LoggingConfig(log_to_wandb=False),
        verbose=False,
    )
    kwargs.update(runner_kwargs)
    return LanguageModelSAERunnerConfig(**kwargs)


def smollm2_training_runner(cfg: LanguageModelSAERunnerConfig, model: Any = None,
                            **runner_kwargs: Any) -> LanguageModelSAETrainingRunner:
    """SAELens's ``LanguageModelSAETrainingRunner`` for a config from
    :func:`smollm2_runner_config`. SAELens needs a model and a token dataset even when it
    reads cached activations (it inspects the dataset's first row); they are given here
    (the model from the cache, a few corpus rows) and never run."""
    model = model if model is not None else load_smollm2()
    placeholder = english_corpus(model.tokenizer, context_size=cfg.context_size + 1, split="train",
                                 max_tokens=16 * (cfg.context_size + 1))
    with warnings.catch_warnings(), _without_override_notices():
        # Both about the placeholder, which training never reads. "pretokenized dataset has
        # context_size 128, but the provided context_size is 127"; "The training dataset
        # contains fewer samples (16) than the number of samples required by your training
        # configuration (196608)": SAELens compares its rows with the token budget.
        warnings.filterwarnings("ignore", message="pretokenized dataset has context_size")
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
        warnings.filterwarnings("ignore", message=SAVED_KWARGS_ADVICE)
        return LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=placeholder,
                                              **runner_kwargs)


@contextlib.contextmanager
def _without_override_notices() -> Iterator[None]:
    """SAELens logs "You just passed in a model / dataset which will override the one specified
    in your configuration ... not reproducible via configuration alone" for every in-memory
    model and dataset. Here both are what the config names (SmolLM2 cannot be loaded by name;
    the dataset is the placeholder), so those two notices are dropped; other messages pass."""
    sae_lens_logger = logging.getLogger("sae_lens")

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("You just passed in a ")

    sae_lens_logger.addFilter(keep)
    try:
        yield
    finally:
        sae_lens_logger.removeFilter(keep)


@torch.no_grad()
def heldout_metrics(sae: Any, model: Any, hook_name: str | None = None, n_tokens: int = 8192,
                    context_size: int = 128, batch_size_prompts: int = 8,
                    text_dir: str | Path | None = None, progress: bool = True) -> dict[str, float]:
    """L0, explained variance and CE-loss recovered of ``sae`` on the held-out split.

    Definitions are SAELens's (``sae_lens.evals``): explained variance with its
    ``ExplainedVarianceCalculator``; CE-loss recovered is its ``ce_loss_score``,
    ``(CE zero-ablated - CE with SAE) / (CE zero-ablated - CE clean)``, 1 meaning the SAE's
    reconstruction loses nothing downstream. Unlike ``run_evals``, which can exclude tokens
    only by id, the SAE's reconstruction (and the zero-ablation) replaces positions >= 1
    that are not ``<|endoftext|>``, the positions it was trained on; those are also the
    positions L0 and explained variance average over, and CE averages over the predictions
    from positions >= 1. ``n_tokens`` is rounded down to whole batches; the cost is three
    full forwards plus one to the hook.
    """
    from sae_lens.evals import ExplainedVarianceCalculator

    hook_name = hook_name or sae.cfg.metadata.hook_name
    layer = int(hook_name.split(".")[1])
    n_batches = max(1, n_tokens // (batch_size_prompts * context_size))
    data = english_corpus(model.tokenizer, context_size=context_size, split="heldout", text_dir=text_dir,
                          max_tokens=n_batches * batch_size_prompts * context_size)
    tokens_NT = torch.tensor(data["input_ids"], dtype=torch.long)
    sep = separator_token_id(model.tokenizer)
    was_training = sae.training
    sae.eval()
    ev = ExplainedVarianceCalculator()
    l0_sum = n_kept = 0
    ce = {"clean": 0.0, "sae": 0.0, "ablated": 0.0}
    n_predictions = 0
    try:
        for start in tqdm(range(0, len(tokens_NT), batch_size_prompts), desc="held-out eval (batches)",
                          file=sys.stderr, disable=not progress):
            batch_BT = tokens_NT[start: start + batch_size_prompts].to(model.cfg.device)
            keep_BT = batch_BT != sep
            keep_BT[:, 0] = False

            _, cache = model.run_with_cache(batch_BT, names_filter=hook_name, stop_at_layer=layer + 1)
            acts_KD = cache[hook_name][keep_BT].to(sae.device)
            feats_KS = sae.encode(acts_KD)
            ev.add_batch(sae.decode(feats_KS), acts_KD)
            l0_sum += (feats_KS != 0).sum().item()
            n_kept += acts_KD.shape[0]

            def replace(acts_BTD, hook, keep=keep_BT):  # noqa: ARG001
                recon_BTD = sae.decode(sae.encode(acts_BTD.to(sae.device))).to(acts_BTD.dtype)
                return torch.where(keep[..., None], recon_BTD, acts_BTD)

            def ablate(acts_BTD, hook, keep=keep_BT):  # noqa: ARG001
                return torch.where(keep[..., None], torch.zeros_like(acts_BTD), acts_BTD)

            for name, hooks in (("clean", []), ("sae", [(hook_name, replace)]), ("ablated", [(hook_name, ablate)])):
                loss_BT = model.run_with_hooks(batch_BT, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
                ce[name] += loss_BT[:, 1:].sum().item()  # predictions from positions >= 1
            n_predictions += loss_BT[:, 1:].numel()
    finally:
        sae.train(was_training)
    ce = {k: v / n_predictions for k, v in ce.items()}
    return {
        "l0": l0_sum / n_kept,
        "explained_variance": ev.compute(),
        "ce_loss_recovered": (ce["ablated"] - ce["sae"]) / (ce["ablated"] - ce["clean"]),
        "ce_loss_clean": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_zero_ablation": ce["ablated"],
        "n_tokens": len(tokens_NT) * context_size,
        "n_positions_evaluated": n_kept,
    }
