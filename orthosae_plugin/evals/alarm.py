"""The degenerate-result alarm of the absorption eval: can a result be trusted?

SAEBench prints absorption numbers for any SAE, including one trained for 4 steps, which
gives exactly 0.0 absorption and 1.0 split features on every letter. :func:`assess_result`
looks at what the eval measured (per-letter probe F1s, the main latents' alignment with the
probe, how much of the letter's projection aligned latents carry, the absorption pattern)
and at how the SAE was made (:class:`SaeProvenance`), and returns an
:class:`AbsorptionAlarm` with a verdict, the reasons and notes. It is pure bookkeeping on
numbers, so every rule is tested on hand-written tables.

The rules must tell "untrained or unrelated" from "trained and absorbs a lot". They are
calibrated on planted first-letter models of four geometries beside the default one
(``python -m benchmarks.alarm_evidence --geometries``; every case with its numbers in
``benchmarks/results/alarm_evidence/``): d_model 64 to 576, d_sae 2.1x to 19x d_model,
letter directions weaker, equal and stronger than the token directions, hand-built
reference SAEs absorbing 0 to 85 % of each letter's words, against random dictionaries and
untrained SAEs; and on the default geometry (0-90 %) with ``ortho_contrastive``
checkpoints after 0, 4, 50, 300 and 1200 steps.

Rules, each with its evidence:

* **Letters carried by aligned latents** (:func:`_check_letters`, the main rule). Per
  letter, the share of the SAE's projection onto the letter's probe direction carried by
  latents whose decoder is aligned with it beyond what ONE random direction reaches
  (cosine above :func:`single_direction_level`: 0.29 at d_model 128, 0.14 at 576). A
  letter latent and the latents that absorb it both carry the letter direction (that is
  what absorption means), so absorption does not lower it: 0.91-1.00 mean (lowest letter
  0.67) at every planted geometry and rate. Random and untrained dictionaries: 0.00-0.01. Fires when
  more than half of the scored letters are below ``min_aligned_projection_share`` (0.25).
  It used the level of the best of d_sae random directions before (0.44 at 128 x 1221):
  an absorbing latent's decoder mixes the letter with its token's direction, so with a
  letter weaker than the token part its cosine falls below that level; the 85 %
  reference SAE of the weak-letter geometry then had a share of 0.23 and was flagged.
* **Letter latents unaligned.** No latent among the ``max_k_value`` latents that
  SAEBench's k-sparse probe ranks highest for a letter (its k=1 "main" latent included)
  has a decoder closer to the letter's probe than the best of d_sae random directions
  would (:func:`random_alignment_level`). The bound holds for any k (those latents are
  d_sae random directions under the null). It looked at the k=1 latent only before, which
  heavy absorption makes an absorbing latent (mostly token direction) for many letters:
  that flagged 85 %-absorbing SAEs. Random, untrained, 0- and 4-step SAEs: every letter;
  50 steps: 17 of 26; planted references: at most 1 letter.
* **Exact zero absorption with one split feature everywhere** is believed only with
  near-perfect letter latents (mean k=1 F1 >= 0.9: the clean reference, the 300- and
  1200-step SAEs); with weaker latents it is what an untrained SAE gives.
* **No longer a reason: "k=1 F1 < 0.3 on most letters".** With absorption a, the letter
  latent's recall is about 1 - a: it fired on 22 of 26 letters of the 90 % reference SAE,
  a correct measurement. It is kept as a note.
* **Training length.** Steps are the ones actually trained (:mod:`.steps`). Two rules:
  fewer than ``min_training_steps`` (100) steps, and a run whose own warm-ups
  (``*_warm_up_steps`` in the SAE's training config, and the runner's ``lr_warm_up_steps``)
  have not finished. The measurement rules catch the 0-, 4- and 50-step SAEs by
  themselves (``evidence_default.json``: at 50 steps 17 of 26 letters have no aligned
  ranked latent); the floor is the backstop for the experiment's failures (0 and 4 steps).
  It was 1000: that flags the earlier real SmolLM2 SAEs (docs/real-model.md) trained 586 steps (600k tokens
  at batch 1024; EV 0.85, absorption 0.10 and nothing else wrong), a false alarm. The
  300-step checkpoint measures exactly what the finished SAE does (same table row), so
  no measurement can flag it; what is wrong with it is that its contrastive term was 30 %
  warmed up: the warm-up rule flags it (and any checkpoint before its warm-ups end),
  while a checkpoint past its warm-ups but short of its budget gets a note.
* **On SmolLM2** (layer 15, 576 x 1152, 100 words per letter;
  ``benchmarks/results/alarm_evidence/smollm2.json``, measured with the earlier rules): an
  untrained SAE and a random dictionary had aligned share 0.00 on every letter and
  main-latent cosines 0.07 mean (random level 0.21).
* Decoder norms that cannot be folded, an SAE evaluated on another model than it was
  trained on, and fewer than ``min_feats_for_eval`` letters passing the ground-truth
  probe are reasons as before.
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

    min_training_steps: int = 100
    """Fewer actually-trained steps than this: the SAE cannot have learned features (the
    experiment this package exists for evaluated SAEs trained for 4 and 0 steps). 1000
    before: that flagged real SmolLM2 SAEs trained 586 steps that measure correctly (see
    the module docstring)."""
    min_aligned_projection_share: float = 0.25
    """A letter whose projection onto its probe direction is carried less than this much
    by latents aligned with the probe beyond chance (:func:`single_direction_level`) has
    no latents for the letter, neither its own nor absorbing ones (planted reference SAEs
    at 0-90 % absorption, five geometries: 0.91-0.99 mean; random and untrained
    dictionaries: 0.00-0.01)."""
    min_k1_probe_f1: float = 0.3
    """Notes (no longer a reason) when most letters' best single latent has a lower F1:
    with absorption a its recall is about 1 - a, so heavy absorption alone does this."""
    alignment_p_value: float = 0.01
    """Chance levels: a letter has no aligned latent when none of its ranked latents beats
    the cosine the best of d_sae *random* directions exceeds with this probability
    (:func:`random_alignment_level`); a latent counts as aligned in the projection share
    when its cosine exceeds what one random direction exceeds with this probability
    (:func:`single_direction_level`)."""
    max_share_failing_letters: float = 0.5
    """The per-letter checks fire when more than this share of the scored letters fails
    them."""
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
    warm_up_steps: dict[str, int] = field(default_factory=dict)
    """The run's warm-ups by name (``contrastive_warm_up_steps``, ``l1_warm_up_steps``,
    ``lr_warm_up_steps``, ...), from the SAE's training config and ``runner_cfg.json``."""
    planned_steps: int | None = None
    """The run's planned budget (``runner_cfg.json``), when known; only ever compared with
    ``training_steps``, never used in its place."""


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


