"""The degenerate-result alarm of the absorption eval: can a result be trusted?

SAEBench prints absorption numbers for any SAE, including one trained for 4 steps, which
gives exactly 0.0 absorption and 1.0 split features on every letter. :func:`assess_result`
looks at what the eval measured (per-letter probe F1s, the main latents' alignment with the
probe, the absorption pattern) and at how the SAE was made (:class:`SaeProvenance`), and
returns an :class:`AbsorptionAlarm` with a verdict, the reasons and notes. It is pure
bookkeeping on numbers, so every rule is tested on hand-written tables.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput
from sae_lens.constants import RUNNER_CFG_FILENAME
from transformer_lens.loading_from_pretrained import get_official_model_name

ALARM_KEY = "orthosae_alarm"
"""Key of the alarm inside an output's ``eval_result_unstructured``."""
NORM_TOLERANCE = 1e-5
"""Decoder rows within this of unit norm count as normalised."""


@dataclass
class AlarmThresholds:
    """When an absorption result is declared untrustworthy (see :class:`AbsorptionAlarm`)."""

    min_training_steps: int = 1000
    """Fewer recorded training steps than this: the SAE cannot have learned features.
    (The experiment this package exists for evaluated SAEs trained for 4 and 0 steps.)"""
    min_k1_probe_f1: float = 0.3
    """A letter whose best single SAE latent (k=1 sparse probe) has a test F1 below this
    has no latent that tracks the letter; absorption is then measured against noise."""
    alignment_p_value: float = 0.01
    """A letter's main (k=1) latent counts as unaligned when its decoder's cosine with the
    letter's probe is below the level that the best of d_sae *random* directions would
    exceed with this probability (see :func:`random_alignment_level`)."""
    max_share_failing_letters: float = 0.5
    """The two per-letter checks above fire when more than this share of the scored
    letters fails them."""
    min_k1_probe_f1_for_zero_absorption: float = 0.9
    """Exactly 0 absorption with 1 split feature on every letter is what an untrained SAE
    gives (no latent aligns with the probe, so nothing can count as absorbing). It is only
    believed when the best single latent per letter is near-perfect: mean k=1 F1 at least
    this (a clean dictionary, such as the planted reference SAE with nothing absorbed)."""


@dataclass
class AbsorptionAlarm:
    """Verdict on an absorption result: can it be trusted, and if not, why not."""

    verdict: Literal["trustworthy", "untrustworthy"]
    reasons: list[str] = field(default_factory=list)
    """Why the result cannot be trusted; empty when the verdict is trustworthy."""
    notes: list[str] = field(default_factory=list)
    """Facts worth knowing that do not by themselves invalidate the result."""
    measured: dict[str, Any] = field(default_factory=dict)
    """The numbers the checks looked at."""

    @property
    def trustworthy(self) -> bool:
        return self.verdict == "trustworthy"


@dataclass
class SaeProvenance:
    """What the eval knows about how the SAE was made and prepared (input to the alarm)."""

    d_in: int
    d_sae: int
    training_steps: int | None
    training_steps_source: str
    max_decoder_norm_deviation: float
    """max |‖W_dec[i]‖ - 1| before folding."""
    decoder_norms_folded: bool
    fold_error: str | None
    sae_model_name: str | None


def get_alarm(output: AbsorptionEvalOutput) -> AbsorptionAlarm:
    """The alarm stored in an output of ``run_absorption_eval`` (or its JSON file)."""
    unstructured = output.eval_result_unstructured or {}
    if ALARM_KEY not in unstructured:
        raise ValueError(
            f"output.eval_result_unstructured has no {ALARM_KEY!r} entry; allowed: an output "
            "produced by orthosae_plugin.evals.absorption.run_absorption_eval"
        )
    return AbsorptionAlarm(**unstructured[ALARM_KEY])


def same_model(name_a: str, name_b: str) -> bool:
    """Whether two model names denote the same model: equal, equal once an organisation
    prefix is dropped (SAELens records "google/gemma-2-2b", TransformerLens names the model
    "gemma-2-2b"), or TransformerLens aliases of the same official model."""
    if name_a.split("/")[-1].lower() == name_b.split("/")[-1].lower():
        return True
    try:
        return get_official_model_name(name_a) == get_official_model_name(name_b)
    except ValueError:  # not a TransformerLens model name
        return False


def random_alignment_level(d_in: int, d_sae: int, p_value: float) -> float:
    """The cosine with a fixed direction that the best of `d_sae` random unit vectors in
    `d_in` dimensions exceeds with probability at most `p_value` (Gaussian tail bound and
    a union bound: each cosine is ~N(0, 1/d_in)). 0.44 for the planted model's 128 x 1211,
    0.11 for Gemma-2-2B's 2304 x 16384."""
    return min(1.0, math.sqrt(2 * math.log(2 * d_sae / p_value) / d_in))


def assess_result(
    per_letter: pd.DataFrame,
    provenance: SaeProvenance,
    config: AbsorptionEvalConfig,
    eval_model_name: str,
    thresholds: AlarmThresholds | None = None,
) -> AbsorptionAlarm:
    """Decide whether an absorption result can be trusted.

    `per_letter` has one row per letter with columns ``letter, gt_probe_f1, k1_probe_f1,
    k1_decoder_probe_cos`` and, for the letters SAEBench scored, ``mean_absorption_fraction,
    full_absorption_rate, num_split_features`` (NaN elsewhere), as
    ``orthosae_plugin.evals.absorption.per_letter_table`` builds it.
    """
    th = thresholds or AlarmThresholds()
    reasons: list[str] = []
    notes: list[str] = []
    measured = _check_provenance(provenance, eval_model_name, th, reasons, notes)
    measured |= _check_letters(per_letter, provenance, config, th, reasons, notes)
    measured["thresholds"] = asdict(th)
    verdict: Literal["trustworthy", "untrustworthy"] = (
        "untrustworthy" if reasons else "trustworthy"
    )
    return AbsorptionAlarm(verdict=verdict, reasons=reasons, notes=notes, measured=measured)


