"""Ground-truth absorption of ``ortho_contrastive`` against SAELens's standard, TopK,
BatchTopK and Matryoshka SAEs, on a ``sae_lens.synthetic`` parent/child hierarchy.

    python -m benchmarks.synthetic_absorption                  # the comparison, CPU
    python -m benchmarks.synthetic_absorption --grid tuning    # the sweep behind the defaults
    python -m benchmarks.synthetic_absorption --quick          # a few-minute look
    python -m benchmarks.synthetic_absorption --help

Every arm (an architecture with fixed extra settings) is trained at several sparsity
settings (L1 coefficient or k) and several seeds, on one synthetic model, and then
scored with SAELens's ``eval_sae_on_synthetic_data`` (explained variance, L0, MCC, dead
latents), ``orthosae_plugin.evals.synthetic.synthetic_absorption`` (ground-truth
absorption) and the decoder's max pairwise |cos|. Arms are compared at matched L0: for
each seed, every metric is linearly interpolated along that seed's sparsity sweep to
``target_l0`` (never extrapolated), then averaged over seeds. Runs go to ``--workers``
processes (default 2); every run seeds its own init, data and evaluation, so the
numbers do not depend on the number of workers.

Training follows ``SyntheticSAERunner`` (its config fills ``ortho_anneal_steps`` and
checks the budget; SAELens's ``SAETrainer`` trains), with one change: each seed's
training stream is sampled once and replayed to every arm and sparsity setting, so arms
are compared on identical data and the sampling cost is paid once per seed.

Outputs, under ``--out`` (default ``benchmarks/results/synthetic_absorption``):
``runs.json`` (every run, with its config), ``table.md`` (matched-L0 table, per-setting
table, targets) and ``absorption_vs_l0.png``, ``ev_vs_l0.png``.

To add an arm (e.g. a new ``sparsity_base`` of ``ortho_contrastive``), append a
``benchmarks.sweep.Arm`` to :func:`default_arms`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens import LoggingConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainingSAE
from sae_lens.synthetic import (
    HierarchyConfig,
    OrthogonalizationConfig,
    SyntheticModel,
    SyntheticModelConfig,
    SyntheticSAERunnerConfig,
    ZipfianFiringProbabilityConfig,
    eval_sae_on_synthetic_data,
)
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens.util import temporary_seed
from tqdm.auto import tqdm

import orthosae_plugin  # noqa: F401  (registers ortho_contrastive)
from benchmarks.results_readme import ResultsReadme, minutes, write_results_readme
from benchmarks.sweep import (
    Arm,
    Stat,
    lr_note,
    matched_l0_summary,
    matryoshka_widths,
    ortsae_arm,
    per_setting_summary,
    plot,
    quiet_saelens_progress,
    select_arms,
)
from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.evals.synthetic import SyntheticAbsorptionConfig, synthetic_absorption
from orthosae_plugin.orthogonality import decoder_pair_stats
from orthosae_plugin.saving import write_file_atomically

DEFAULT_OUT = Path(__file__).parent / "results" / "synthetic_absorption"

# Metrics recorded per run, interpolated to matched L0 and tabulated, in table order.
METRICS = (
    "absorption",
    "parent_recall_alone",
    "explained_variance",
    "l0",
    "mcc",
    "dead_latents",
    "decoder_max_abs_cos",
    "absorption_beyond_misses",
    "child_recall",
)


def sae_config(arm: Arm, d_in: int, d_sae: int, sparsity: float, steps: int) -> Any:
    """The SAE config of ``arm`` at one sparsity setting, for a run of ``steps`` steps."""
    kwargs = {**arm.sae_kwargs, arm.sparsity_field: sparsity}
    if arm.sparsity_field == "k" and arm.architecture == "topk":
        kwargs["k"] = int(sparsity)
    if arm.is_matryoshka():
        kwargs.setdefault("matryoshka_widths", matryoshka_widths(d_sae))
    if arm.architecture == "ortho_contrastive":
        # The spec'd warm-up (1000 steps) is written for LLM-length runs; here it is
        # scaled to the run, so that the weight reaches its value early on.
        kwargs.setdefault("contrastive_warm_up_steps", min(1000, steps // 5))
        # The committed results were computed in 'exact' mode; pinned so that this
        # command reproduces them now that 'close_pairs' is the default (it gives the
        # same loss unless a pair crosses the margin between two scans).
        kwargs.setdefault("ortho_mode", "exact")
        # Likewise every step, as committed, now that the default is lazy (every 4
        # steps, weight 4); `--grid cost` compares the two.
        kwargs.setdefault("ortho_lazy_every", 1)
    _, cfg_cls = get_sae_training_class(arm.architecture)
    return cfg_cls(d_in=d_in, d_sae=d_sae, **kwargs)


L1_SWEEP = (0.1, 0.2, 0.35)
"""l1_coefficient values of the ReLU+L1 arms; with K_SWEEP they bracket the default
target L0 for every arm."""
K_SWEEP = (4.0, 5.0, 6.0)
"""k values of the TopK-family arms."""
OC = "ortho_contrastive"
MAT = "matryoshka_batchtopk"
ORTSAE_COEFFICIENTS = (3.0, 10.0)
"""Weights of the OrtSAE arms (``ortho_coefficient`` with ``ortho_mode='ortsae'``)."""


def default_arms() -> list[Arm]:
    """The comparison: SAELens's baselines; ``ortho_contrastive`` (at its defaults) on
    the ReLU+L1 base with its ablations; and on the TopK and BatchTopK bases with both
    terms (the same bases without the terms are SAELens's ``topk`` and ``batchtopk``,
    which the plugin reproduces exactly at zero coefficients)."""
    return [
        Arm("standard", "standard", "l1_coefficient", L1_SWEEP),
        Arm("topk", "topk", "k", K_SWEEP),
        Arm("batchtopk", "batchtopk", "k", K_SWEEP),
        Arm("matryoshka_batchtopk", "matryoshka_batchtopk", "k", K_SWEEP),
        Arm("oc: ortho only", OC, "l1_coefficient", L1_SWEEP, {"contrastive_coefficient": 0.0}),
        Arm("oc: contrastive only", OC, "l1_coefficient", L1_SWEEP, {"ortho_coefficient": 0.0}),
        Arm("oc: both (k=128)", OC, "l1_coefficient", L1_SWEEP),
        Arm("oc: both (exact)", OC, "l1_coefficient", L1_SWEEP, {"projection_dim": None}),
        # The tuning grid's best contrastive weight, against the spec'd 0.3.
        Arm("oc: both (k=128), contrastive 1", OC, "l1_coefficient", L1_SWEEP,
            {"contrastive_coefficient": 1.0}),
        Arm("oc topk base: both", OC, "k", K_SWEEP, {"sparsity_base": "topk"}),
        Arm("oc batchtopk base: both", OC, "k", K_SWEEP, {"sparsity_base": "batchtopk"}),
        # Matryoshka base: the ablation, and which pairs the ortho term covers
        # across the nested prefix groups (contrastive off, to isolate the ortho term).
        Arm("oc matryoshka base: ortho only", OC, "k", K_SWEEP,
            {"sparsity_base": MAT, "contrastive_coefficient": 0.0}),
        Arm("oc matryoshka base: contrastive only", OC, "k", K_SWEEP,
            {"sparsity_base": MAT, "ortho_coefficient": 0.0}),
        Arm("oc matryoshka base: both", OC, "k", K_SWEEP, {"sparsity_base": MAT}),
        Arm("oc matryoshka base: ortho only, within groups", OC, "k", K_SWEEP,
            {"sparsity_base": MAT, "contrastive_coefficient": 0.0,
             "matryoshka_ortho_pairs": "within_groups"}),
        Arm("oc matryoshka base: ortho only, across groups", OC, "k", K_SWEEP,
            {"sparsity_base": MAT, "contrastive_coefficient": 0.0,
             "matryoshka_ortho_pairs": "across_groups"}),
        # The published peer at two weights (its penalty is a mean over the latents of a
        # squared cosine, so its scale differs from the thresholded term's).
        *(ortsae_arm(f"ortsae (batchtopk), ortho {c:g}", K_SWEEP, c) for c in ORTSAE_COEFFICIENTS),
    ]


def tuning_arms() -> list[Arm]:
    """The sweep behind the defaults: ``ortho_coefficient`` with the contrastive term
    off, on every base; then ``contrastive_coefficient`` and ``contrastive_temperature``
    on top of the default ``ortho_coefficient`` (ReLU+L1 base)."""
    ortho = OrthoContrastiveTrainingSAEConfig.ortho_coefficient
    arms = [
        Arm(f"relu_l1, ortho {c:g}", OC, "l1_coefficient", L1_SWEEP,
            {"ortho_coefficient": c, "contrastive_coefficient": 0.0})
        for c in (1.0, 10.0, 100.0, 1000.0, 10000.0)
    ]
    arms += [
        Arm(f"{base}, ortho {c:g}", OC, "k", K_SWEEP,
            {"sparsity_base": base, "ortho_coefficient": c, "contrastive_coefficient": 0.0})
        for base in ("topk", "batchtopk")
        for c in (100.0, 1000.0, 10000.0)
    ]
    arms += [
        Arm(f"relu_l1, ortho {ortho:g}, contrastive {cc:g}", OC, "l1_coefficient", L1_SWEEP,
            {"contrastive_coefficient": cc})
        for cc in (0.3, 1.0, 3.0)
    ]
    arms += [
        Arm(f"relu_l1, ortho {ortho:g}, contrastive 0.3, temperature {t:g}", OC,
            "l1_coefficient", L1_SWEEP, {"contrastive_temperature": t})
        for t in (0.03, 0.3)
    ]
    return arms


def cost_arms() -> list[Arm]:
    """The cost grid: the default arm as committed (exact ortho term every step) against the
    cheaper designs: 'close_pairs' (the same loss, provably) and the term computed every
    r steps, which changes the optimisation: 'lazy r' (weight r on those steps, nothing
    in between) and 'reuse r' (the gradient of those steps applied on every step);
    the default with its cosines' products in bf16 (a GPU speed option); and, while the
    list is over-full, the term estimated on s random chunks instead of computed over all
    pairs ('over-full chunks s')."""
    return [
        Arm("oc: both (k=128)", OC, "l1_coefficient", L1_SWEEP),
        Arm("oc: both (k=128), close_pairs", OC, "l1_coefficient", L1_SWEEP, {"ortho_mode": "close_pairs"}),
        *[
            Arm(f"oc: both (k=128), close_pairs, lazy {r}", OC, "l1_coefficient", L1_SWEEP,
                {"ortho_mode": "close_pairs", "ortho_lazy_every": r, "ortho_lazy_mode": "weighted"})
            for r in (4, 8)
        ],
        *[
            Arm(f"oc: both (k=128), close_pairs, reuse {r}", OC, "l1_coefficient", L1_SWEEP,
                {"ortho_mode": "close_pairs", "ortho_lazy_every": r, "ortho_lazy_mode": "reuse"})
            for r in (4, 8, 16)
        ],
        Arm("oc: both (k=128), close_pairs, lazy 4, bf16 products", OC, "l1_coefficient", L1_SWEEP,
            {"ortho_mode": "close_pairs", "ortho_lazy_every": 4, "ortho_matmul_dtype": "bfloat16"}),
        *[
            Arm(f"oc: both (k=128), close_pairs, lazy {r}, over-full chunks {s}", OC, "l1_coefficient", L1_SWEEP,
                {"ortho_mode": "close_pairs", "ortho_lazy_every": r, "ortho_overfull_chunks": s})
            for r, s in ((1, 8), (2, 4), (2, 8), (1, 16), (4, 2), (4, 4))
        ],
    ]


GRIDS = {"compare": default_arms, "tuning": tuning_arms, "cost": cost_arms}


@dataclass
class BenchmarkConfig:
    """Sizes of the synthetic model, of training and of evaluation."""

    num_features: int = 128
    """Ground-truth features of the synthetic model; the SAE has as many latents."""
    hidden_dim: int = 96
    """Width of the synthetic activations (the SAE's d_in). At 96 the orthogonalized
    features have mean |cos| 0.04 (max 0.19): like an LLM's residual stream, the truth
    sits below the orthogonality penalty's final threshold (0.05). At 64 (mean 0.07,
    max 0.38) it does not: a superposition stress test."""
    hierarchy_roots: int = 16
    """Parent features (the first ones, so the most frequent under the Zipf law)."""
    hierarchy_branching: int = 3
    """Children per parent: roots * branching parent/child pairs."""
    firing_zipf_exponent: float = 0.5
    """Zipf exponent of the firing probabilities (max 0.3, min 0.01), compensated for
    the hierarchy so that each feature keeps its marginal rate."""
    magnitude_std: float = 0.1
    """Std of the firing magnitudes (mean 1)."""
    orthogonalize_features: bool = True
    """Make the feature directions as orthogonal as the width allows (SAELens's
    OrthogonalizationConfig), so that superposition noise does not blur absorption and
    the ground truth itself satisfies the orthogonality penalty's final threshold."""
    model_seed: int = 0
    """Seed of the synthetic model (features, hierarchy): the same for every run."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds (SAE init and training stream)."""
    training_samples: int = 300_000
    batch_size: int = 256
    lr: float = 3e-3
    lr_decay_fraction: float = 0.2
    """Final share of the steps over which the learning rate decays linearly to 0
    (SAELens's constant scheduler with lr_decay_steps)."""
    dead_feature_window: int = 200
    """Steps without firing after which a latent counts as dead (TopK aux loss)."""
    eval_samples: int = 50_000
    """Samples for SAELens's eval and for the absorption metric (fixed seed)."""
    min_share: float = SyntheticAbsorptionConfig.min_share
    """Absorption metric: share of the parent's magnitude its latent must carry."""
    target_l0: float | None = 5.5
    """L0 at which arms are compared; None: the synthetic model's true L0 (4.41 here).
    In this budget a ReLU+L1 SAE's L0 hardly falls below ~5.3 however high its
    l1_coefficient (it stops falling, and explained variance and MCC drop fast), so the
    true L0 is out of its reach; 5.5 is inside every arm's sweep."""
    arms: list[Arm] = field(default_factory=default_arms)

    def model_config(self) -> SyntheticModelConfig:
        return SyntheticModelConfig(
            num_features=self.num_features,
            hidden_dim=self.hidden_dim,
            firing_probability=ZipfianFiringProbabilityConfig(
                exponent=self.firing_zipf_exponent, max_prob=0.3, min_prob=0.01
            ),
            hierarchy=HierarchyConfig(
                total_root_nodes=self.hierarchy_roots,
                branching_factor=self.hierarchy_branching,
                max_depth=1,
                compensate_probabilities=True,
            ),
            orthogonalization=OrthogonalizationConfig() if self.orthogonalize_features else None,
            std_firing_magnitudes=self.magnitude_std,
            mean_firing_magnitudes=1.0,
            seed=self.model_seed,
        )

    @property
    def steps(self) -> int:
        return self.training_samples // self.batch_size