def single_direction_level(d_in: int, p_value: float) -> float:
    """The cosine with a fixed direction that ONE random unit vector in `d_in` dimensions
    exceeds (in absolute value) with probability at most `p_value` (Gaussian tail bound)."""
    return min(1.0, math.sqrt(2 * math.log(2 / p_value) / d_in))


def assess_result(
    per_letter: pd.DataFrame,
    provenance: SaeProvenance,
    config: AbsorptionEvalConfig,
    eval_model_name: str,
    thresholds: AlarmThresholds | None = None,
) -> AbsorptionAlarm:
    """Decide whether an absorption result can be trusted.

    `per_letter` has one row per letter with columns ``letter, gt_probe_f1, k1_probe_f1,
    k1_decoder_probe_cos, best_decoder_probe_cos`` and, for the letters SAEBench scored, ``mean_absorption_fraction,
    full_absorption_rate, num_split_features`` (NaN elsewhere), as
    ``orthosae_plugin.evals.letters.per_letter_table`` builds it.
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
    source = provenance.training_steps_source
    warm_ups = {name: n for name, n in provenance.warm_up_steps.items() if n > 0}
    if steps is None:
        notes.append("the SAE's number of training steps is unknown (no checkpoint clock, no "
                     f"cfg.metadata.training_steps, no {RUNNER_CFG_FILENAME} of a final "
                     "save); it could not be checked")
    elif steps < th.min_training_steps:
        reasons.append(
            f"the SAE was trained for {steps} steps (from {source}), fewer than "
            f"{th.min_training_steps}: it cannot have learned first-letter features")
    elif warm_ups and steps < max(warm_ups.values()):
        unfinished = ", ".join(f"{name}={n}" for name, n in sorted(warm_ups.items())
                               if steps < n)
        reasons.append(
            f"the SAE was trained for {steps} steps (from {source}), before its run's "
            f"warm-ups ended ({unfinished}): its loss had not yet reached the form its "
            "config describes, so this is not the SAE the config would give")
    planned = provenance.planned_steps
    if steps is not None and planned is not None and steps < planned:
        notes.append(f"a checkpoint: trained {steps} of its run's {planned} planned steps")
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
        "training_steps_source": source,
        "planned_steps": planned,
        "warm_up_steps": provenance.warm_up_steps,
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
    if "aligned_projection_share" in scored:
        uncarried = "".join(
            scored[~(scored["aligned_projection_share"] >= th.min_aligned_projection_share)]
            ["letter"])
        if len(scored) and len(uncarried) > max_failing:
            reasons.append(
                f"{len(uncarried)} of {len(scored)} scored letters are carried by no latent "
                "aligned with the letter's probe beyond chance (aligned share of the "
                f"projection < {th.min_aligned_projection_share}): {uncarried}; neither a "
                "letter latent nor absorbing latents exist, absorption is being measured "
                "against noise latents")
    else:
        uncarried = ""
    level = random_alignment_level(provenance.d_in, provenance.d_sae, th.alignment_p_value)
    unaligned = "".join(scored[scored["best_decoder_probe_cos"] < level]["letter"])
    if len(scored) and len(unaligned) > max_failing:
        reasons.append(
            f"{len(unaligned)} of {len(scored)} scored letters have no latent among the "
            f"{config.max_k_value} that SAEBench's k-sparse probe ranks highest for the "
            "letter whose decoder is closer to the letter's probe direction (cosine < "
            f"{level:.2f}) than the best of {provenance.d_sae} random directions would be: "
            f"{unaligned}; the dictionary looks untrained")
    low_k1 = "".join(scored[scored["k1_probe_f1"] < th.min_k1_probe_f1]["letter"])
    if len(scored) and len(low_k1) > max_failing and not reasons:
        notes.append(
            f"{len(low_k1)} of {len(scored)} scored letters' best single latent has probe F1 "
            f"< {th.min_k1_probe_f1} ({low_k1}); with absorption a a letter latent's recall "
            "is about 1 - a, so heavy absorption alone does this (the latents are aligned "
            "with the probe and carry it)")
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
        "letters_not_carried_by_aligned_latents": uncarried,
        "mean_k1_probe_f1": mean_k1,
        "letters_unaligned_main_latent": unaligned,
        "random_alignment_level": level,
        "per_letter_probe_f1": {
            row.letter: [row.gt_probe_f1, row.k1_probe_f1] for row in per_letter.itertuples()
        },
        "per_letter_main_latent_cos": dict(zip(per_letter["letter"],
                                               per_letter["k1_decoder_probe_cos"])),
        "per_letter_best_latent_cos": dict(zip(per_letter["letter"],
                                               per_letter["best_decoder_probe_cos"])),
        "per_letter_aligned_projection_share": dict(zip(
            per_letter["letter"], per_letter.get("aligned_projection_share",
                                                 pd.Series([math.nan] * len(per_letter)))
        )),
    }