def _check_provenance(
    provenance: SaeProvenance, eval_model_name: str, th: AlarmThresholds,
    reasons: list[str], notes: list[str],
) -> dict[str, Any]:
    """Rules on how the SAE was made: training length, decoder norms, model."""
    steps = provenance.training_steps
    if steps is None:
        notes.append("the SAE's number of training steps is unknown (no cfg.metadata."
                     f"training_steps, no {RUNNER_CFG_FILENAME}); it could not be checked")
    elif steps < th.min_training_steps:
        reasons.append(
            f"the SAE was trained for {steps} steps (from {provenance.training_steps_source}), "
            f"fewer than {th.min_training_steps}: it cannot have learned first-letter features")
    deviation = provenance.max_decoder_norm_deviation
    if not provenance.decoder_norms_folded:
        reasons.append(
            f"decoder rows are not unit-norm (max |norm - 1| = {deviation:.3g}) and could not "
            f"be folded ({provenance.fold_error}); SAEBench's projections then mis-measure "
            "absorption")
    elif deviation > NORM_TOLERANCE:
        notes.append("decoder norms were folded into the encoder before the eval (max "
                     f"|norm - 1| was {deviation:.3g})")
    sae_model = provenance.sae_model_name
    if sae_model is not None and not same_model(sae_model, eval_model_name):
        reasons.append(
            f"the SAE was trained on {sae_model!r} but is evaluated on {eval_model_name!r}")
    return {
        "training_steps": steps,
        "training_steps_source": provenance.training_steps_source,
        "max_decoder_norm_deviation": deviation,
        "decoder_norms_folded": provenance.decoder_norms_folded,
    }


def _check_letters(
    per_letter: pd.DataFrame, provenance: SaeProvenance, config: AbsorptionEvalConfig,
    th: AlarmThresholds, reasons: list[str], notes: list[str],
) -> dict[str, Any]:
    """Rules on what the eval measured: probes, letter latents, the absorption pattern."""
    scored = per_letter.dropna(subset=["mean_absorption_fraction"])
    n_passing = int((per_letter["gt_probe_f1"] > config.min_GT_probe_f1).sum())
    if n_passing < config.min_feats_for_eval:
        reasons.append(
            f"only {n_passing} of 26 letters pass the ground-truth probe (F1 > "
            f"{config.min_GT_probe_f1}), fewer than min_feats_for_eval="
            f"{config.min_feats_for_eval}: the model does not represent first letters "
            "linearly at this layer, so there is little to absorb")

    max_failing = th.max_share_failing_letters * len(scored)
    low_k1 = "".join(scored[scored["k1_probe_f1"] < th.min_k1_probe_f1]["letter"])
    if len(scored) and len(low_k1) > max_failing:
        reasons.append(
            f"{len(low_k1)} of {len(scored)} scored letters have no SAE latent that tracks "
            f"them (best single-latent probe F1 < {th.min_k1_probe_f1}): {low_k1}; "
            "absorption is being measured against noise latents")
    level = random_alignment_level(provenance.d_in, provenance.d_sae, th.alignment_p_value)
    unaligned = "".join(scored[scored["k1_decoder_probe_cos"] < level]["letter"])
    if len(scored) and len(unaligned) > max_failing:
        reasons.append(
            f"{len(unaligned)} of {len(scored)} scored letters have a main latent whose "
            f"decoder is no closer to the letter's probe direction (cosine < {level:.2f}) "
            f"than the best of {provenance.d_sae} random directions would be: {unaligned}; "
            "the dictionary looks untrained")

    mean_k1 = float(scored["k1_probe_f1"].mean()) if len(scored) else float("nan")
    if len(scored) and (
        (scored["mean_absorption_fraction"] == 0).all()
        and (scored["full_absorption_rate"] == 0).all()
        and (scored["num_split_features"] == 1).all()
    ):
        pattern = ("every scored letter shows exactly 0 absorption with exactly 1 split "
                   f"feature, and the best single latent per letter has mean F1 {mean_k1:.2f}")
        if mean_k1 < th.min_k1_probe_f1_for_zero_absorption:
            reasons.append(
                f"{pattern} (< {th.min_k1_probe_f1_for_zero_absorption}): the letters' "
                "main latents miss words that no other latent picks up either, which is "
                "what an untrained or broken SAE gives, not a result")
        else:
            notes.append(f"{pattern}: a clean dictionary, consistent with zero absorption")
    return {
        "n_letters_passing_gt_probe": n_passing,
        "n_letters_scored": len(scored),
        "letters_low_k1_probe_f1": low_k1,
        "mean_k1_probe_f1": mean_k1,
        "letters_unaligned_main_latent": unaligned,
        "random_alignment_level": level,
        "per_letter_probe_f1": {
            row.letter: [row.gt_probe_f1, row.k1_probe_f1] for row in per_letter.itertuples()
        },
        "per_letter_main_latent_cos": dict(zip(per_letter["letter"],
                                               per_letter["k1_decoder_probe_cos"])),
        "per_letter_aligned_projection_share": dict(zip(
            per_letter["letter"], per_letter.get("aligned_projection_share",
                                                 pd.Series([math.nan] * len(per_letter)))
        )),
    }
