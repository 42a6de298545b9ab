"""What the sweep benchmarks share (``benchmarks.synthetic_absorption``,
``benchmarks.real_model``): an arm (one architecture swept over one sparsity field), the
published OrtSAE arm, arms picked by name (or a variant of one), the matched-L0
interpolation and summaries, the sweep plots, and SAELens's progress bars turned off while
a grid draws its own.

Arms are compared at matched L0: for each seed, every metric is linearly interpolated
along the arm's sparsity sweep to the target L0 (first crossing, never extrapolated),
then averaged over the seeds whose sweep reaches it.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from sae_lens.registry import get_sae_training_class
from sae_lens.synthetic import feature_dictionary
from sae_lens.training import sae_trainer
from tqdm.auto import tqdm

Stat = tuple[float, float, int]
"""(mean, sample std, number of seeds) of one metric."""


@dataclass
class Arm:
    """One architecture with fixed settings, swept over one sparsity field."""

    name: str
    """Label in the tables and the plots; also names the run files (:attr:`slug`)."""
    architecture: str
    """SAELens training-registry name, e.g. 'standard', 'ortho_contrastive'."""
    sparsity_field: str
    """Config field swept to move L0: 'l1_coefficient' (ReLU+L1 bases) or 'k' (TopK family)."""
    sparsity_values: tuple[float, ...]
    """Values of ``sparsity_field`` in sweep order, one run per value and seed (>= 2 for
    interpolation)."""
    sae_kwargs: dict[str, Any] = field(default_factory=dict)
    """Other config fields of the architecture."""
    lr: float | None = None
    """Learning rate of this arm's runs, where it is tuned apart from the benchmark's
    (None: the benchmark's)."""

    @property
    def slug(self) -> str:
        return re.sub(r"[^\w.\-]+", "_", self.name).strip("_")

    def settings(self) -> dict[str, Any]:
        """What the arm trains with: its fields, with ``sae_kwargs`` filled in with the
        architecture's config defaults (so an arm that names a default equals one that
        leaves it out), as JSON values."""
        _, cfg_cls = get_sae_training_class(self.architecture)
        defaults = {f.name: f.default for f in fields(cfg_cls) if f.default is not MISSING}
        return json.loads(json.dumps({**asdict(self), "sae_kwargs": {**defaults, **self.sae_kwargs}}, default=str))

    def is_matryoshka(self) -> bool:
        """SAELens's Matryoshka, or ``ortho_contrastive`` on its base."""
        return "matryoshka_batchtopk" in (self.architecture, self.sae_kwargs.get("sparsity_base"))


def matryoshka_widths(d_sae: int) -> list[int]:
    """Nested prefixes d_sae/8, d_sae/4, d_sae/2, d_sae."""
    return [d_sae // 8, d_sae // 4, d_sae // 2, d_sae]


ORTSAE_CHUNK_SIZE = 1024
"""Latents per chunk of the OrtSAE arms: one chunk (the whole dictionary) up to 1,024
latents, then ceil(d_sae / 1024) chunks, so that its cost stays linear in d_sae."""


def ortsae_arm(name: str, k_values: tuple[float, ...], coefficient: float) -> Arm:
    """OrtSAE (arXiv 2509.22033) as its paper trains it: SAELens's BatchTopK with the
    penalty on each latent's largest squared cosine inside random chunks
    (``ortho_mode='ortsae'``) at weight ``coefficient``, computed every step; no
    contrastive term."""
    return Arm(name, "ortho_contrastive", "k", k_values, {
        "sparsity_base": "batchtopk", "ortho_mode": "ortsae", "ortho_coefficient": coefficient,
        "ortho_chunk_size": ORTSAE_CHUNK_SIZE, "ortho_lazy_every": 1, "contrastive_coefficient": 0.0,
    })


VARIANT = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<fields>[^\[\]]*)\]$")
"""``NAME[field=value, ...]``: a known arm with some of its config fields changed."""


