"""SAELens's architectures against ``ortho_contrastive`` on a real language model:
SAEBench first-letter absorption, reconstruction and CE-loss recovered, at matched L0.

    python -m benchmarks.real_model --quick          # one sparsity setting per arm (16 min on 2 idle cores, caches warm)
    python -m benchmarks.real_model                  # the full grid (36 runs, ~1-1.5 h on 2 cores), resumable
    python -m benchmarks.real_model --device cuda --preset gpu   # bigger SAEs, full vocabulary
    python -m benchmarks.real_model --from-runs      # re-tabulate the saved runs, train nothing
    python -m benchmarks.real_model --help

Every arm (an architecture with fixed settings, one line of :data:`ARMS`) is trained at
2-3 sparsity settings (``l1_coefficient`` or ``k``) on the *same* cached activations of
SmolLM2-135M-Instruct (SAELens's own activation cache, position 0 excluded), with the
same token budget, batch, learning rate and seed, replayed in the same order to every
run. Each SAE is then converted to its plugin-free inference form (what users load) and
scored with

* SAEBench's first-letter absorption (``orthosae_plugin.evals.absorption
  .run_absorption_eval``: mean absorption fraction, full-absorption rate, split features,
  and the alarm's verdict, recorded as the eval gives it);
* SAELens's evals on held-out text (L0, explained variance, CE-loss recovered);
* dead latents as SAELens's trainer counts them at the end of training (no firing in the
  last ``dead_feature_window`` steps), and the training time.

Arms are compared at matched L0: every metric is linearly interpolated along the arm's
sweep to ``--target-l0`` (``benchmarks.sweep.interpolate_at``: never
extrapolated; n/a when the sweep does not reach it). ``--quick`` trains one setting per
arm, so L0 is *not* matched there: its table is per run, and says so.

Resumable: every finished run is written at once to ``runs/<preset>/<arm>__<setting>.json``
under ``--out`` and skipped on restart when its settings match, so the full grid can be
completed across sittings (``--quick``'s runs are the full grid's middle settings and are
reused by it). ``results.json`` (every run + the matched-L0 summary), ``table.md`` and
``absorption_vs_l0.png``, ``ev_vs_l0.png`` are rewritten after each run.

To add an arm, append one line to :data:`ARMS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_lens import SAE
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import SAEMetadata, TrainingSAE
from sae_lens.training.sae_trainer import SAETrainer
from transformer_lens import HookedTransformer

import orthosae_plugin  # noqa: F401  (registers ortho_contrastive)
from benchmarks.results_readme import ResultsReadme, minutes, write_results_readme
from benchmarks.sweep import (
    Arm,
    lr_note,
    matched_l0_summary,
    matched_summary,
    matryoshka_widths,
    ortsae_arm,
    per_setting_summary,
    plot,
    select_arms,
)
from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.evals.absorption import (
    AbsorptionEvalError,
    get_alarm,
    load_output,
    run_absorption_eval,
    run_absorption_eval_seeds,
)
from orthosae_plugin.saving import write_file_atomically, write_folder_atomically

DEFAULT_OUT = Path(__file__).parent / "results" / "real_model"
OC = "ortho_contrastive"

# --- the arms ------------------------------------------------------------------------


QUICK_INDEX = 1
"""``--quick`` trains each arm's ``sparsity_values[QUICK_INDEX]``, the middle setting,
chosen to land near the default matched L0."""


L1_STANDARD = (0.7, 1.0, 2.0)
"""``standard``'s l1_coefficient grid, for lr 3e-3 and 1-2M tokens (batch 1024): at 1M
tokens l1 1 gave L0 58 (docs/real-model-benchmark.md, "Learning rate"). The committed
204,800-token grid at lr 1e-3 used (3, 5, 8): L0 ~55-20."""
L1_OC = (0.7, 1.0, 2.0)
"""``ortho_contrastive`` (ReLU+L1 base) grid: at lr 3e-3 and 1M tokens l1 1 gave L0 64 and l1 3
gave L0 11, so the grid brackets the same L0 as ``standard``'s. (204,800-token grid at lr
1e-3: (1.5, 3, 5).)"""
K_GRID = (20.0, 32.0, 48.0)
"""k of the TopK-family arms (L0 = k in training; BatchTopK saves a JumpReLU whose L0 is close)."""
ORTSAE_COEFFICIENT = 100.0
"""Weight of the OrtSAE arm's penalty, from the screen at 1M tokens
(docs/real-model-benchmark.md): 100 gave EV 0.818 and was trusted by the alarm; 1,000 (the
ground-truth benchmark's 10 scaled by the squared-norm ratio of the two settings) gave EV
0.793 and 10,000 gave 0.739, both flagged. A run saved at another weight is retrained."""


ARMS: list[Arm] = [
    Arm("standard", "standard", "l1_coefficient", L1_STANDARD),
    Arm("topk", "topk", "k", K_GRID),
    Arm("batchtopk", "batchtopk", "k", K_GRID),
    Arm("matryoshka_batchtopk", "matryoshka_batchtopk", "k", K_GRID),
    Arm("oc relu: ortho only", OC, "l1_coefficient", L1_OC, {"contrastive_coefficient": 0.0}),
    Arm("oc relu: contrastive only", OC, "l1_coefficient", L1_OC, {"ortho_coefficient": 0.0}),
    Arm("oc relu: both", OC, "l1_coefficient", L1_OC),
    Arm("oc batchtopk: ortho only", OC, "k", K_GRID, {"sparsity_base": "batchtopk", "contrastive_coefficient": 0.0}),
    Arm("oc batchtopk: contrastive only", OC, "k", K_GRID, {"sparsity_base": "batchtopk", "ortho_coefficient": 0.0}),
    Arm("oc batchtopk: both", OC, "k", K_GRID, {"sparsity_base": "batchtopk"}),
    Arm("oc matryoshka: ortho only", OC, "k", K_GRID, {"sparsity_base": "matryoshka_batchtopk", "contrastive_coefficient": 0.0}),
    Arm("oc matryoshka: both", OC, "k", K_GRID, {"sparsity_base": "matryoshka_batchtopk"}),
    ortsae_arm("ortsae batchtopk", K_GRID, ORTSAE_COEFFICIENT),
]
"""The comparison; one line per arm."""

HEADLINE_ARMS = ("oc relu: both", "oc batchtopk: both")


# --- sizes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What every run shares: the activations, the SAE size and the training budget."""

    layer: int = 15
    """SAEs read ``blocks.{layer}.hook_resid_post``. From the layer table
    (``benchmarks/results/layer_table/``): SAEBench's first-letter probe has mean F1
    0.767-0.783 at every layer from 6 to 21 (a tie within its noise) and falls after
    (0.624 at 24, 0.548 at 27); 15 sits inside that band, keeps the earlier SmolLM2
    measurements comparable, and costs half of a full forward."""
    d_sae: int = 2304
    """Latents (4 x SmolLM2's d_model 576)."""
    training_tokens: int = 204_800
    """Tokens per SAE: 1024 steps of 200, the budget at which the full grid (36 runs) fits
    in about 2 hours of this 2-core CPU (the committed grid: training 28-222 s a run,
    evals ~50 s a run plus ~6 min once for SAEBench's ground-truth probe, ~4 min to cache
    the activations once). At this budget the alarm flags most SAELens baselines
    (``results/real_model/README.md``); ``--tokens 614400 --batch-size 600`` (the earlier 600k-token
    ``standard`` SAE, which the alarm trusted) costs ~3x the training time."""
    batch_size: int = 200
    lr: float = 1e-3
    lr_decay_fraction: float = 0.2
    """Share of the steps over which the learning rate decays linearly to 0."""
    context_size: int = 128
    """Tokens per cached sequence (position 0 is left out: 127 activations each)."""
    dead_feature_window: int = 200
    """Steps without firing after which SAELens counts a latent dead (and TopK revives it)."""
    contrastive_warm_up_steps: int = 300
    """``ortho_contrastive``'s warm-up, scaled to the run (its default 1000 is the whole run here)."""
    heldout_tokens: int = 4096
    """Held-out tokens for SAELens's evals (L0, explained variance, CE-loss recovered); its
    CE-loss eval runs three full forward passes per batch (~20 s here at 4096 tokens)."""
    words_per_letter: int | None = 100
    """SAEBench absorption: seeded subsample of words per first letter (None: SAEBench's
    full vocabulary, ~4M tokens of forward passes on SmolLM2: GPU only)."""
    absorption_max_k: int = 10
    """SAEBench's max_k_value (its default: 10)."""
    eval_seeds: int = 1
    """Absorption evals per SAE with eval seeds 42, 43, ... (``run_absorption_eval_seeds``):
    the table reports the first seed's numbers and the spread over the seeds (each extra
    seed costs one eval with its own ground-truth probe). 1: one eval, as before."""
    max_norm_ratio: float = 8.0
    """Activations with a norm above this many times the median are left out of training
    and of the held-out evals. SmolLM2 makes a few massive-activation tokens besides
    position 0 (attention sinks; measured at layer 15: 0.12% of the cached tokens, all at
    the first kept position, norms ~1,700-24,000 against a median of 166, holding 94% of
    the variance), which would otherwise own the MSE and the explained variance."""
    seed: int = 0
    device: str = "cpu"
    cache_tokens: int | None = None
    """Activations cached and read, as one stream shuffled with ``seed``; a budget above it
    replays the stream (``training_tokens / cache_tokens`` epochs), a budget below it reads
    the stream's start. None: the budget itself (no replay)."""

    @property
    def steps(self) -> int:
        return self.training_tokens // self.batch_size

    @property
    def epochs(self) -> float:
        """Passes over the cached activations."""
        return self.training_tokens / (self.cache_tokens or self.training_tokens)

    def key(self) -> str:
        """Fingerprint of everything a run depends on except its arm and setting (fields at
        the defaults they were added with, one eval seed and no cache size, keep the
        fingerprint runs had before those fields existed)."""
        fields = asdict(self)
        if fields["eval_seeds"] == 1:
            del fields["eval_seeds"]
        if fields["cache_tokens"] is None:
            del fields["cache_tokens"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


PRESETS: dict[str, BenchConfig] = {
    "cpu": BenchConfig(),
    # A dry run of the machinery on the planted toy model (--source planted): seconds a run.
    "tiny": BenchConfig(d_sae=256, training_tokens=16_384, batch_size=256, heldout_tokens=2048,
                        words_per_letter=None, absorption_max_k=3, dead_feature_window=20,
                        contrastive_warm_up_steps=10),
    # For a GPU: 16x latents, nearly the whole training split of the corpus (1.95M tokens
    # after position 0), SAEBench's full vocabulary. Not measured here (no GPU was at hand).
    "gpu": BenchConfig(d_sae=9216, training_tokens=1_843_200, batch_size=1024, heldout_tokens=65_536,
                       words_per_letter=None, dead_feature_window=500, device="cuda"),
}


# --- where the activations come from -------------------------------------------------


class Source(Protocol):
    """A model, a hook, training activations and held-out tokens."""

    model: HookedTransformer
    hook_name: str
    description: str

    def train_activations(self, n_tokens: int) -> torch.Tensor:
        """``(n_tokens, d_in)`` float32 training activations (CPU), in a fixed order."""
        ...

    def heldout_tokens(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, context)`` held-out token ids and a ``(rows, context)`` bool mask of the
        positions an SAE is evaluated on."""
        ...


class SmolLM2Source:
    """SmolLM2-135M-Instruct (4-bit, dequantized) on the English corpus, through
    ``orthosae_plugin.smollm2.model`` and ``orthosae_plugin.smollm2.activations``."""

    def __init__(self, bench: BenchConfig):
        from orthosae_plugin.smollm2 import activations
        from orthosae_plugin.smollm2 import model as smollm

        self._activations = activations
        self.bench = bench
        self.hook_name = f"blocks.{bench.layer}.hook_resid_post"
        self.model = smollm.load_smollm2(device=bench.device)
        self.description = (
            f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32, `{smollm.SMOLLM2_MODEL_NAME}`), "
            f"`{self.hook_name}`, English corpus (Austen + World English Bible, Debian), context "
            f"{bench.context_size}, position 0 excluded")

    def train_activations(self, n_tokens: int) -> torch.Tensor:
        from datasets import load_from_disk

        path = self._activations.cached_activations(self.hook_name, n_tokens, context_size=self.bench.context_size,
                                                    model=self.model)
        acts = load_from_disk(str(path)).with_format("torch")[self.hook_name]  # (rows, context - 1, d_in)
        acts_ND = acts.reshape(-1, acts.shape[-1]).float()
        if len(acts_ND) < n_tokens:
            raise ValueError(f"the activation cache {path} holds {len(acts_ND)} tokens, fewer than {n_tokens}")
        return acts_ND[:n_tokens]

    def heldout_tokens(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        from orthosae_plugin.smollm2.corpus import english_corpus

        rows = english_corpus(self.model.tokenizer, context_size=self.bench.context_size, split="heldout",
                              max_tokens=n_tokens)
        tokens_NS = torch.tensor(rows["input_ids"][: max(1, n_tokens // self.bench.context_size)])
        keep_NS = torch.ones_like(tokens_NS, dtype=torch.bool)
        keep_NS[:, 0] = False  # position 0 (<|endoftext|>, the attention sink), as in training
        return tokens_NS, keep_NS


class PlantedSource:
    """The planted first-letter model (``orthosae_plugin.evals.planted``) on random word
    sequences: the benchmark's machinery at toy size, for tests and dry runs."""

    def __init__(self, bench: BenchConfig, context_size: int = 16):
        from orthosae_plugin.evals.planted import PlantedModelConfig, build_planted_model

        self.planted = build_planted_model(PlantedModelConfig(seed=bench.seed))
        self.model = self.planted.model
        self.hook_name = self.planted.hook_name
        self.context_size = context_size
        self.description = f"planted first-letter model (toy), `{self.hook_name}`, random word sequences"

    def _tokens(self, n_tokens: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        n_seq = -(-n_tokens // self.context_size)
        return torch.randint(self.model.cfg.d_vocab, (n_seq, self.context_size), generator=generator)

    @torch.no_grad()
    def train_activations(self, n_tokens: int) -> torch.Tensor:
        tokens_NS = self._tokens(n_tokens, seed=1)
        _, cache = self.model.run_with_cache(tokens_NS, names_filter=self.hook_name)
        return cache[self.hook_name].reshape(-1, self.model.cfg.d_model).float()[:n_tokens]

    def heldout_tokens(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens_NS = self._tokens(n_tokens, seed=2)
        return tokens_NS, torch.ones_like(tokens_NS, dtype=torch.bool)


class HeldoutEval:
    """L0, explained variance and CE-loss recovered on held-out tokens, with SAELens's
    definitions (``sae_lens.evals``: ``ce_loss_score = (CE zero-ablated - CE with SAE) /
    (CE zero-ablated - CE clean)``, explained variance over the evaluated positions),
    restricted to the positions the SAE is evaluated on: the source's mask minus
    massive-activation tokens (norm above ``max_norm_ratio`` x the median: the attention
    sinks the SAE is not trained on). Elsewhere the model runs on its own activations,
    as SAELens does for its ``exclude_special_tokens``. The clean and zero-ablated passes do
    not depend on the SAE and are run once; each SAE costs one forward from its layer on."""

    def __init__(self, source: Source, n_tokens: int, max_norm: float, batch_rows: int = 8):
        self.model, self.hook_name = source.model, source.hook_name
        self.layer = int(self.hook_name.split(".")[1])
        self.tokens_NS, keep_NS = source.heldout_tokens(n_tokens)
        self.batches = [b.to(self.model.cfg.device) for b in self.tokens_NS.split(batch_rows)]
        acts, clean, zero, masks = [], [], [], []
        with torch.no_grad():
            for tokens, keep in zip(self.batches, keep_NS.split(batch_rows)):
                loss, cache = self.model.run_with_cache(tokens, return_type="loss", loss_per_token=True,
                                                        names_filter=self.hook_name)
                act = cache[self.hook_name]
                mask = keep.to(act.device) & (act.norm(dim=-1) <= max_norm)
                acts.append(act), clean.append(loss), masks.append(mask)
                zero.append(self._loss_from(torch.where(mask[..., None], 0.0, act), tokens))
        self.acts, self.masks = acts, masks
        self.clean = torch.cat([c.flatten() for c in clean]).mean().item()
        self.zero = torch.cat([z.flatten() for z in zero]).mean().item()
        self.n_excluded_sinks = int(sum((k.to(m.device) & ~m).sum() for k, m in zip(keep_NS.split(batch_rows), masks)))
        self.n_evaluated = int(sum(m.sum() for m in masks))

    def _loss_from(self, resid: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(resid, start_at_layer=self.layer + 1, tokens=tokens, return_type="loss",
                          loss_per_token=True)

    @torch.no_grad()
    def __call__(self, sae: SAE) -> dict[str, float]:
        recons, sq_err, total_var, l0 = [], 0.0, 0.0, 0.0
        kept = torch.cat([a[m] for a, m in zip(self.acts, self.masks)])
        mean_D = kept.mean(0)
        for tokens, act, mask in zip(self.batches, self.acts, self.masks):
            feats = sae.encode(act)
            out = sae.decode(feats)
            recons.append(self._loss_from(torch.where(mask[..., None], out.to(act.dtype), act), tokens).flatten())
            sq_err += (out - act)[mask].pow(2).sum().item()
            total_var += (act[mask] - mean_D).pow(2).sum().item()
            l0 += (feats[mask] > 0).sum().item()
        with_sae = torch.cat(recons).mean().item()
        return {
            "l0": l0 / self.n_evaluated,
            "explained_variance": 1 - sq_err / total_var,
            "ce_loss_recovered": (self.zero - with_sae) / (self.zero - self.clean),
            "ce_loss_clean": self.clean, "ce_loss_with_sae": with_sae, "ce_loss_zero_ablation": self.zero,
        }


# --- one run -------------------------------------------------------------------------

METRICS = ("absorption", "full_absorption", "split_features", "explained_variance", "l0",
           "ce_loss_recovered", "dead_latents", "train_seconds")
"""Recorded per run, interpolated to matched L0 and tabulated, in table order."""


@dataclass
class RunResult:
    arm: str
    architecture: str
    sparsity_field: str
    sparsity: float
    seed: int
    metrics: dict[str, float]
    alarm: dict[str, Any]
    """``trustworthy``, ``reasons`` and ``notes`` of the absorption alarm, as the eval
    gave them, and the ``vocabulary`` it probed."""
    absorption_letters: dict[str, dict[str, float]]
    eval_seconds: float
    bench_key: str
    sae_config: dict[str, Any]
    data_version: str = ""
    """The activations' provenance (:func:`data_version`); a saved run of another is retrained."""
    sae_path: str = ""
    """Where the run's inference SAE was saved, in the work dir of the machine that trained it
    (not committed; ``python -m benchmarks.eval_noise --sae`` re-scores it with more eval seeds)."""


def sae_config(arm: Arm, sparsity: float, bench: BenchConfig, d_in: int,
               metadata: SAEMetadata | None = None) -> Any:
    """The SAELens training config ``arm`` trains under at ``sparsity``."""
    kwargs: dict[str, Any] = {**arm.sae_kwargs, arm.sparsity_field: sparsity}
    if arm.sparsity_field == "k":
        kwargs["k"] = int(sparsity)
    _, cfg_cls = get_sae_training_class(arm.architecture)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    if "matryoshka_widths" in names and arm.is_matryoshka():
        kwargs.setdefault("matryoshka_widths", matryoshka_widths(bench.d_sae))
    if arm.architecture == OC:
        kwargs.setdefault("contrastive_warm_up_steps", warm_up_steps(bench))
        kwargs.setdefault("ortho_anneal_steps", bench.steps)
    return cfg_cls(
        d_in=d_in, d_sae=bench.d_sae, normalize_activations="expected_average_only_in",
        metadata=metadata or SAEMetadata(), **kwargs,
    )


def settings_changed(saved: RunResult, arm: Arm, sparsity: float, bench: BenchConfig) -> list[str]:
    """The training settings in which ``arm`` at ``sparsity`` differs from the saved run,
    as ``"field: saved -> now"``; empty when it would train the same SAE. Compared: every
    training-only field of the arm's config (what SAELens saves as the run's
    ``training_architecture_details``), the arm's own fields and the sparsity field, so an
    arm whose settings (or whose config's defaults) changed in code does not reload runs
    trained under the old ones. A field the saved run lacks was added to the config after
    it and is taken to have been at its default; a run that recorded no config (test
    doubles) is matched by its arm's name alone."""
    if "d_in" not in saved.sae_config:
        return []
    cfg = sae_config(arm, sparsity, bench, saved.sae_config["d_in"])
    details = saved.sae_config.get("metadata", {}).get("training_architecture_details") or {}
    was = json.loads(json.dumps({**saved.sae_config, **details}, default=str))
    names = {*cfg.get_training_architecture_details(), *arm.sae_kwargs, arm.sparsity_field}
    now = json.loads(json.dumps({name: getattr(cfg, name) for name in names}, default=str))
    return [f"{name}: {was[name]!r} -> {now[name]!r}" for name in sorted(now)
            if name in was and was[name] != now[name]]


def mismatch(saved: RunResult, arm: Arm, sparsity: float, bench: BenchConfig, data: str | None = None) -> str | None:
    """Why ``saved`` is not the run ``arm`` at ``sparsity`` trained as ``bench`` (at the
    arm's own lr, if it has one) on ``data`` (None: any) would give; None when it is."""
    bench = arm_bench(arm, bench)
    key = bench.key()
    if saved.bench_key != key or (data is not None and saved.data_version != data):
        return f"other benchmark settings or data ({saved.bench_key}, {saved.data_version!r} != {key}, {data!r})"
    if changed := settings_changed(saved, arm, sparsity, bench):
        return f"other arm settings ({'; '.join(changed)})"
    return None


def saved_run(path: Path, arm: Arm, sparsity: float, bench: BenchConfig, data: str | None = None,
              log: Callable[[str], None] | None = None) -> RunResult | None:
    """The run saved at ``path`` when :func:`mismatch` finds nothing against it; else
    None, saying why to ``log``."""
    if not path.exists():
        return None
    saved = load_run(path)
    why = mismatch(saved, arm, sparsity, bench, data)
    if why is None:
        return saved
    if log is not None:
        log(f"{path.name}: saved with {why}")
    return None


WARM_UP_SHARE = 0.3
"""Longest share of a run's steps the contrastive warm-up may take (the plugin refuses a
warm-up longer than the run)."""


def warm_up_steps(bench: BenchConfig) -> int:
    """``bench.contrastive_warm_up_steps``, shortened to 30 % of a shorter run's steps
    (1,024 steps keep 300: the committed grid's runs)."""
    return min(bench.contrastive_warm_up_steps, max(1, int(WARM_UP_SHARE * bench.steps)))


def _batches(acts_ND: torch.Tensor, batch: int, device: str):
    """Endless batches: the activations in order, then again (SAELens's norm estimate
    reads a few before training starts)."""
    while True:
        for chunk in acts_ND.split(batch):
            if len(chunk) == batch:
                yield chunk.to(device)


def train(arm: Arm, sparsity: float, bench: BenchConfig, source: Source,
          acts_ND: torch.Tensor) -> tuple[TrainingSAE, float, int]:
    """Train one SAE through SAELens's trainer on ``acts_ND``; returns it, the fraction
    of latents SAELens counts dead at the end, and the steps trained."""
    cfg = sae_config(arm, sparsity, bench, acts_ND.shape[1],
                     SAEMetadata(model_name=source.model.cfg.model_name, hook_name=source.hook_name))
    sae_cls, _ = get_sae_training_class(arm.architecture)
    torch.manual_seed(bench.seed)
    sae = sae_cls(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=bench.steps * bench.batch_size,
        train_batch_size_samples=bench.batch_size,
        lr=bench.lr,
        lr_end=bench.lr / 10,  # as SAELens's runner config fills it (unused by the constant schedule)
        lr_decay_steps=int(bench.lr_decay_fraction * bench.steps),
        device=bench.device,
        dead_feature_window=bench.dead_feature_window,
        feature_sampling_window=max(bench.steps // 4, 1),
        n_batches_for_norm_estimate=min(100, bench.steps),
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(acts_ND, bench.batch_size, bench.device))
    sae = trainer.fit()  # SAELens's own progress bar: a real-model run takes minutes
    dead = (trainer.n_forward_passes_since_fired > bench.dead_feature_window).float().mean().item()
    return sae, dead, trainer.n_training_steps


def inference_sae(sae: TrainingSAE, device: str, keep: Path | None = None) -> SAE:
    """The plugin-free SAE users load (BatchTopK saves a JumpReLU, ortho_contrastive a
    standard SAE): saved with SAELens's own ``save_inference_model`` and loaded back. Saved
    at ``keep`` (whole or not at all) when given, else in a temporary folder."""
    if keep is not None:
        write_folder_atomically(keep, sae.save_inference_model)
        return SAE.load_from_disk(keep, device=device)
    with tempfile.TemporaryDirectory() as folder:
        sae.save_inference_model(folder)
        return SAE.load_from_disk(folder, device=device)


def absorption_config(bench: BenchConfig) -> tuple[AbsorptionEvalConfig, dict[str, Any]]:
    """SAEBench's config, and the keyword arguments this eval version supports."""
    config = AbsorptionEvalConfig(max_k_value=bench.absorption_max_k)
    kwargs: dict[str, Any] = {}
    if bench.words_per_letter is not None:
        if "words_per_letter" not in inspect.signature(run_absorption_eval).parameters:
            raise RuntimeError(
                f"words_per_letter={bench.words_per_letter} needs run_absorption_eval's "
                "words_per_letter; this version lacks it")
        kwargs["words_per_letter"] = bench.words_per_letter
    return config, kwargs


def arm_bench(arm: Arm, bench: BenchConfig) -> BenchConfig:
    """What ``arm``'s runs train under: ``bench``, at the arm's own learning rate if it has
    one (so a run is saved and found under the fingerprint of the lr it trained at)."""
    return bench if arm.lr is None else replace(bench, lr=arm.lr)


def run_one(arm: Arm, sparsity: float, bench: BenchConfig, source: Source, acts_ND: torch.Tensor,
            heldout: HeldoutEval, work_dir: Path, forward_memo: dict[Any, Any] | None = None) -> RunResult:
    """Train, convert and score one SAE. ``forward_memo``: shared by the runs of one grid, so
    that SAEBench's model forwards (the same for every SAE) run once."""
    start = time.perf_counter()
    training_sae, dead, steps = train(arm, sparsity, bench, source, acts_ND)
    train_seconds = time.perf_counter() - start
    name = f"{arm.slug}__{arm.sparsity_field}_{sparsity:g}"
    kept = work_dir / "saes" / f"{name}-seed{bench.seed}-{bench.key()}"
    sae = inference_sae(training_sae, bench.device, keep=kept)
    del training_sae
    start = time.perf_counter()
    held = heldout(sae)
    config, kwargs = absorption_config(bench)
    spread = None
    try:
        if bench.eval_seeds > 1:  # the forwards differ between seeds: no shared memo
            spread = run_absorption_eval_seeds(sae, source.model, work_dir / "absorption", config,
                                               n_seeds=bench.eval_seeds, sae_name=name,
                                               training_steps=steps, show_progress=False, **kwargs)
            output = load_output(spread.result_files[0])
        else:
            output = run_absorption_eval(sae, source.model, work_dir / "absorption", config, sae_name=name,
                                         training_steps=steps, show_progress=False,
                                         forward_memo=forward_memo, **kwargs)
    except AbsorptionEvalError as error:  # nothing scorable: kept as a run with no absorption
        output, failure = None, str(error)
    if output is not None:
        alarm = get_alarm(output)
        mean = output.eval_result_metrics.mean
        scores = (mean.mean_absorption_fraction_score, mean.mean_full_absorption_score,
                  mean.mean_num_split_features)
        verdict_ = {"trustworthy": alarm.trustworthy, "reasons": list(alarm.reasons), "notes": list(alarm.notes),
                    "vocabulary": (output.eval_result_unstructured or {}).get("orthosae_vocabulary"),
                    "random_alignment_level": alarm.measured.get("random_alignment_level")}
        letters = {d.first_letter: {"absorption": d.mean_absorption_fraction, "full_absorption": d.full_absorption_rate,
                                    "split_features": d.num_split_features} for d in output.eval_result_details}
        for letter, why in alarm_letters(alarm.measured).items():  # what the alarm saw, per letter
            letters.setdefault(letter, {}).update(why)
    else:
        scores = (math.nan, math.nan, math.nan)
        verdict_ = {"trustworthy": False, "reasons": [f"the eval failed: {failure}"], "notes": [], "vocabulary": None}
        letters = {}
    metrics = {
        "absorption": scores[0],
        "full_absorption": scores[1],
        "split_features": scores[2],
        **held,
        "dead_latents": dead,
        "train_seconds": train_seconds,
    }
    if spread is not None:  # the eval's own noise on this SAE
        for key, metric in (("absorption", "mean_absorption_fraction_score"),
                            ("full_absorption", "mean_full_absorption_score"),
                            ("split_features", "mean_num_split_features")):
            metrics[f"{key}_eval_sd"] = spread.metrics[metric].std
            metrics[f"{key}_eval_seeds"] = spread.metrics[metric].values
    return RunResult(
        arm=arm.name, architecture=arm.architecture, sparsity_field=arm.sparsity_field,
        sparsity=sparsity, seed=bench.seed, metrics=metrics,
        alarm=verdict_,
        absorption_letters=letters,
        eval_seconds=time.perf_counter() - start,
        bench_key=bench.key(),
        sae_config=sae.cfg.to_dict(),
        sae_path=str(kept),
    )


def alarm_letters(measured: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per letter, what the alarm looked at: the ground-truth probe's F1, the best single
    latent's probe F1, the best-aligned ranked latent's decoder cosine with the probe and
    the share of the letter's projection carried by aligned latents."""
    f1 = measured.get("per_letter_probe_f1", {})
    cos = measured.get("per_letter_best_latent_cos", {})
    share = measured.get("per_letter_aligned_projection_share", {})
    return {letter: {"gt_probe_f1": f1[letter][0], "k1_probe_f1": f1[letter][1],
                     "best_latent_cos": cos.get(letter, math.nan), "aligned_share": share.get(letter, math.nan)}
            for letter in f1}


# --- the grid, resumable -------------------------------------------------------------


def data_version(source_name: str) -> str:
    """What the training text looks like, for SmolLM2: the corpus module's text and row
    layout versions (a new layout means new activations: saved runs are not reused)."""
    if source_name != "smollm2":
        return source_name
    from orthosae_plugin.smollm2 import corpus

    return f"corpus text v{corpus.TEXT_VERSION}, rows v{corpus.ROWS_VERSION}"


def run_path(runs_dir: Path, arm: Arm, sparsity: float) -> Path:
    return runs_dir / f"{arm.slug}__{arm.sparsity_field}_{sparsity:g}.json"


def load_run(path: Path) -> RunResult:
    return RunResult(**json.loads(path.read_text()))


def planned(arms: Sequence[Arm], quick: bool) -> list[tuple[Arm, float]]:
    return [(arm, value) for arm in arms
            for value in ((arm.sparsity_values[QUICK_INDEX],) if quick else arm.sparsity_values)]


def training_activations(source: Source, bench: BenchConfig) -> tuple[torch.Tensor, float, int]:
    """The activations every run trains on, in the order every run sees them: the
    source's, less the massive-activation tokens (norm above ``max_norm_ratio`` x the
    median), shuffled with the bench's seed. Returns them, that norm and how many were
    left out. (The budget stays ``bench.training_tokens``: the stream wraps around.)
    With ``bench.cache_tokens`` set, the stream is the same for every budget."""
    acts_ND = source.train_activations(bench.cache_tokens or bench.training_tokens)
    norms_N = acts_ND.norm(dim=-1)
    max_norm = bench.max_norm_ratio * norms_N.median().item()
    sinks = norms_N > max_norm
    acts_ND = acts_ND[~sinks]
    acts_ND = acts_ND[torch.randperm(len(acts_ND), generator=torch.Generator().manual_seed(bench.seed))]
    return acts_ND, max_norm, int(sinks.sum())


def run_grid(
    bench: BenchConfig, arms: Sequence[Arm], quick: bool, runs_dir: Path, work_dir: Path,
    make_source: Callable[[BenchConfig], Source], on_run: Callable[[list[RunResult]], None] | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
    data: str = "",
    forward_memo: dict[Any, Any] | None = None,
) -> list[RunResult]:
    """Train and evaluate every planned (arm, setting); a saved run with the same
    settings is loaded instead. ``on_run`` gets the results so far after each new run.
    ``forward_memo``: SAEBench's model forwards, shared with other grids on the same
    model and layer (default: this grid's own)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    todo: list[tuple[Arm, float]] = []
    for arm, value in planned(arms, quick):
        saved = saved_run(run_path(runs_dir, arm, value), arm, value, bench, data,
                          log=lambda why: log(f"{why}; retraining"))
        if saved is not None:
            results.append(saved)
        else:
            todo.append((arm, value))
    log(f"{len(results)} run(s) already saved in {runs_dir}, {len(todo)} to train")
    if not todo:
        return results
    source = make_source(bench)
    start = time.perf_counter()
    acts_ND, max_norm, n_sinks = training_activations(source, bench)
    log(f"{len(acts_ND):,} training activations of {source.hook_name} ready in {time.perf_counter() - start:.0f} s; "
        f"{n_sinks} massive-activation tokens (norm > {max_norm:.0f}, {bench.max_norm_ratio:g} x the "
        f"median) left out")
    start = time.perf_counter()
    heldout = HeldoutEval(source, bench.heldout_tokens, max_norm)
    log(f"held-out eval ready in {time.perf_counter() - start:.0f} s: {heldout.n_evaluated:,} positions, "
        f"{heldout.n_excluded_sinks} massive-activation tokens left out; CE clean {heldout.clean:.3f}, "
        f"zero-ablated {heldout.zero:.3f}")
    forward_memo = {} if forward_memo is None else forward_memo  # SAEBench's forwards, once for every SAE
    for i, (arm, value) in enumerate(todo, 1):
        start = time.perf_counter()
        result = run_one(arm, value, arm_bench(arm, bench), source, acts_ND, heldout, work_dir, forward_memo)
        result.data_version = data
        write_file_atomically(run_path(runs_dir, arm, value), json.dumps(asdict(result), indent=1))
        results.append(result)
        m = result.metrics
        log(f"[{i}/{len(todo)}] {arm.name} {arm.sparsity_field}={value:g}: L0 {m['l0']:.1f}, EV "
            f"{m['explained_variance']:.3f}, absorption {m['absorption']:.3f} "
            f"({'trusted' if result.alarm['trustworthy'] else 'ALARM'}), CE rec {m['ce_loss_recovered']:.3f}, "
            f"dead {m['dead_latents']:.1%}; train {m['train_seconds']:.0f} s, eval {result.eval_seconds:.0f} s, "
            f"total {time.perf_counter() - start:.0f} s")
        if on_run is not None:
            on_run(results)
    return results


# --- summary -------------------------------------------------------------------------


def ordered(results: list[RunResult], arms: Sequence[Arm]) -> list[RunResult]:
    """Runs in arm order, each arm's in sweep order (what the interpolation expects)."""
    rank = {(a.name, v): (i, j) for i, a in enumerate(arms) for j, v in enumerate(a.sparsity_values)}
    return sorted(results, key=lambda r: (*rank.get((r.arm, r.sparsity), (len(arms), r.sparsity)), r.seed))


def verdict(results: list[RunResult], target_l0: float, arms: Sequence[Arm],
            target_ev: float | None = None) -> list[str]:
    """Which arm absorbs least, and by how much: at matched L0 when two or more arms
    reach it, else (quick) per run with L0 unmatched, said plainly; with ``target_ev``,
    also the arms ranked at that explained variance (the same reconstruction, whatever L0
    each needs for it)."""
    matched = matched_l0_summary(results, target_l0, METRICS)
    reached = {arm: s for arm, s in matched.items() if s["absorption"][2] > 0}
    lines = []
    if len(reached) >= 2:
        ranked = sorted(reached, key=lambda a: reached[a]["absorption"][0])
        best, second = ranked[0], ranked[1]
        b, s = reached[best]["absorption"][0], reached[second]["absorption"][0]
        lines.append(
            f"**Lowest absorption at matched L0 = {target_l0:g}: `{best}`, {b:.3f}**, against "
            f"{s:.3f} for the runner-up `{second}` ({b - s:+.3f}, {_rel(b, s)}); EV "
            f"{reached[best]['explained_variance'][0]:.3f} vs {reached[second]['explained_variance'][0]:.3f}, "
            f"CE-loss recovered {reached[best]['ce_loss_recovered'][0]:.3f} vs "
            f"{reached[second]['ce_loss_recovered'][0]:.3f}.")
        for ref in ("standard", *HEADLINE_ARMS):
            if ref in reached and ref != best:
                r = reached[ref]["absorption"][0]
                lines.append(f"- `{best}` vs `{ref}`: {b:.3f} vs {r:.3f} ({b - r:+.3f}, {_rel(b, r)}).")
        oc = [a for a in ranked if a.startswith("oc ")]
        if oc and not best.startswith("oc "):
            lines.append(f"- `ortho_contrastive` does not win: its best arm here, `{oc[0]}`, is "
                         f"#{ranked.index(oc[0]) + 1} of {len(ranked)} ({reached[oc[0]]['absorption'][0]:.3f}).")
        missing = [a.name for a in arms if a.name in matched and a.name not in reached]
        if missing:
            lines.append(f"- Not reaching L0 {target_l0:g} (no interpolation possible): {', '.join(missing)}.")
        if target_ev is not None:
            lines.append(matched_ev_line(results, target_ev))
    else:
        trusted = [r for r in results if r.alarm["trustworthy"]]
        pool = trusted or results
        ranked_runs = sorted(pool, key=lambda r: r.metrics["absorption"])
        if ranked_runs:
            best_run = ranked_runs[0]
            lines.append(
                f"**L0 is not matched** (fewer than two arms' sweeps reach L0 {target_l0:g}; "
                f"--quick trains one setting per arm): lowest absorption among "
                f"{'runs the alarm trusts' if trusted else 'all runs (the alarm trusts none)'}: `{best_run.arm}` "
                f"({best_run.sparsity_field}={best_run.sparsity:g}) {best_run.metrics['absorption']:.3f} at L0 "
                f"{best_run.metrics['l0']:.1f}. Absorption falls and rises with L0, so this ranking is not a result.")
    flagged = [r for r in results if not r.alarm["trustworthy"]]
    if flagged:
        lines.append(f"- The absorption alarm flagged {len(flagged)} of {len(results)} runs (reasons in "
                     "`results.json`); their absorption numbers are shown but not to be quoted.")
    return lines


def matched_ev_line(results: list[RunResult], target_ev: float) -> str:
    """The arms ranked by absorption at explained variance ``target_ev``, each with the L0 it takes."""
    at_ev = matched_summary(results, "explained_variance", target_ev, METRICS)
    reached = sorted((a for a, s in at_ev.items() if s["absorption"][2] > 0), key=lambda a: at_ev[a]["absorption"][0])
    ranked = ", ".join(f"`{a}` {_stat_cell(at_ev[a]['absorption'], 3)} (L0 {at_ev[a]['l0'][0]:.0f})" for a in reached)
    missing = [a for a in at_ev if a not in reached]
    return (f"- At matched explained variance {target_ev:g} instead (the same reconstruction, at whatever L0 "
            f"each arm needs for it), lowest absorption first: {ranked or 'no arm reaches it'}"
            + (f"; not reaching it: {', '.join(missing)}." if missing else "."))


def _rel(value: float, ref: float) -> str:
    return f"{(value - ref) / ref:+.0%} relative" if ref > 0 else "reference 0"


COLUMNS = (
    ("absorption", "absorption ↓", 3), ("full_absorption", "full abs. ↓", 3),
    ("split_features", "split", 2), ("explained_variance", "EV ↑", 3), ("l0", "L0", 1),
    ("ce_loss_recovered", "CE rec ↑", 3), ("dead_latents", "dead", 3), ("train_seconds", "train s", 0),
)


def replay_note(bench: BenchConfig) -> str:
    if bench.cache_tokens is None or bench.cache_tokens >= bench.training_tokens:
        return ""
    return f"; {bench.epochs:.2g} passes over {bench.cache_tokens:,} cached tokens"


def _cell(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _stat_cell(stat: tuple[float, float, int], digits: int) -> str:
    """The mean, with ± the sd over training seeds when more than one reaches the L0."""
    mean, sd, n = stat
    return _cell(mean, digits) + (f" ± {sd:.{digits}f}" if n > 1 and not math.isnan(mean) else "")


def seeds_note(results: list[RunResult]) -> str:
    seeds = sorted({r.seed for r in results})
    if len(seeds) == 1:
        return f"seed {seeds[0]} (one seed: no error bars)"
    return f"training seeds {', '.join(map(str, seeds))} (matched-L0 values: mean ± sd over the seeds)"


def seeds_per_arm(results: list[RunResult]) -> str:
    """How many training seeds each arm has: "3 training seeds for `a`; 1 training seed (no error bars) for `b`"."""
    seeds: dict[str, set[int]] = {}
    for r in results:
        seeds.setdefault(r.arm, set()).add(r.seed)
    by_count: dict[int, list[str]] = {}
    for arm, arm_seeds in seeds.items():
        by_count.setdefault(len(arm_seeds), []).append(arm)
    parts = [f"{n} training seed{'s' if n > 1 else ' (no error bars)'}"
             + ("" if len(by_count) == 1 else " for " + ", ".join(f"`{a}`" for a in arms))
             for n, arms in sorted(by_count.items(), reverse=True)]
    return "; ".join(parts)


def eval_noise_line(results: list[RunResult], bench: BenchConfig) -> list[str]:
    """With ``eval_seeds`` > 1: the absorption eval's own spread, beside the arms' differences."""
    sds = [r.metrics["absorption_eval_sd"] for r in results if "absorption_eval_sd" in r.metrics]
    if not sds:
        return []
    return [f"Eval noise: absorption's sd over {bench.eval_seeds} eval seeds (same SAE, only the "
            f"eval's seeded draws change) is {statistics.mean(sds):.3f} on average over {len(sds)} "
            f"runs (max {max(sds):.3f}); differences between arms smaller than about twice that "
            "are not resolved.  "]


def markdown(results: list[RunResult], bench: BenchConfig, arms: Sequence[Arm], target_l0: float,
             meta: dict[str, Any], target_ev: float | None = None) -> str:
    matched = matched_l0_summary(results, target_l0, METRICS)
    header = " | ".join(title for _, title, _ in COLUMNS)
    lines = [
        "# SAE architectures on SmolLM2-135M: absorption at matched L0" if meta.get("real", True)
        else "# SAE architectures on a toy model (machinery check only)",
        "",
        f"Model and data: {meta['source']}.  ",
        f"Every SAE: d_sae {bench.d_sae}, {bench.training_tokens:,} tokens ({bench.steps} steps of "
        f"{bench.batch_size}{replay_note(bench)}), {lr_note(bench.lr, arms)} (linear decay over the last {bench.lr_decay_fraction:.0%}), "
        f"`expected_average_only_in` normalisation, {seeds_note(results)}; "
        f"`ortho_contrastive` at its defaults except `contrastive_warm_up_steps` "
        f"{warm_up_steps(bench)}.  ",
        f"Absorption: SAEBench first letter, "
        f"{'all alphabetic tokens' if bench.words_per_letter is None else f'{bench.words_per_letter} words per letter (seeded)'}"
        f", max k {bench.absorption_max_k}. EV, L0, CE-loss recovered: SAELens's definitions (`HeldoutEval`) on "
        f"{bench.heldout_tokens:,} held-out tokens. dead: share of latents SAELens's trainer counts "
        f"dead at the end (no firing in {bench.dead_feature_window} steps).  ",
        *eval_noise_line(results, bench),
        f"Data: {', '.join(sorted({r.data_version or 'unrecorded' for r in results}))}.  ",
        f"Command: `{meta['command']}`; machine: {meta['machine']}; {len(results)} runs; "
        f"training + evals summed over the runs {sum(r.metrics['train_seconds'] + r.eval_seconds for r in results) / 60:.1f} min; "
        f"wall time of the last invocation {meta['wall_seconds'] / 60:.1f} min (model load and activations "
        "included; runs resumed from disk cost nothing).",
        "",
        "## Verdict",
        "",
        *verdict(results, target_l0, arms, target_ev),
        "",
        f"## At matched L0 = {target_l0:g}",
        "",
    ]
    if any(stats["l0"][2] for stats in matched.values()):
        lines += [
            "Interpolated along each arm's sweep (never extrapolated); n/a: the sweep does not reach this L0.",
            "",
            f"| arm | {header} |",
            "|" + "---|" * (len(COLUMNS) + 1),
        ]
        for arm, stats in matched.items():
            lines.append(f"| {arm} | " + " | ".join(_stat_cell(stats[m], d) for m, _, d in COLUMNS) + " |")
    else:
        lines.append("No arm's sweep reaches this L0 (with `--quick`, one setting per arm, none can): "
                     "compare the runs below only with their L0 in view.")
    if target_ev is not None:
        lines += ["", f"## At matched explained variance = {target_ev:g}", "",
                  "Interpolated along each arm's sweep as above, with EV in L0's place; n/a: the sweep does "
                  "not reach this EV.", "", f"| arm | {header} |", "|" + "---|" * (len(COLUMNS) + 1)]
        for arm, stats in matched_summary(results, "explained_variance", target_ev, METRICS).items():
            lines.append(f"| {arm} | " + " | ".join(_stat_cell(stats[m], d) for m, _, d in COLUMNS) + " |")
    lines += ["", "## Every run", "", f"| arm | setting | {header} | alarm |",
              "|" + "---|" * (len(COLUMNS) + 3)]
    for r in results:
        alarm = "trusted" if r.alarm["trustworthy"] else "FLAGGED"
        seed = f", seed {r.seed}" if r.seed else ""
        lines.append(f"| {r.arm} | {r.sparsity_field}={r.sparsity:g}{seed} | "
                     + " | ".join(_cell(r.metrics[m], d) for m, _, d in COLUMNS) + f" | {alarm} |")
    reasons = sorted({reason for r in results for reason in r.alarm["reasons"]})
    if reasons:
        lines += ["", "Alarm reasons seen:", "", *[f"- {reason}" for reason in reasons]]
    return "\n".join(lines) + "\n"


def write_outputs(results: list[RunResult], bench: BenchConfig, arms: Sequence[Arm], target_l0: float,
                  out_dir: Path, meta: dict[str, Any], target_ev: float | None = None) -> dict[str, Path]:
    results = ordered(results, arms)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "table": out_dir / "table.md"}
    write_file_atomically(paths["json"], json.dumps({
        "benchmark": asdict(bench), "bench_key": bench.key(), "target_l0": target_l0, "meta": meta,
        "verdict": verdict(results, target_l0, arms, target_ev),
        "matched_l0": matched_l0_summary(results, target_l0, METRICS),
        "target_ev": target_ev,
        "matched_ev": (None if target_ev is None else
                       matched_summary(results, "explained_variance", target_ev, METRICS)),
        "per_setting": {f"{a} {s:g}": v for (a, s), v in per_setting_summary(results, METRICS).items()},
        "runs": [asdict(r) for r in results],
    }, indent=1))
    write_file_atomically(paths["table"], markdown(results, bench, arms, target_l0, meta, target_ev))
    plots = (("absorption", "SAEBench mean absorption fraction (lower is better)", "absorption_vs_l0.png"),
             ("explained_variance", "explained variance (held out)", "ev_vs_l0.png"))
    # The legend says which arms' absorption the alarm flagged (their points are not to be quoted).
    flagged = {a: sum(not r.alarm["trustworthy"] for r in results if r.arm == a) for a in {r.arm for r in results}}
    total = {a: sum(r.arm == a for r in results) for a in flagged}
    labelled = [replace(r, arm=f"{r.arm} (alarm: {flagged[r.arm]}/{total[r.arm]} flagged)") if flagged[r.arm] else r
                for r in results]
    paths["absorption_plot"], paths["ev_plot"] = plot(labelled, target_l0, None, out_dir, plots, METRICS)
    if target_ev is not None:
        (paths["absorption_ev_plot"],) = plot(labelled, target_ev, None, out_dir, [(*plots[0][:2], "absorption_vs_ev.png")],
                                              METRICS, along=("explained_variance", "EV", "explained variance (held out)"))
    paths["readme"] = write_results_readme(out_dir, results_readme(results, bench, arms, target_l0, meta, target_ev))
    return paths


def results_readme(results: list[RunResult], bench: BenchConfig, arms: Sequence[Arm], target_l0: float,
                   meta: dict[str, Any], target_ev: float | None = None) -> ResultsReadme:
    """The folder's README, from what ``results.json`` holds."""
    matched = matched_l0_summary(results, target_l0, METRICS)
    header = " | ".join(title for _, title, _ in COLUMNS)
    trusted = {a: sum(r.alarm["trustworthy"] for r in results if r.arm == a) for a in matched}
    total = {a: sum(r.arm == a for r in results) for a in matched}
    flagged = sum(not r.alarm["trustworthy"] for r in results)
    if any(stats["l0"][2] for stats in matched.values()):
        table = [f"At matched L0 = {target_l0:g}, interpolated along each arm's sweep (never extrapolated; "
                 "n/a: the sweep does not reach it). The last column counts the runs whose absorption "
                 "the alarm trusts.", "",
                 f"| arm | {header} | trusted |", "|" + "---|" * (len(COLUMNS) + 2)]
        table += [f"| {arm} | " + " | ".join(_stat_cell(stats[m], d) for m, _, d in COLUMNS)
                  + f" | {trusted[arm]} of {total[arm]} |" for arm, stats in matched.items()]
    else:
        table = [f"No arm's sweep reaches L0 {target_l0:g} (one setting per arm): the runs are in `table.md`, "
                 "to be compared only with their L0 in view."]
    table += ["", "The benchmark's verdict:", "", *verdict(results, target_l0, arms, target_ev)]
    seeds = sorted({r.seed for r in results})
    caveats = [
        f"{seeds_per_arm(results)}; {bench.training_tokens:,} tokens a run "
        f"({bench.steps} steps): short for SAEs of {bench.d_sae} latents.",
        (f"The absorption alarm flagged {flagged} of {len(results)} SAEs (reasons in `results.json`; mostly: in "
         "most letters no latent is aligned with the letter beyond chance): their absorption is shown but not "
         "to be quoted"
         + ("; with most runs flagged, the ranking by absorption is not a result, either way."
            if 2 * flagged > len(results) else ".")) if flagged else
        f"The absorption alarm trusts all {len(results)} SAEs.",
        "Absorption is SAEBench's first-letter eval at "
        + ("SAEBench's full vocabulary" if bench.words_per_letter is None else
           f"a seeded subsample of {bench.words_per_letter} words per letter")
        + "; EV, L0 and CE-loss recovered are on held-out text with position 0 and massive-activation tokens "
        f"(norm above {bench.max_norm_ratio:g}x the median) left out.",
    ]
    caveats += meta.get("notes", [])
    if not meta.get("real", True):
        caveats.insert(0, "A toy model (a dry run of the machinery), not a language model: no result.")
    runs_cost = sum(r.metrics["train_seconds"] + r.eval_seconds for r in results)
    return ResultsReadme(
        title="SAE architectures on SmolLM2-135M: SAEBench absorption at matched L0" if meta.get("real", True)
        else "SAE architectures on a toy model (machinery check only)",
        measures=(
            "SAELens's `standard`, `topk`, `batchtopk` and `matryoshka_batchtopk` against `ortho_contrastive` on "
            "several bases, trained on the same cached activations of a real model with the same budget, then "
            "scored in their plugin-free saved form: SAEBench's first-letter absorption (with the package's "
            "alarm), explained variance, L0 and CE-loss recovered on held-out text, and dead latents, each "
            "arm interpolated along its sparsity sweep to a matched L0."
        ),
        provenance=[
            ("Command", f"`{meta['command']}`" + (f" (re-tabulated with `{meta['retabulated_with']}`)"
                                                  if meta.get("retabulated_with") else "")),
            ("Machine", f"{meta['machine']}; torch {meta.get('torch', 'not recorded')}"),
            ("Wall time", f"{minutes(meta['wall_seconds'])} for the last invocation (model load and activations "
                          f"included; runs resumed from disk cost nothing); training + evals summed over the "
                          f"runs {minutes(runs_cost)}"),
            ("Covers", f"{len(matched)} arms, {len(results)} runs, seed{'s' if len(seeds) > 1 else ''} "
                       f"{', '.join(map(str, seeds))}; {meta['source']}; d_sae {bench.d_sae}, "
                       f"{bench.training_tokens:,} tokens a run, batch {bench.batch_size}, {lr_note(bench.lr, arms)}"),
        ],
        table="\n".join(table),
        caveats=caveats,
        files=[
            ("results.json", "every run (metrics, alarm verdict and reasons, per-letter absorption, SAE config), "
                             "the matched-L0 and per-setting summaries, the command and machine"),
            ("table.md", "the verdict, the matched-L0 table (and the matched-EV one with `--target-ev`) and every run"),
            ("absorption_vs_l0.png", "absorption against L0, one line per arm (flagged runs counted in the legend)"),
            ("ev_vs_l0.png", "held-out explained variance against L0"),
            *([("absorption_vs_ev.png", "absorption against held-out explained variance (with `--target-ev`)")]
              if target_ev is not None else []),
            ("runs/", "one JSON per finished run; a restarted grid skips them"),
        ],
        docs="real-model-benchmark.md",
        regenerate="python -m benchmarks.real_model --from-runs --out <this folder>",
    )


# --- command line --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one sparsity setting per arm (L0 not matched)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="sizes: 'cpu' (default) or 'gpu' (default with --device cuda)")
    parser.add_argument("--device", default=None, help="torch device (default: the preset's)")
    parser.add_argument("--arms", nargs="+", metavar="NAME", help="only these arms (names as in the table, or NAME[field=value, ...] "
                        "for a variant of one, e.g. 'oc relu: both[ortho_threshold_end=0.1]')")
    parser.add_argument("--target-l0", type=float, default=32.0, help="matched L0 (default 32)")
    parser.add_argument("--target-ev", type=float, default=None,
                        help="also rank the arms at this explained variance (e.g. one every arm's sweep "
                        "reaches), each at the L0 it needs for it")
    parser.add_argument("--tokens", type=int, help="training tokens per SAE (overrides the preset)")
    parser.add_argument("--d-sae", type=int, help="latents (overrides the preset)")
    parser.add_argument("--batch-size", type=int, help="training batch in tokens (overrides the preset)")
    parser.add_argument("--lr", type=float, help="learning rate (overrides the preset)")
    parser.add_argument("--layer", type=int, help="SmolLM2 layer whose hook_resid_post the SAEs read "
                        "(overrides the preset)")
    parser.add_argument("--cache-tokens", type=int, help="activations cached and replayed when the "
                        "budget is larger (default: the budget)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="training seeds 0..N-1 (each draws the SAE's init and the activations' order); "
                        "the matched-L0 table gives mean ± sd over them (default 1)")
    parser.add_argument("--eval-seeds", type=int, default=1,
                        help="absorption evals per SAE with eval seeds 42, 43, ...: the table "
                        "shows the eval's own spread (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's, i.e. OMP_NUM_THREADS)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="absorption probes and artifacts (default: the package cache folder)")
    parser.add_argument("--from-runs", action="store_true", help="tabulate the saved runs; train nothing")
    parser.add_argument("--note", action="append", default=[],
                        help="a fact about the runs for the results page, e.g. runs trained by another "
                        "invocation and copied in (kept by later invocations)")
    parser.add_argument("--source", choices=("smollm2", "planted"), default="smollm2",
                        help="'planted': the toy planted model (a dry run of the machinery)")
    return parser.parse_args(argv)


SOURCES: dict[str, Callable[[BenchConfig], Source]] = {"smollm2": SmolLM2Source, "planted": PlantedSource}


def bench_from_args(args: argparse.Namespace) -> BenchConfig:
    preset = args.preset or ("gpu" if (args.device or "").startswith("cuda") else "cpu")
    bench = PRESETS[preset]
    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.tokens:
        overrides["training_tokens"] = args.tokens
    if args.d_sae:
        overrides["d_sae"] = args.d_sae
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.eval_seeds != 1:
        overrides["eval_seeds"] = args.eval_seeds
    for name in ("lr", "layer", "cache_tokens"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return replace(bench, **overrides)


def arms_from_args(args: argparse.Namespace) -> list[Arm]:
    if not args.arms:
        return list(ARMS)
    return select_arms(args.arms, ARMS)


def runs_folder(out: Path, bench: BenchConfig, args: argparse.Namespace) -> Path:
    """Seed 0's runs in ``runs/<preset>`` (as before seeds existed), seed s's in ``runs/<preset>-seed<s>``."""
    preset = args.preset or ("gpu" if bench.device.startswith("cuda") else "cpu")
    name = preset if args.source == "smollm2" else f"{args.source}-{preset}"
    return out / "runs" / (name if bench.seed == 0 else f"{name}-seed{bench.seed}")


def invocation_meta(benchmark: str, argv: Sequence[str] | None, device: str) -> dict[str, Any]:
    """The command as typed, the machine with its load at the start, and a wall time to fill."""
    command = f"python -m benchmarks.{benchmark} " + shlex.join(argv if argv is not None else sys.argv[1:])
    return {
        "command": command.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} at the "
                   f"start: other jobs share it), {torch.get_num_threads()} torch thread(s), device {device}",
        "wall_seconds": 0.0,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = bench_from_args(args)
    arms = arms_from_args(args)
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds} is invalid: the number of training seeds must be at least 1")
    if args.target_ev is not None and not -math.inf < args.target_ev <= 1:
        raise ValueError(f"--target-ev {args.target_ev} is invalid: an explained variance is a finite number <= 1")
    benches = [replace(bench, seed=seed) for seed in range(args.seeds)]
    runs_dir = runs_folder(args.out, bench, args)
    if args.work_dir is not None:
        work_dir = args.work_dir
    else:
        from orthosae_plugin.smollm2.cache import cache_dir

        work_dir = cache_dir() / "real_model_benchmark" / runs_dir.name
    start = time.perf_counter()
    meta: dict[str, Any] = {
        **invocation_meta("real_model", argv, bench.device),
        "torch": torch.__version__, "source": SOURCES[args.source].__doc__.split("\n\n")[0].replace("\n", " "),
        "real": args.source == "smollm2", "quick": args.quick,
    }

    def write(results: list[RunResult]) -> dict[str, Path]:
        if not args.from_runs:
            meta["wall_seconds"] = time.perf_counter() - start
        return write_outputs(results, bench, arms, args.target_l0, args.out, meta, args.target_ev)

    def make_source(b: BenchConfig) -> Source:
        source = SOURCES[args.source](b)
        meta["source"] = source.description
        return source

    previous = args.out / "results.json"
    saved_meta = json.loads(previous.read_text())["meta"] if previous.exists() else {}
    meta["notes"] = [*saved_meta.get("notes", []), *args.note]
    if args.from_runs:
        if saved_meta:  # the training invocation's command, machine and wall time stand
            meta = {**saved_meta, "retabulated_with": meta["command"], "notes": meta["notes"]}
        by_name = {arm.name: arm for arm in arms}
        results = []
        for b in benches:
            for path in sorted(runs_folder(args.out, b, args).glob("*.json")):
                run = load_run(path)
                if (arm := by_name.get(run.arm)) is None:
                    continue
                if (why := mismatch(run, arm, run.sparsity, b)) is None:
                    results.append(run)
                else:
                    print(f"{path.name}: saved with {why}; left out", file=sys.stderr)
    else:
        results = []
        for b in benches:  # seed by seed; SAEBench's probes (work_dir) are shared
            done = list(results)
            results = done + run_grid(b, arms, args.quick, runs_folder(args.out, b, args), work_dir, make_source,
                                      on_run=lambda runs, done=done: write(done + runs),
                                      data=data_version(args.source))
    if not results:
        raise SystemExit(f"no runs in {runs_dir}")
    paths = write(results)
    print(paths["table"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return paths


if __name__ == "__main__":
    main()