def quick_config() -> BenchmarkConfig:
    """One seed and fewer evaluation samples: a third of the time. (Fewer training
    samples would leave the ReLU+L1 arms above the target L0.)"""
    return BenchmarkConfig(seeds=(0,), eval_samples=20_000)


@dataclass
class RunResult:
    arm: str
    architecture: str
    sparsity_field: str
    sparsity: float
    seed: int
    metrics: dict[str, float]
    absorption_detail: dict[str, Any]
    train_seconds: float
    sae_config: dict[str, Any]


# --- training and evaluation ---------------------------------------------------------


def training_stream(model: SyntheticModel, n: int, seed: int) -> torch.Tensor:
    """``(n, hidden_dim)`` synthetic activations, the same for every arm at ``seed``."""
    chunks = []
    with temporary_seed(10_000 + seed):
        for start in range(0, n, 65_536):
            chunks.append(model.sample(min(65_536, n - start)))
    return torch.cat(chunks)


def train(
    arm: Arm, sparsity: float, seed: int, bench: BenchmarkConfig, model: SyntheticModel,
    stream_ND: torch.Tensor,
) -> TrainingSAE[Any]:
    """Train one SAE through SAELens's trainer, configured as SyntheticSAERunner does."""
    sae_cfg = sae_config(arm, bench.hidden_dim, bench.num_features, sparsity, bench.steps)
    runner_cfg = SyntheticSAERunnerConfig(  # its post-init binds ortho_anneal_steps
        synthetic_model=model.cfg,
        sae=sae_cfg,
        training_samples=bench.steps * bench.batch_size,
        batch_size=bench.batch_size,
        lr=bench.lr if arm.lr is None else arm.lr,
        lr_decay_steps=int(bench.lr_decay_fraction * bench.steps),
        dead_feature_window=bench.dead_feature_window,
        checkpoint_path=None,
        output_path=None,
        logger=LoggingConfig(log_to_wandb=False),
    )
    sae_cls, _ = get_sae_training_class(arm.architecture)
    with temporary_seed(seed):
        sae = sae_cls(sae_cfg)
    batches = iter(stream_ND[: bench.steps * bench.batch_size].split(bench.batch_size))
    trainer = SAETrainer(cfg=runner_cfg.to_sae_trainer_config(), sae=sae, data_provider=batches)
    with quiet_saelens_progress():
        return trainer.fit()