def _field_value(text: str) -> Any:
    """``3`` -> 3, ``0.1`` -> 0.1, ``none`` -> None, ``true`` -> True, else the string."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def select_arms(names: Sequence[str], known: Sequence[Arm]) -> list[Arm]:
    """The arms named, in order. A name may be a known arm's, or a variant of one for
    tuning: ``"oc relu: both[ortho_threshold_end=0.1, contrastive_coefficient=1]"`` is the
    arm ``oc relu: both`` with those config fields changed (named as written, so its runs
    are saved apart); ``lr=...`` among them sets the arm's own learning rate. The sparsity
    field cannot be changed this way (it is the sweep)."""
    by_name = {arm.name: arm for arm in known}
    arms = []
    for name in names:
        if name in by_name:
            arms.append(by_name[name])
            continue
        match = VARIANT.match(name)
        base = by_name.get(match["base"].strip()) if match else None
        if base is None:
            raise ValueError(f"--arms {name!r} is invalid: known arms are {list(by_name)}, or "
                             "NAME[field=value, ...] for a variant of one")
        config_fields = {f.name for f in fields(get_sae_training_class(base.architecture)[1])}
        changes, lr = {}, base.lr
        for pair in filter(str.strip, match["fields"].split(",")):
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or not key.isidentifier():
                raise ValueError(f"--arms {name!r} is invalid: {pair.strip()!r} is not field=value")
            if key == "lr":
                lr = _field_value(value)
                if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < math.inf:
                    raise ValueError(f"--arms {name!r} is invalid: lr={value.strip()} must be a finite "
                                     "learning rate > 0")
                lr = float(lr)
                continue
            if key not in config_fields:
                raise ValueError(f"--arms {name!r} is invalid: {key!r} is not a config field of "
                                 f"{base.architecture!r}; its fields are {sorted(config_fields)}")
            if key == base.sparsity_field:
                raise ValueError(f"--arms {name!r} is invalid: {key} is the arm's sparsity sweep "
                                 f"{base.sparsity_values}, not a fixed setting")
            changes[key] = _field_value(value)
        arms.append(Arm(name, base.architecture, base.sparsity_field, base.sparsity_values,
                        {**base.sae_kwargs, **changes}, lr))
    return arms


def lr_note(default_lr: float, arms: Sequence[Arm]) -> str:
    """``lr 0.001``, naming the arms whose own learning rate differs from it."""
    own = [f"{arm.name} {arm.lr:g}" for arm in arms if arm.lr is not None and arm.lr != default_lr]
    return f"lr {default_lr:g}" + (f" ({', '.join(own)})" if own else "")


# --- matched-L0 summary --------------------------------------------------------------


class Run(Protocol):
    """What the summaries read of a run (each benchmark has its own run record)."""

    arm: str
    seed: int
    sparsity: float
    metrics: dict[str, float]


def interpolate_at(l0s: Sequence[float], values: Sequence[float], target: float) -> float:
    """``values`` at L0 = ``target``, linearly interpolated along the sweep.

    ``l0s`` and ``values`` are in sweep order (sparsity setting ascending). The first
    segment of the sweep whose L0s enclose ``target`` is used: an L1 sweep can fold
    back (past some l1_coefficient, L0 stops falling while the SAE degrades), and the
    first crossing is the least-penalised SAE at that L0. NaN when no segment encloses
    ``target`` (never extrapolated).
    """
    points = list(zip(l0s, values))
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if min(x0, x1) <= target <= max(x0, x1):
            return y0 if x1 == x0 else y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return math.nan


def mean_std(values: Sequence[float]) -> Stat:
    """Mean, sample std (0 for one value) and count of the non-NaN values."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan, 0
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)) if len(kept) > 1 else 0.0
    return mean, std, len(kept)


def matched_l0_summary(results: Sequence[Run], target_l0: float, metrics: Sequence[str]) -> dict[str, dict[str, Stat]]:
    """``{arm: {metric: (mean, std, n_seeds)}}`` at L0 = ``target_l0``: per seed,
    interpolated along the sparsity sweep (:func:`interpolate_at`); then over the seeds
    whose sweep reaches ``target_l0``. Each run's ``metrics`` holds ``l0`` and ``metrics``."""
    return matched_summary(results, "l0", target_l0, metrics)


