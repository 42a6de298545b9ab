"""Writing and reading an absorption result: SAEBench's output object, the recorded
vocabulary, the eval seeds' spread, and the one-screen summary ``orthosae-absorption``
prints.
"""

from __future__ import annotations

import json
import statistics
import textwrap
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_bench.evals.absorption.eval_output import (
    EVAL_TYPE_ID_ABSORPTION,
    AbsorptionEvalOutput,
    AbsorptionMeanMetrics,
    AbsorptionMetricCategories,
    AbsorptionResultDetail,
)
from sae_bench.evals.absorption.vocab import LETTERS
from sae_bench.sae_bench_utils import get_eval_uuid, get_sae_bench_version, get_sae_lens_version
from sae_lens import SAE

from orthosae_plugin.evals.alarm import ALARM_KEY, AbsorptionAlarm, get_alarm
from orthosae_plugin.evals.saebench_fixes import VocabularyChoice

VOCABULARY_KEY = "orthosae_vocabulary"
"""Key of the probed vocabulary (:class:`VocabularyChoice`) in ``eval_result_unstructured``."""


def load_output(path: str | Path) -> AbsorptionEvalOutput:
    """Read a result JSON written by this module (or by SAEBench) back into its dataclass."""
    return AbsorptionEvalOutput(**json.loads(Path(path).read_text()))


def build_output(table: pd.DataFrame, config: AbsorptionEvalConfig, sae: SAE,
                  sae_name: str, alarm: AbsorptionAlarm,
                  vocab: VocabularyChoice) -> AbsorptionEvalOutput:
    """SAEBench's output object for a per-letter table (``letters.per_letter_table``), filled
    as main.run_eval fills it (main.py:135-188)."""
    scored = table.dropna(subset=["mean_absorption_fraction"])
    details = [
        AbsorptionResultDetail(
            first_letter=row.letter,
            mean_absorption_fraction=row.mean_absorption_fraction,
            full_absorption_rate=row.full_absorption_rate,
            num_full_absorption=int(row.num_full_absorption),
            num_probe_true_positives=int(row.num_probe_true_positives),
            num_split_features=int(row.num_split_features),
        )
        for row in scored.itertuples()
    ]

    def mean_std(column: str) -> tuple[float, float]:
        values = scored[column].astype(float).tolist()
        # statistics.stdev needs two values; one scored letter is already alarmed.
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    absorption, absorption_std = mean_std("mean_absorption_fraction")
    full, full_std = mean_std("full_absorption_rate")
    split, split_std = mean_std("num_split_features")
    return AbsorptionEvalOutput(
        eval_type_id=EVAL_TYPE_ID_ABSORPTION,
        eval_config=config,
        eval_id=get_eval_uuid(),
        datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
        eval_result_metrics=AbsorptionMetricCategories(
            mean=AbsorptionMeanMetrics(
                mean_absorption_fraction_score=absorption,
                mean_full_absorption_score=full,
                mean_num_split_features=split,
                std_dev_absorption_fraction_score=absorption_std,
                std_dev_full_absorption_score=full_std,
                std_dev_num_split_features=split_std,
            )
        ),
        eval_result_details=details,
        sae_bench_commit_hash=get_sae_bench_version(),
        sae_lens_id="custom_sae",
        sae_lens_release_id=sae_name,
        sae_lens_version=get_sae_lens_version(),
        sae_cfg_dict=sae.cfg.to_dict(),
        eval_result_unstructured={ALARM_KEY: asdict(alarm), VOCABULARY_KEY: asdict(vocab)},
    )


def get_vocabulary(output: AbsorptionEvalOutput) -> VocabularyChoice | None:
    """The probed vocabulary recorded in an output (None for outputs written before
    ``words_per_letter`` existed, or by SAEBench itself)."""
    recorded = (output.eval_result_unstructured or {}).get(VOCABULARY_KEY)
    return None if recorded is None else VocabularyChoice(**recorded)


def vocabulary_phrase(vocab: VocabularyChoice | None) -> str:
    """How the summary names the probed vocabulary."""
    if vocab is None or vocab.words_per_letter is None:
        n = "" if vocab is None else f", {vocab.n_alpha_tokens:,} words"
        return f"SAEBench's full alphabetic vocabulary{n}"
    return (f"a seeded subsample of {vocab.words_per_letter} words per letter "
            f"({vocab.n_words_probed:,} of {vocab.n_alpha_tokens:,} alphabetic tokens, "
            f"seed {vocab.seed})")