@torch.no_grad()
def evaluate(sae: TrainingSAE[Any], model: SyntheticModel, bench: BenchmarkConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """SAELens's synthetic eval, ground-truth absorption and decoder coherence."""
    with temporary_seed(20_000):
        ev = eval_sae_on_synthetic_data(
            sae,
            model.feature_dict,
            model.activation_generator,
            num_samples=bench.eval_samples,
            batch_size=bench.batch_size,
        )
    absorption = synthetic_absorption(
        sae,
        model,
        SyntheticAbsorptionConfig(
            min_share=bench.min_share,
            num_samples=bench.eval_samples,
            batch_size=bench.batch_size,
            seed=20_001,
        ),
    )
    unit_decoder_SD = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    max_abs_cos, _ = decoder_pair_stats(unit_decoder_SD, tau=1.0)
    metrics = {
        "absorption": absorption.absorption,
        "parent_recall_alone": absorption.parent_recall_alone,
        "explained_variance": ev.explained_variance,
        "l0": ev.sae_l0,
        "true_l0": ev.true_l0,
        "mcc": ev.mcc,
        "dead_latents": float(ev.dead_latents),
        "decoder_max_abs_cos": max_abs_cos,
        "absorption_beyond_misses": absorption.absorption_beyond_misses,
        "child_recall": absorption.child_recall,
        "parent_share_coactive": absorption.parent_share_coactive,
        "parent_share_alone": absorption.parent_share_alone,
        "n_parents_missed": float(absorption.n_parents_missed),
    }
    return metrics, absorption.to_dict()


@dataclass(frozen=True)
class _Task:
    seed: int
    arm_index: int
    sparsity: float


# Per-process state: the synthetic model and the training stream of the last seed used
# (tasks arrive seed by seed, so each process samples a seed's stream about once).
_STATE: dict[str, Any] = {}


def _init_process(bench: BenchmarkConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    _STATE.clear()
    _STATE["bench"] = bench
    with quiet_saelens_progress():
        _STATE["model"] = SyntheticModel(bench.model_config())


def _run_task(task: _Task) -> RunResult:
    bench: BenchmarkConfig = _STATE["bench"]
    model: SyntheticModel = _STATE["model"]
    if _STATE.get("stream_seed") != task.seed:
        _STATE["stream"] = None  # free the old stream before sampling the new one
        _STATE["stream"] = training_stream(model, bench.training_samples, task.seed)
        _STATE["stream_seed"] = task.seed
    arm = bench.arms[task.arm_index]
    start = time.perf_counter()
    sae = train(arm, task.sparsity, task.seed, bench, model, _STATE["stream"])
    seconds = time.perf_counter() - start
    metrics, detail = evaluate(sae, model, bench)
    return RunResult(
        arm=arm.name,
        architecture=arm.architecture,
        sparsity_field=arm.sparsity_field,
        sparsity=task.sparsity,
        seed=task.seed,
        metrics=metrics,
        absorption_detail=detail,
        train_seconds=seconds,
        sae_config=sae.cfg.to_dict(),
    )


def run_grid(
    bench: BenchmarkConfig, workers: int = 1, threads: int = 1, progress: bool = True
) -> list[RunResult]:
    """Train and evaluate every (seed, arm, sparsity) of ``bench``, in ``workers``
    processes of ``threads`` torch threads each. Every run seeds its own SAE init,
    stream and evaluation, so the results do not depend on ``workers``."""
    if workers < 1:
        raise ValueError(f"workers={workers!r} is invalid: it must be >= 1")
    for arm in bench.arms:
        if len(arm.sparsity_values) < 2:
            raise ValueError(
                f"Arm {arm.name!r}: sparsity_values={arm.sparsity_values!r} is invalid: "
                "matched-L0 interpolation needs >= 2 sparsity settings"
            )
    tasks = [
        _Task(seed, arm_index, sparsity)
        for seed in bench.seeds
        for arm_index, arm in enumerate(bench.arms)
        for sparsity in arm.sparsity_values
    ]
    bar = tqdm(total=len(tasks), desc="synthetic absorption", disable=not progress)
    results: list[RunResult] = []
    with bar:
        if workers == 1:
            threads_before = torch.get_num_threads()
            _init_process(bench, threads)
            try:
                for task in tasks:
                    bar.set_postfix_str(
                        f"seed {task.seed} {bench.arms[task.arm_index].name} {task.sparsity:g}"
                    )
                    results.append(_run_task(task))
                    bar.update()
            finally:
                torch.set_num_threads(threads_before)
                _STATE.clear()
        else:
            with ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_process,
                initargs=(bench, threads),
            ) as pool:
                for result in pool.map(_run_task, tasks):
                    results.append(result)
                    bar.update()
    return results


# --- outputs ------------------------------------------------------------------------


def _fmt(stat: Stat, digits: int, n_seeds: int) -> str:
    """``mean ± std``, with the number of seeds behind it when some seeds are missing."""
    mean, std, n = stat
    if n == 0:
        return "n/a"
    text = f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"
    return text if n == n_seeds else f"{text} (n={n})"


COLUMNS = (
    ("absorption", "absorption ↓", 3),
    ("parent_recall_alone", "parent recall alone ↑", 3),
    ("explained_variance", "EV ↑", 3),
    ("l0", "L0", 2),
    ("mcc", "MCC ↑", 3),
    ("dead_latents", "dead", 1),
    ("decoder_max_abs_cos", "max dec |cos|", 3),
)


def _verdict(ok: bool, *values: float) -> str:
    return "n/a" if any(math.isnan(v) for v in values) else ("met" if ok else "missed")


def targets_section(summary: dict[str, dict[str, Stat]], arm: str) -> list[str]:
    """The issue's targets for ``arm`` against 'standard' and 'matryoshka_batchtopk',
    on the means over seeds at matched L0."""
    if arm not in summary or "standard" not in summary:
        return []
    ours, std = summary[arm], summary["standard"]
    lines = [f"Targets for `{arm}` at matched L0 (means over seeds):", ""]
    absorption, std_absorption = ours["absorption"][0], std["absorption"][0]
    ratio = absorption / std_absorption if std_absorption > 0 else math.nan
    lines.append(
        f"- absorption <= 1/3 of standard: {absorption:.3f} vs {std_absorption:.3f} "
        f"(ratio {ratio:.2f}) -> {_verdict(ratio <= 1 / 3, ratio)}"
    )
    ev, std_ev = ours["explained_variance"][0], std["explained_variance"][0]
    lines.append(
        f"- EV within 0.02 of standard: {ev:.3f} vs {std_ev:.3f} "
        f"(difference {ev - std_ev:+.3f}) -> {_verdict(ev >= std_ev - 0.02, ev, std_ev)}"
    )
    if "matryoshka_batchtopk" in summary:
        mat_absorption = summary["matryoshka_batchtopk"]["absorption"][0]
        lines.append(
            f"- absorption no worse than Matryoshka: {absorption:.3f} vs "
            f"{mat_absorption:.3f} -> "
            f"{_verdict(absorption <= mat_absorption, absorption, mat_absorption)}"
        )
    return lines


def matched_table(matched: dict[str, dict[str, Stat]], target_l0: float, n_seeds: int) -> list[str]:
    """The matched-L0 section of ``table.md`` (and of the folder's README)."""
    lines = [
        f"## At matched L0 = {target_l0:.2f}, mean ± std over seeds",
        "",
        "Interpolated along each seed's sparsity sweep; (n=...) = only that many seeds' "
        "sweeps reach this L0; n/a = none does.",
        "",
        "| arm | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for arm, stats in matched.items():
        lines.append(
            f"| {arm} | " + " | ".join(_fmt(stats[m], d, n_seeds) for m, _, d in COLUMNS) + " |"
        )
    return lines


def markdown_report(
    bench: BenchmarkConfig, results: list[RunResult], target_l0: float, headline_arm: str,
    wall_seconds: float,
) -> str:
    matched = matched_l0_summary(results, target_l0, METRICS)
    settings = per_setting_summary(results, METRICS)
    n_seeds = len({r.seed for r in results})
    lines = [
        "# Ground-truth absorption on a synthetic hierarchy",
        "",
        f"Synthetic model: {bench.num_features} features in {bench.hidden_dim} dims, "
        f"{bench.hierarchy_roots} parents x {bench.hierarchy_branching} children "
        f"({bench.hierarchy_roots * bench.hierarchy_branching} pairs), "
        f"{'orthogonalized' if bench.orthogonalize_features else 'random'} directions. "
        f"SAEs: d_sae={bench.num_features}, {bench.training_samples:,} samples, batch "
        f"{bench.batch_size}, {lr_note(bench.lr, bench.arms)}; {n_seeds} seed(s); absorption with "
        f"min_share={bench.min_share:g}. {len(results)} runs, {wall_seconds / 60:.1f} min.",
        "",
        *matched_table(matched, target_l0, n_seeds),
    ]
    lines += ["", *targets_section(matched, headline_arm), "", "## Every setting, mean ± std over seeds", ""]
    lines += ["| arm | setting | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
              "|" + "---|" * (len(COLUMNS) + 2)]
    field_of = {r.arm: r.sparsity_field for r in results}
    for (arm, sparsity), stats in settings.items():
        lines.append(
            f"| {arm} | {field_of[arm]}={sparsity:g} | "
            + " | ".join(_fmt(stats[m], d, n_seeds) for m, _, d in COLUMNS) + " |"
        )
    return "\n".join(lines) + "\n"


PLOTS = (
    ("absorption", "absorption rate (lower is better)", "absorption_vs_l0.png"),
    ("explained_variance", "explained variance", "ev_vs_l0.png"),
)
"""(metric, y label, file name) of each plot (``benchmarks.sweep.plot``)."""


def load_runs(path: Path) -> tuple[BenchmarkConfig, list[RunResult], float]:
    """The benchmark config, runs and wall time saved in a ``runs.json``."""
    saved = json.loads(path.read_text())
    config = saved["benchmark"]
    bench = BenchmarkConfig(**{
        **config,
        "seeds": tuple(config["seeds"]),
        "arms": [Arm(**{**arm, "sparsity_values": tuple(arm["sparsity_values"])})
                 for arm in config["arms"]],
    })
    return bench, [RunResult(**run) for run in saved["runs"]], saved["wall_seconds"]


def invocation(argv: Sequence[str] | None, seconds: float, workers: int, threads: int) -> dict[str, Any]:
    """How one invocation ran: its command, the machine, torch, its wall time."""
    command = "python -m benchmarks.synthetic_absorption " + shlex.join(argv if argv is not None else sys.argv[1:])
    return {
        "command": command.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} "
                   f"at the end), {workers} worker process(es) x {threads} torch thread(s)",
        "torch": torch.__version__,
        "seconds": seconds,
    }


def results_readme(
    bench: BenchmarkConfig, results: list[RunResult], target_l0: float, true_l0: float, headline_arm: str,
    wall_seconds: float, meta: dict[str, Any] | None,
) -> ResultsReadme:
    """The folder's README, from what ``runs.json`` holds."""
    matched = matched_l0_summary(results, target_l0, METRICS)
    seeds = sorted({r.seed for r in results})
    arms = list(dict.fromkeys(r.arm for r in results))
    settings = {arm: sorted({r.sparsity for r in results if r.arm == arm}) for arm in arms}
    invocations = (meta or {}).get("invocations", [])
    if invocations:
        commands = "; ".join(
            f"`{i['command']}` ({minutes(i['seconds']) if 'seconds' in i else i.get('time', 'time not recorded')})"
            for i in invocations
        )
        machines = "; ".join(dict.fromkeys(i["machine"] for i in invocations))
    else:
        commands = machines = "not recorded in `runs.json` (made before the benchmark recorded them)"
    note = [("Note", meta["note"])] if meta and meta.get("note") else []
    short = [arm for arm, stats in matched.items() if stats["absorption"][2] < len(seeds)]
    caveats = [
        "Synthetic activations (SAELens's `sae_lens.synthetic`), not a language model: one kind of "
        "hierarchy (parent/child, depth 1), no mutual exclusion, "
        f"{bench.num_features} latents; the coefficients were tuned at this size.",
        f"Short training ({bench.steps:,} steps) leaves ReLU+L1 SAEs above the true L0 "
        f"({true_l0:.2f}), hence the matched L0 {target_l0:g}.",
        "`ortho_contrastive` arms run with `ortho_mode=\"exact\"` and `ortho_lazy_every=1` unless the "
        "arm's name says otherwise (pinned so that the committed results reproduce).",
        f"{len(seeds)} seed(s): differences within one or two seed standard deviations are not results.",
    ]
    if short:
        caveats.append(f"Not every seed's sweep reaches L0 {target_l0:g} for: {', '.join(short)} ((n=...) in the table).")
    if bench.hidden_dim < 96:
        caveats.append(f"At {bench.hidden_dim} dimensions the true features are more correlated than the "
                       "orthogonality penalty's final threshold (0.05): a superposition stress test.")
    return ResultsReadme(
        title=f"Ground-truth absorption on a synthetic hierarchy ({len(arms)} arms)",
        measures=(
            "How often an SAE loses a parent feature when one of its children fires (absorption: the share "
            "of samples with both active in which the parent's matched latent carries less than "
            f"{bench.min_share:g} of it), with explained variance, MCC and dead latents, for each arm "
            "(an architecture with fixed settings) at matched L0: every metric interpolated along each "
            "seed's sparsity sweep, then averaged over seeds."
        ),
        provenance=[
            ("Command", commands),
            ("Machine", machines),
            ("Wall time", f"{minutes(wall_seconds)} for {len(results)} runs"),
            *note,
            ("Covers", f"{len(arms)} arms x {max(len(v) for v in settings.values())} sparsity settings x "
                       f"{len(seeds)} seed(s); synthetic model of {bench.num_features} features in "
                       f"{bench.hidden_dim} dimensions, {bench.hierarchy_roots} parents x "
                       f"{bench.hierarchy_branching} children; {bench.training_samples:,} training samples "
                       f"({bench.steps:,} steps of {bench.batch_size}, lr {bench.lr:g}) and "
                       f"{bench.eval_samples:,} evaluation samples per run"),
        ],
        table="\n".join([*matched_table(matched, target_l0, len(seeds)), "", *targets_section(matched, headline_arm)]),
        caveats=caveats,
        files=[
            ("runs.json", "every run with its SAE config and all metrics; the benchmark config; the matched-L0 summary"),
            ("table.md", "the matched-L0 table, the targets and every sparsity setting"),
            ("absorption_vs_l0.png", "absorption against L0, one line per arm through its sweep"),
            ("ev_vs_l0.png", "explained variance against L0"),
        ],
        docs="ground-truth-absorption.md",
        regenerate="python -m benchmarks.synthetic_absorption --from-runs <this folder>/runs.json",
    )


def write_outputs(
    bench: BenchmarkConfig, results: list[RunResult], out_dir: Path, headline_arm: str,
    wall_seconds: float, meta: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """``runs.json``, ``table.md``, the two plots and the folder's ``README.md``. ``meta``
    (``{"invocations": [...]}``, see :func:`invocation`) is saved in ``runs.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    true_l0 = sum(r.metrics["true_l0"] for r in results) / len(results)
    target_l0 = bench.target_l0 if bench.target_l0 is not None else true_l0
    bench_dict = asdict(bench)
    runs_path = out_dir / "runs.json"
    write_file_atomically(runs_path, json.dumps(
        {
            "benchmark": bench_dict,
            "true_l0": true_l0,
            "target_l0": target_l0,
            "wall_seconds": wall_seconds,
            **({"meta": meta} if meta is not None else {}),
            "matched_l0": matched_l0_summary(results, target_l0, METRICS),
            "runs": [asdict(r) for r in results],
        },
        indent=1,
        default=str,
    ))
    table_path = out_dir / "table.md"
    write_file_atomically(table_path, markdown_report(bench, results, target_l0, headline_arm, wall_seconds))
    absorption_png, ev_png = plot(results, target_l0, true_l0, out_dir, PLOTS, METRICS)
    readme = write_results_readme(
        out_dir, results_readme(bench, results, target_l0, true_l0, headline_arm, wall_seconds, meta)
    )
    return {"runs": runs_path, "table": table_path, "absorption_plot": absorption_png, "ev_plot": ev_png,
            "readme": readme}


def merge_new_arms(
    runs_json: Path, bench: BenchmarkConfig, workers: int = 2, threads: int = 1
) -> tuple[BenchmarkConfig, list[RunResult], float]:
    """The saved runs of ``runs_json`` plus new runs of the arms of ``bench`` that it
    lacks (by name), trained under the saved benchmark config. An arm of ``bench`` saved
    under the same name with other settings is refused.

    The saved runs are kept as they are (every run seeds its own init, stream and
    evaluation, so a run does not depend on which others share the grid). The wall time
    returned is the saved one plus this call's. Refuses a ``bench`` whose settings other
    than the arms differ from the saved ones (e.g. ``--quick`` against a full run).
    """
    saved_bench, saved_results, saved_wall = load_runs(runs_json)
    settings = {k: v for k, v in asdict(bench).items() if k != "arms"}
    saved_settings = {k: v for k, v in asdict(saved_bench).items() if k != "arms"}
    if json.loads(json.dumps(settings)) != json.loads(json.dumps(saved_settings)):
        differing = sorted(k for k in settings if settings[k] != saved_settings.get(k))
        raise ValueError(
            f"--merge-into {runs_json}: its benchmark settings differ from this command's "
            f"in {differing}; merge only runs made under the same settings"
        )
    saved_arms = {arm.name: arm for arm in saved_bench.arms}
    for arm in bench.arms:
        if arm.name not in saved_arms:
            continue
        was, now = saved_arms[arm.name].settings(), arm.settings()
        if was != now:
            changed = {k: (v, now[k]) for k, v in was.items() if v != now[k]}
            raise ValueError(
                f"--merge-into {runs_json}: arm {arm.name!r} was saved with other settings "
                f"(saved, now: {changed}); give the changed arm another name, e.g. a variant "
                f"'{arm.name}[field=value]'")
    saved_names = set(saved_arms)
    new_arms = [arm for arm in bench.arms if arm.name not in saved_names]
    start = time.perf_counter()
    new_results = (
        run_grid(replace(saved_bench, arms=new_arms), workers=workers, threads=threads)
        if new_arms else []
    )
    wall = saved_wall + (time.perf_counter() - start)
    merged = replace(saved_bench, arms=[*saved_bench.arms, *new_arms])
    return merged, [*saved_results, *new_results], wall


def merged_meta(saved: dict[str, Any], this: dict[str, Any]) -> dict[str, Any]:
    """The saved meta (its notes kept) with this invocation appended."""
    return {**saved, "invocations": [*saved.get("invocations", []), this]}


# --- command line -------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="compare",
                        help="'compare' (default): the architectures; 'tuning': the "
                        "coefficient sweep behind the defaults; 'cost': the ortho term's cheaper designs")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20k evaluation samples")
    parser.add_argument("--seeds", type=int, help="number of training seeds (0..n-1)")
    parser.add_argument("--samples", type=int, help="training samples per run")
    parser.add_argument("--eval-samples", type=int, help="evaluation samples per run")
    parser.add_argument("--num-features", type=int, help="ground-truth features (= d_sae)")
    parser.add_argument("--hidden-dim", type=int, help="synthetic activation width (= d_in)")
    parser.add_argument("--random-features", action="store_true",
                        help="random instead of orthogonalized feature directions")
    parser.add_argument("--target-l0", type=float, help="matched L0 (default: the true L0)")
    parser.add_argument("--arms", nargs="+", help="only the arms with these names (or NAME[field=value, ...] for a "
                        "variant of one)")
    parser.add_argument("--headline-arm", default="oc: both (k=128)",
                        help="arm checked against the issue's targets")
    parser.add_argument("--out", type=Path, help=f"output folder (default: {DEFAULT_OUT}, "
                        "plus /tuning for the tuning grid; with --from-runs, its folder)")
    parser.add_argument("--from-runs", type=Path, metavar="RUNS_JSON",
                        help="re-tabulate and re-plot a saved runs.json (with its own "
                        "config; --target-l0 still applies) instead of training")
    parser.add_argument("--merge-into", type=Path, metavar="RUNS_JSON",
                        help="train only the arms of --grid (or --arms) that this saved "
                        "runs.json lacks, under its own benchmark config, and write the "
                        "saved runs (unchanged) plus the new ones to its folder")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes training in parallel (default 2: one per core here)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per process (small matmuls: 1 is fastest)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    bench = quick_config() if args.quick else BenchmarkConfig()
    overrides: dict[str, Any] = {"arms": GRIDS[args.grid]()}
    if args.random_features:
        overrides["orthogonalize_features"] = False
    if args.target_l0 is not None:
        overrides["target_l0"] = args.target_l0
    if args.seeds is not None:
        overrides["seeds"] = tuple(range(args.seeds))
    for arg, name in (("samples", "training_samples"), ("eval_samples", "eval_samples"),
                      ("num_features", "num_features"), ("hidden_dim", "hidden_dim")):
        if getattr(args, arg) is not None:
            overrides[name] = getattr(args, arg)
    if args.arms:
        overrides["arms"] = select_arms(args.arms, overrides["arms"])
    return replace(bench, **overrides)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    bench = config_from_args(args)
    start = time.perf_counter()
    if args.from_runs:
        bench, results, wall = load_runs(args.from_runs)
        meta = json.loads(args.from_runs.read_text()).get("meta")
        if args.target_l0 is not None:
            bench = replace(bench, target_l0=args.target_l0)
    elif args.merge_into:
        saved_meta = json.loads(args.merge_into.read_text()).get("meta") or {}
        bench, results, wall = merge_new_arms(
            args.merge_into, bench, workers=args.workers, threads=args.threads
        )
        meta = merged_meta(saved_meta, invocation(argv, time.perf_counter() - start, args.workers, args.threads))
    else:
        results = run_grid(bench, workers=args.workers, threads=args.threads)
        wall = time.perf_counter() - start
        meta = {"invocations": [invocation(argv, wall, args.workers, args.threads)]}
    if args.out is not None:
        out = args.out
    elif args.from_runs or args.merge_into:
        out = (args.from_runs or args.merge_into).parent
    else:
        out = DEFAULT_OUT / "tuning" if args.grid == "tuning" else DEFAULT_OUT
    paths = write_outputs(bench, results, out, args.headline_arm, wall, meta)
    print(paths["table"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {wall / 60:.1f} min", file=sys.stderr)
    return paths


if __name__ == "__main__":
    main()