def matched_summary(results: Sequence[Run], along: str, target: float,
                    metrics: Sequence[str]) -> dict[str, dict[str, Stat]]:
    """:func:`matched_l0_summary` with another metric in L0's place: ``metrics`` where the
    metric ``along`` (e.g. ``explained_variance``) equals ``target`` on each seed's sweep."""
    summary: dict[str, dict[str, Stat]] = {}
    for arm in dict.fromkeys(r.arm for r in results):
        per_seed: dict[str, list[float]] = {m: [] for m in metrics}
        for seed in dict.fromkeys(r.seed for r in results):
            runs = sorted(
                (r for r in results if r.arm == arm and r.seed == seed), key=lambda r: r.sparsity
            )
            xs = [r.metrics[along] for r in runs]
            for metric in metrics:
                per_seed[metric].append(interpolate_at(xs, [r.metrics[metric] for r in runs], target))
        summary[arm] = {m: mean_std(v) for m, v in per_seed.items()}
    return summary


def per_setting_summary(results: Sequence[Run], metrics: Sequence[str]) -> dict[tuple[str, float], dict[str, Stat]]:
    """``{(arm, sparsity): {metric: (mean, std, n_seeds)}}``."""
    keys = dict.fromkeys((r.arm, r.sparsity) for r in results)
    return {
        key: {
            m: mean_std([r.metrics[m] for r in results if (r.arm, r.sparsity) == key])
            for m in metrics
        }
        for key in keys
    }


# --- plots ---------------------------------------------------------------------------


L0_AXIS = ("l0", "L0", "L0 (mean active latents)")
"""(metric, short name, axis label) of the x axis the sweeps are drawn against by default."""


def plot(
    results: Sequence[Run], target_l0: float, true_l0: float | None, out_dir: Path,
    plots: Sequence[tuple[str, str, str]], metrics: Sequence[str],
    along: tuple[str, str, str] = L0_AXIS,
) -> list[Path]:
    """One PNG per ``(metric, y label, file name)`` of ``plots``, against L0 (or the metric
    ``along`` names, matched at ``target_l0``): one line per arm through its sweep (sparsity
    setting ascending), means over seeds with std error bars on both axes; ``true_l0`` None
    draws no true-L0 line."""
    x_metric, x_name, x_label = along
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = per_setting_summary(results, metrics)
    arms = list(dict.fromkeys(r.arm for r in results))
    palette = matplotlib.colormaps["tab20"]
    paths = []
    for metric, label, filename in plots:
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for i, arm in enumerate(arms):
            sweep = [stats for (a, _), stats in sorted(settings.items()) if a == arm]
            ax.errorbar(
                [st[x_metric][0] for st in sweep], [st[metric][0] for st in sweep],
                xerr=[st[x_metric][1] for st in sweep], yerr=[st[metric][1] for st in sweep],
                color=palette((2 * i) % 20 + (2 * i) // 20), marker="os^vDP*Xhd<>"[i % 12],
                capsize=2, label=arm, linestyle="--" if arm.startswith("oc") else "-",
            )
        ax.axvline(target_l0, color="black", linestyle=":", label=f"matched {x_name} {target_l0:.2f}")
        if true_l0 is not None:
            ax.axvline(true_l0, color="grey", linestyle="-.", label=f"true L0 {true_l0:.2f}")
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# --- quiet progress bars -------------------------------------------------------------


def _disabled_tqdm(*args: Any, **kwargs: Any) -> tqdm:
    return tqdm(*args, **{**kwargs, "disable": True})  # over any disable= of the caller


@contextlib.contextmanager
def quiet_saelens_progress() -> Iterator[None]:
    """SAETrainer draws a progress bar per run, and the synthetic feature orthogonalizer
    one per model; a sweep draws one for the whole grid instead."""
    modules = (sae_trainer, feature_dictionary)
    originals = [module.tqdm for module in modules]
    for module in modules:
        module.tqdm = _disabled_tqdm
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.tqdm = original