def format_summary(output: AbsorptionEvalOutput, path: Path | None = None) -> str:
    """A one-screen report of an output: per-letter table, means, and the alarm verdict."""
    alarm = get_alarm(output)
    cfg = output.eval_config
    details = {d.first_letter: d for d in output.eval_result_details}
    probe_f1 = alarm.measured.get("per_letter_probe_f1", {})
    hook = (output.sae_cfg_dict or {}).get("metadata", {}).get("hook_name")
    lines = [
        f"SAEBench absorption (first letter): {output.sae_lens_release_id} on "
        f"{cfg.model_name} @ {hook}",
        f"{'letter':>6} {'GT F1':>6} {'k=1 F1':>6} {'split':>5} {'TP':>5} "
        f"{'absorb':>7} {'full':>6}",
    ]
    legend = ("GT F1: ground-truth probe; k=1 F1: best single SAE latent; split: split "
              "features; TP: test words the probe gets right; absorb: mean absorption "
              "fraction; full: full-absorption rate")
    for letter in LETTERS:
        gt, k1 = probe_f1.get(letter, (float("nan"), float("nan")))
        row = f"{letter:>6} {gt:6.2f} {k1:6.2f} "
        d = details.get(letter)
        if d is None:
            row += f"  not scored (GT probe F1 <= {cfg.min_GT_probe_f1})"
        else:
            row += (f"{d.num_split_features:5d} {d.num_probe_true_positives:5d} "
                    f"{d.mean_absorption_fraction:7.3f} {d.full_absorption_rate:6.3f}")
        lines.append(row)
    m = output.eval_result_metrics.mean
    lines.append(
        f"mean over {len(details)} letters: absorption {m.mean_absorption_fraction_score:.3f} "
        f"(sd {m.std_dev_absorption_fraction_score:.3f}), full absorption "
        f"{m.mean_full_absorption_score:.3f}, split features {m.mean_num_split_features:.2f}"
    )
    lines.extend(textwrap.wrap(legend, 78))
    probed = vocabulary_phrase(get_vocabulary(output))
    if alarm.trustworthy:
        lines.extend(textwrap.wrap(f"verdict: TRUSTWORTHY (no alarm fired), probed on {probed}",
                                   78, subsequent_indent="  "))
    else:
        lines.append("!" * 78)
        lines.append("!!! verdict: UNTRUSTWORTHY -- do not report these numbers:")
        lines.extend(textwrap.wrap(f"(probed on {probed})", 78, initial_indent="!!!  ",
                                   subsequent_indent="!!!  "))
        for reason in alarm.reasons:
            lines.extend(textwrap.wrap(reason, 78, initial_indent="!!!  - ",
                                       subsequent_indent="!!!    "))
        lines.append("!" * 78)
    for note in alarm.notes:
        lines.extend(textwrap.wrap(note, 78, initial_indent="note: ", subsequent_indent="  "))
    if path is not None:
        lines.append(f"result: {path}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- eval seeds

SPREAD_METRICS = ("mean_absorption_fraction_score", "mean_full_absorption_score",
                  "mean_num_split_features", "std_dev_absorption_fraction_score",
                  "std_dev_full_absorption_score", "std_dev_num_split_features")
"""SAEBench's mean metrics, each summarised over the eval seeds."""


@dataclass
class MetricSpread:
    """One metric over the eval seeds."""

    values: list[float]
    """One value per seed, in seed order."""
    mean: float
    std: float
    """Sample standard deviation over the seeds (0 for one seed)."""
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> MetricSpread:
        n = len(values)
        mean = sum(values) / n
        std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
        return cls(list(values), mean, std, min(values), max(values))


@dataclass
class EvalSpread:
    """The eval repeated with several eval seeds on one SAE: every seeded part (vocabulary
    subsample, 80/20 split, in-context examples, ground-truth and k-sparse probe training)
    drawn again per seed. The spread is the measurement's own noise for this SAE."""

    sae_name: str
    seeds: list[int]
    metrics: dict[str, MetricSpread]
    """:data:`SPREAD_METRICS` plus ``n_letters_scored``, by name."""
    verdicts: list[str]
    """The alarm's verdict per seed."""
    result_files: list[str] = field(default_factory=list)
    """Each seed's result JSON (SAEBench's schema)."""
    failed_seeds: dict[int, str] = field(default_factory=dict)
    """Seeds whose eval had nothing to score, with the reason; not in the spread."""

    @classmethod
    def of(cls, sae_name: str, seeds: list[int], outputs: list[AbsorptionEvalOutput],
           result_files: list[str] | None = None,
           failed_seeds: dict[int, str] | None = None) -> EvalSpread:
        metrics = {name: MetricSpread.of([float(getattr(o.eval_result_metrics.mean, name))
                                          for o in outputs]) for name in SPREAD_METRICS}
        metrics["n_letters_scored"] = MetricSpread.of(
            [float(len(o.eval_result_details)) for o in outputs])
        return cls(sae_name, list(seeds), metrics, [get_alarm(o).verdict for o in outputs],
                   list(result_files or []), dict(failed_seeds or {}))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSpread:
        metrics = {k: MetricSpread(**v) for k, v in data["metrics"].items()}
        failed = {int(k): v for k, v in data.get("failed_seeds", {}).items()}
        return cls(**{**data, "metrics": metrics, "failed_seeds": failed})


def format_spread(spread: EvalSpread) -> str:
    """The eval seeds' spread as a small table."""
    failed = (f"; failed (nothing to score, left out): {sorted(spread.failed_seeds)}"
              if spread.failed_seeds else "")
    lines = [f"{spread.sae_name}: {len(spread.seeds)} eval seeds ({spread.seeds[0]}.."
             f"{spread.seeds[-1]}); verdicts: "
             + ", ".join(f"{spread.verdicts.count(v)} {v}" for v in sorted(set(spread.verdicts)))
             + failed,
             f"{'metric':<36} {'mean':>8} {'sd':>8} {'min':>8} {'max':>8}"]
    for name, m in spread.metrics.items():
        lines.append(f"{name:<36} {m.mean:8.4f} {m.std:8.4f} {m.min:8.4f} {m.max:8.4f}")
    return "\n".join(lines)
