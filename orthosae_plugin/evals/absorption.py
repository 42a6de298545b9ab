"""SAEBench's feature-absorption eval on any SAELens SAE and any model, offline, with an alarm.

:func:`run_absorption_eval` runs SAEBench's own building blocks
(``run_k_sparse_probing_experiment`` then ``run_feature_absortion_experiment``) on a model
object you already hold, and returns SAEBench's own :class:`AbsorptionEvalOutput` (same
JSON schema as ``sae_bench`` writes). It wraps, rather than calls,
``sae_bench.evals.absorption.main.run_eval`` because that function (sae-bench 0.6.0)

* always loads its LLM by name from the hub (main.py:62);
* writes ``artifacts/absorption/`` into the working directory (main.py:101) and leaves its
  probe caches inside site-packages (common.py:33, the building blocks' default dirs);
* skips an SAE whose result file exists (main.py:78) and ``break``s out of the loop when
  too few letters pass the ground-truth probe (main.py:111-118), reporting nothing.

The other workarounds (vocabulary order and subsample, a forward that stops after the SAE's
layer, probe batch sizes, decoder-norm folding, probe-cache keys, input checks) are in
:mod:`orthosae_plugin.evals.saebench_fixes`, each naming the SAEBench line it works around.
The verdict on whether a result can be trusted is :mod:`orthosae_plugin.evals.alarm`.

Real vocabularies: SAEBench probes every alphabetic token (47,078 for SmolLM2's 49k
vocabulary: ~4M tokens of forward passes). ``words_per_letter=100`` probes a seeded
subsample of at most 100 words per first letter instead (issue 9: ground-truth probe F1
0.80 mean at SmolLM2 layer 15, 25 of 26 letters above 0.6; 40 per letter was too few, 17
of 26); the choice is recorded in the result (``eval_result_unstructured["orthosae_vocabulary"]``)
and named in the printed verdict.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import tempfile
import textwrap
import warnings
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sae_bench.evals.absorption.common import (
    load_or_train_probe,
    load_probe,
    load_probe_data_split,
)
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_bench.evals.absorption.eval_output import (
    EVAL_TYPE_ID_ABSORPTION,
    AbsorptionEvalOutput,
    AbsorptionMeanMetrics,
    AbsorptionMetricCategories,
    AbsorptionResultDetail,
)
from sae_bench.evals.absorption.feature_absorption import run_feature_absortion_experiment
from sae_bench.evals.absorption.k_sparse_probing import run_k_sparse_probing_experiment
from sae_bench.evals.absorption.main import _aggregate_results_df
from sae_bench.evals.absorption.vocab import LETTERS
from sae_bench.sae_bench_utils import (
    general_utils,
    get_eval_uuid,
    get_sae_bench_version,
    get_sae_lens_version,
)
from sae_bench.sae_bench_utils.activation_collection import LLM_NAME_TO_DTYPE
from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME
from sklearn.exceptions import UndefinedMetricWarning
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.loading_from_pretrained import get_official_model_name

from orthosae_plugin.evals.alarm import (
    ALARM_KEY,
    AbsorptionAlarm,
    AlarmThresholds,
    SaeProvenance,
    assess_result,
    get_alarm,
    random_alignment_level,
)
from orthosae_plugin.evals.planted import PLANTED_MODEL_NAME, build_planted_model
from orthosae_plugin.evals.saebench_fixes import (
    VocabularyChoice,
    check_hook,
    check_prompt_position,
    check_split_covers_letters,
    choose_vocabulary,
    fold_decoder_norms,
    model_fingerprint,
    precalc_fits,
    probe_batch_size,
    saebench_vocabulary,
    seed_everything,
    stop_after_layer,
)
from orthosae_plugin.evals.steps import run_schedule, training_steps_of
from orthosae_plugin.smollm2 import model as smollm
from orthosae_plugin.smollm2.model import SMOLLM2_MODEL_NAME

VOCABULARY_KEY = "orthosae_vocabulary"
"""Key of the probed vocabulary (:class:`VocabularyChoice`) in ``eval_result_unstructured``."""

__all__ = [
    "AbsorptionEvalError",
    "AlarmThresholds",
    "check_hook",
    "fold_decoder_norms",
    "format_summary",
    "get_alarm",
    "get_vocabulary",
    "load_model",
    "load_output",
    "main",
    "probe_batch_size",
    "result_path",
    "run_absorption_eval",
    "training_steps_of",
]

SCORE_COLUMNS = ("mean_absorption_fraction", "full_absorption_rate", "num_split_features",
                 "num_full_absorption", "num_probe_true_positives")


class AbsorptionEvalError(RuntimeError):
    """The eval ran but has no absorption number to report (the reason is in the message)."""


def load_output(path: str | Path) -> AbsorptionEvalOutput:
    """Read a result JSON written by this module (or by SAEBench) back into its dataclass."""
    return AbsorptionEvalOutput(**json.loads(Path(path).read_text()))


# --------------------------------------------------------------------------- inputs


def load_model(name: str, device: str = "cpu", dtype: str | None = None) -> HookedTransformer:
    """Load the model an SAE is evaluated on, by name.

    ``"planted-first-letter"`` builds the offline planted model (default
    :class:`~orthosae_plugin.evals.planted.PlantedModelConfig`);
    ``"smollm2-135m-instruct-q4_1"`` loads SmolLM2-135M-Instruct offline through
    ``orthosae_plugin.smollm2.model.load_smollm2``; any other name goes to
    ``HookedTransformer.from_pretrained_no_processing`` (the hub, or the local Hugging Face
    cache with ``HF_HUB_OFFLINE=1``), in SAEBench's dtype for that model unless given.

    Raises:
        ValueError: one line naming the model and the problem (unknown name, or a known
            one that cannot be loaded here).
    """
    if name == PLANTED_MODEL_NAME:
        return build_planted_model(device=device).model
    torch_dtype = general_utils.str_to_dtype(dtype or LLM_NAME_TO_DTYPE.get(name, "float32"))
    if name == SMOLLM2_MODEL_NAME:
        try:
            return smollm.load_smollm2(device=device, dtype=torch_dtype)
        except Exception as error:  # noqa: BLE001 (its own errors say how to fix them)
            raise ValueError(f"--model {name!r}: cannot load it: {one_line(error)}") from error
    try:
        get_official_model_name(name)
    except ValueError as error:
        raise ValueError(
            f"--model {name!r}: unknown model; allowed: {PLANTED_MODEL_NAME!r}, "
            f"{SMOLLM2_MODEL_NAME!r}, or a TransformerLens model name such as 'gpt2' or "
            "'gemma-2-2b'") from error
    try:
        return HookedTransformer.from_pretrained_no_processing(name, device=device,
                                                               dtype=torch_dtype)
    except Exception as error:  # noqa: BLE001 (hub, cache and conversion errors alike)
        raise ValueError(f"--model {name!r}: cannot load it ({type(error).__name__}: "
                         f"{one_line(error)[:300]})") from error


@torch.no_grad()
def letter_projection_carried(sae: SAE, probe_weights_LD: torch.Tensor, acts_ND: torch.Tensor,
                              labels_N: list[int], level: float) -> dict[str, float]:
    """Per letter: the share of the SAE's projection onto the letter's probe direction that
    is carried by latents aligned with that direction beyond chance.

    For each test word of letter l, with ``u`` the unit probe direction of l, latent
    activations ``f`` and unit decoder rows ``d``: ``sum(f_i (d_i . u) over latents with
    d_i . u > level) / sum(f_i max(d_i . u, 0) over all latents)``, averaged over the
    letter's words (words with no positive projection count 0). A letter latent and the
    latents that absorb it both point along ``u`` (an absorbing latent's decoder carries
    the letter direction: that is what absorption is), so heavy absorption leaves this
    near 1; a random or untrained dictionary spreads the projection over latents no more
    aligned than chance, and it is near 0. `level` is the random-alignment level
    (:func:`~orthosae_plugin.evals.alarm.random_alignment_level`).
    """
    dec_SD = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=-1)
    unit_LD = torch.nn.functional.normalize(probe_weights_LD.float().to(dec_SD.device), dim=-1)
    cos_SL = dec_SD @ unit_LD.T
    labels = torch.tensor(labels_N, device=dec_SD.device)
    shares: dict[str, float] = {}
    for letter_idx, letter in enumerate(LETTERS):
        acts = acts_ND[labels == letter_idx]
        if len(acts) == 0:
            shares[letter] = float("nan")
            continue
        feats_NS = sae.encode(acts.to(dtype=sae.dtype)).float()
        cos_S = cos_SL[:, letter_idx]
        total_N = feats_NS @ cos_S.clamp(min=0)
        aligned_N = feats_NS @ torch.where(cos_S > level, cos_S, torch.zeros_like(cos_S))
        share_N = torch.where(total_N > 0, aligned_N / total_N.clamp(min=1e-12),
                              torch.zeros_like(total_N))
        shares[letter] = float(share_N.mean())
    return shares


def per_letter_table(metrics_df: pd.DataFrame, agg_df: pd.DataFrame,
                     config: AbsorptionEvalConfig) -> pd.DataFrame:
    """One row per letter: probe F1s from SAEBench's k-sparse probing metrics, and its
    per-letter absorption numbers (aggregated as main.py does) for the letters it scores,
    i.e. whose ground-truth probe F1 exceeds ``config.min_GT_probe_f1``; NaN elsewhere."""
    scores = agg_df.rename(columns={"num_split_feats": "num_split_features"})[
        ["letter", *SCORE_COLUMNS]
    ]
    table = pd.DataFrame({
        "letter": metrics_df["letter"],
        "gt_probe_f1": metrics_df["f1_probe"].astype(float),
        "k1_probe_f1": metrics_df["f1_sparse_sae_1"].astype(float),
        # cosine of the k=1 latent's decoder row with the probe (an array of length k)
        "k1_decoder_probe_cos": [float(c[0]) for c in metrics_df["cos_probe_sae_dec_k_1"]],
    }).merge(scores, on="letter", how="left")
    table.loc[table["gt_probe_f1"] <= config.min_GT_probe_f1, list(SCORE_COLUMNS)] = np.nan
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------- the eval


def run_absorption_eval(
    sae: SAE | str | Path,
    model: HookedTransformer | str,
    output_dir: str | Path,
    config: AbsorptionEvalConfig | None = None,
    *,
    sae_name: str | None = None,
    training_steps: int | None = None,
    thresholds: AlarmThresholds | None = None,
    device: str | None = None,
    show_progress: bool = True,
    words_per_letter: int | None = None,
    forward_memo: dict[Any, Any] | None = None,
) -> AbsorptionEvalOutput:
    """Run SAEBench's first-letter absorption eval and return SAEBench's output object.

    Args:
        sae: an SAELens SAE (left untouched: the eval folds decoder norms into a copy) or
            the folder of a saved SAE (``cfg.json`` + weights, as SAELens writes).
        model: the ``HookedTransformer`` the SAE was trained on, or a name for
            :func:`load_model`.
        output_dir: every file goes here (created if missing): the result JSON
            ``{sae_name}_custom_sae_eval_results.json``, SAEBench's k-sparse-probing JSON,
            its intermediate parquet files under ``artifacts/``, and ground-truth probes
            under ``probes/{model_name}-{fingerprint}/``, reused only by the same model.
        config: SAEBench's config; ``model_name`` and ``llm_dtype`` are overwritten with
            the model's, and ``k_sparse_probe_batch_size`` is lowered on small vocabularies
            (see :func:`probe_batch_size`). The values used are recorded in the output.
        sae_name: names the result files; defaults to the SAE folder's name, or
            ``{architecture}_{hook_name}_{d_sae}``.
        training_steps: overrides the step count the alarm reads from the SAE.
        thresholds: when the alarm fires.
        device: defaults to the model's device.
        words_per_letter: probe a seeded subsample of at most this many words per first
            letter (seeded by ``config.random_seed``) instead of SAEBench's full alphabetic
            vocabulary (None, the default). For real vocabularies: 100 is what issue 9
            measured to keep the ground-truth probe (F1 0.80 mean on SmolLM2, 25/26
            letters > 0.6); 40 was too few. Recorded in the output
            (``eval_result_unstructured["orthosae_vocabulary"]``) and in the summary.
        forward_memo: a dict to keep SAEBench's model forwards in. Pass the same dict to the
            evals of several SAEs of the same model (and layer): the forwards do not depend
            on the SAE, so they run once (the real-model benchmark does this). It holds the
            layer's activations for every prompt (at 100 words per letter on SmolLM2, a few
            hundred MB); never share one between models.

    SAEBench's forward passes stop after the SAE's layer (same activations, no later
    blocks or unembedding; :func:`~orthosae_plugin.evals.saebench_fixes.stop_after_layer`).

    Returns:
        ``AbsorptionEvalOutput``; ``get_alarm(output)`` gives the verdict, which is also in
        the JSON under ``eval_result_unstructured["orthosae_alarm"]``.

    Raises:
        ValueError: the SAE cannot be evaluated on this model at all (wrong hook, width,
            prompt position).
        AbsorptionEvalError: no letter passes the ground-truth probe, or a letter has no
            train or test words; nothing can be scored.
    """
    output_dir = Path(output_dir).resolve()
    config = config or AbsorptionEvalConfig()
    if words_per_letter is not None and (
        isinstance(words_per_letter, bool) or not isinstance(words_per_letter, int)
        or words_per_letter < 1
    ):
        raise ValueError(f"words_per_letter={words_per_letter!r}; allowed: None (SAEBench's "
                         "full vocabulary) or an integer >= 1")
    if isinstance(model, str):
        model = load_model(model, device=device or "cpu")
    device = device or str(model.cfg.device)
    sae, sae_path = _resolve_sae(sae, device)
    sae_name = sae_name or (sae_path.name if sae_path else _default_sae_name(sae))
    if not re.fullmatch(r"[\w.\-]+", sae_name):
        raise ValueError(f"sae_name={sae_name!r}; allowed: letters, digits, '_', '.', '-'")
    layer = check_hook(sae, model)
    check_prompt_position(model, config)
    if training_steps is not None:
        steps, steps_source = training_steps, "training_steps argument"
    else:
        steps, steps_source = training_steps_of(sae, sae_path)

    if sae.cfg.metadata.model_name is None:
        sae.cfg.metadata.model_name = model.cfg.model_name  # SAEBench's cfg check needs one
    deviation, folded, fold_error = fold_decoder_norms(sae)
    warm_ups, planned = run_schedule(sae, sae_path)
    provenance = SaeProvenance(sae.cfg.d_in, sae.cfg.d_sae, steps, steps_source, deviation,
                               folded, fold_error, sae.cfg.metadata.model_name, warm_ups,
                               planned)
    sae = sae.to(device=device, dtype=model.cfg.dtype)
    general_utils._standardize_sae_cfg(sae.cfg)  # as SAEBench's own loader does

    vocab = choose_vocabulary(model, words_per_letter, config.random_seed)
    n_alpha = vocab.n_words_probed
    config = replace(
        config,
        model_name=model.cfg.model_name,
        llm_dtype=general_utils.dtype_to_str(model.cfg.dtype),
        k_sparse_probe_batch_size=probe_batch_size(config, n_alpha),
        precalc_k_sparse_probe_sae_acts=config.precalc_k_sparse_probe_sae_acts
        or precalc_fits(n_alpha, sae.cfg.d_sae),
    )
    with (
        torch.enable_grad(), warnings.catch_warnings(),
        saebench_vocabulary(words_per_letter, config.random_seed),
        stop_after_layer(model, layer, forward_memo),
    ):
        # SAEBench trains probes (run_eval sets grad mode globally, main.py:44); sklearn
        # warns for every k-sparse probe that predicts no positives, which the alarm covers.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        table = _run_saebench_experiments(
            model, sae, layer, sae_name, config, output_dir, device, show_progress, vocab,
            random_alignment_level(sae.cfg.d_in, sae.cfg.d_sae,
                                   (thresholds or AlarmThresholds()).alignment_p_value),
        )
    alarm = assess_result(table, provenance, config, model.cfg.model_name, thresholds)
    output = _build_output(table, config, sae, sae_name, alarm, vocab)
    output.to_json_file(str(result_path(output_dir, sae_name)))
    return output


def _run_saebench_experiments(
    model: HookedTransformer, sae: SAE, layer: int, sae_name: str,
    config: AbsorptionEvalConfig, output_dir: Path, device: str, show_progress: bool,
    vocab: VocabularyChoice, alignment_level: float,
) -> pd.DataFrame:
    """SAEBench's ground-truth probe, k-sparse probing and absorption experiments, with
    every path under `output_dir`; returns :func:`per_letter_table`."""
    # the full vocabulary keeps the fingerprint it had before words_per_letter existed
    subsample = () if vocab.words_per_letter is None else (
        ("words_per_letter", vocab.words_per_letter),)
    fingerprint = model_fingerprint(model, config.prompt_template, config.prompt_token_pos,
                                    config.random_seed, *subsample)
    probes_dir = output_dir / "probes" / f"{_safe(model.cfg.model_name)}-{fingerprint}"
    artifacts = output_dir / "artifacts"
    common = dict(
        model=model, sae=sae, layer=layer, sae_name=sae_name, max_k_value=config.max_k_value,
        prompt_template=config.prompt_template, prompt_token_pos=config.prompt_token_pos,
        device=device, probes_dir=probes_dir, force=True,  # per-SAE results: never stale
    )
    stages = tqdm(total=3, desc=f"absorption {sae_name}", disable=not show_progress)
    seed_everything(config.random_seed)

    stages.set_postfix_str("ground-truth probe")
    load_or_train_probe(model, config.prompt_template, config.prompt_token_pos,
                        layer=layer, probes_dir=probes_dir, device=device)
    check_split_covers_letters(probes_dir / model.cfg.model_name / f"layer_{layer}",
                               AbsorptionEvalError)
    stages.update()

    stages.set_postfix_str("k-sparse probes")
    # Seeded again: training the ground-truth probe draws random numbers and loading it
    # does not, so without this an SAE's scores would depend on whether the probe was
    # already cached (measured on SmolLM2: 0.055 vs 0.047 absorption for the same SAE).
    seed_everything(config.random_seed)
    metrics_df = run_k_sparse_probing_experiment(
        **common,
        experiment_dir=artifacts / "k_sparse_probing",
        f1_jump_threshold=config.f1_jump_threshold,
        k_sparse_probe_l1_decay=config.k_sparse_probe_l1_decay,
        k_sparse_probe_batch_size=config.k_sparse_probe_batch_size,
        k_sparse_probe_num_epochs=config.k_sparse_probe_num_epochs,
        eval_batch_size=config.eval_k_sparse_probe_batch_size,
        precalc_k_sparse_probe_sae_acts=config.precalc_k_sparse_probe_sae_acts,
        verbose=show_progress,
    )
    # The file SAEBench writes to ./artifacts/absorption/ (main.py:101-109).
    probing_json = output_dir / f"{sae_name}_custom_sae_k_sparse_probing.json"
    metrics_df.to_json(probing_json, orient="records", indent=4)
    stages.update()
    if not (metrics_df["f1_probe"] > config.min_GT_probe_f1).any():
        raise AbsorptionEvalError(
            f"no letter passes the ground-truth probe (F1 > {config.min_GT_probe_f1}) on "
            f"{model.cfg.model_name!r} at layer {layer}; there is no absorption to measure. "
            f"Probe F1s are in {probing_json}")

    stages.set_postfix_str("absorption")
    raw_df = run_feature_absortion_experiment(
        **common,
        experiment_dir=artifacts / "feature_absorption",
        sparse_probing_experiment_dir=artifacts / "k_sparse_probing",
        feature_split_f1_jump_threshold=config.f1_jump_threshold,
        batch_size=config.llm_batch_size,
    )
    stages.update()
    stages.close()
    table = per_letter_table(metrics_df, _aggregate_results_df(raw_df), config)
    probe = load_probe(model.cfg.model_name, layer, probes_dir, torch.float32, device)
    test_acts_ND, test_words = load_probe_data_split(
        model, layer, "test", probes_dir, torch.float32, device)
    carried = letter_projection_carried(sae, probe.weights.detach(), test_acts_ND,
                                        [label for _, label in test_words],
                                        alignment_level)
    return table.assign(aligned_projection_share=table["letter"].map(carried))


def _build_output(table: pd.DataFrame, config: AbsorptionEvalConfig, sae: SAE,
                  sae_name: str, alarm: AbsorptionAlarm,
                  vocab: VocabularyChoice) -> AbsorptionEvalOutput:
    """SAEBench's output object, filled as main.run_eval fills it (main.py:135-188)."""
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


def _resolve_sae(sae: SAE | str | Path, device: str) -> tuple[SAE, Path | None]:
    if isinstance(sae, (str, Path)):
        path = Path(sae)
        allowed = "allowed: the folder of a saved SAELens SAE (cfg.json + sae_weights.safetensors)"
        if not path.is_dir():
            problem = "does not exist" if not path.exists() else "is not a folder"
            raise ValueError(f"{path}: {problem}; {allowed}")
        if not (path / SAE_CFG_FILENAME).is_file():
            raise ValueError(f"{path / SAE_CFG_FILENAME}: missing; {allowed}")
        try:
            json.loads((path / SAE_CFG_FILENAME).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"{path / SAE_CFG_FILENAME}: not readable JSON ({error}); "
                             f"{allowed}") from error
        try:
            return SAE.load_from_disk(path, device=device), path
        except Exception as error:  # noqa: BLE001 (SAELens raises many kinds; name them all)
            raise ValueError(f"{path}: SAELens cannot load this SAE ({type(error).__name__}: "
                             f"{error}); {allowed}") from error
    if not isinstance(sae, SAE):
        raise ValueError(f"sae is a {type(sae).__name__}; allowed: an SAELens SAE or a folder path")
    return copy.deepcopy(sae), None


def _default_sae_name(sae: SAE) -> str:
    return _safe(f"{sae.cfg.architecture()}_{sae.cfg.metadata.hook_name}_{sae.cfg.d_sae}")


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-]", "_", name)


# --------------------------------------------------------------------------- reporting


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


def result_path(output_dir: str | Path, sae_name: str) -> Path:
    """Where :func:`run_absorption_eval` writes the result JSON (SAEBench's file name)."""
    return Path(general_utils.get_results_filepath(str(output_dir), sae_name, "custom_sae"))


def one_line(message: object) -> str:
    """`message` on one line (user errors are printed as one line, never a traceback)."""
    return " ".join(str(message).split())


def check_output_dir(path: str | Path) -> None:
    """Raise ValueError (naming the path and the problem) unless `path` is a folder this
    process can write into, or one it can create. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path}: is a file, not a folder; allowed: a folder (created "
                         "if missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {path}: cannot be created, {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        where = "folder" if existing == path else f"folder {existing} (to create it)"
        raise ValueError(f"--out {path}: cannot write into the {where}: "
                         f"{error.strerror or error}") from error


def main(argv: list[str] | None = None) -> int:
    """``orthosae-absorption``: run the eval on a saved SAE and print a summary.

    Exit status: 0 done; 1 the SAE could not be evaluated; 2 the result is untrustworthy
    and ``--strict`` was given.
    """
    defaults, default_thresholds = AbsorptionEvalConfig(), AlarmThresholds()
    parser = argparse.ArgumentParser(
        prog="orthosae-absorption",
        description="SAEBench first-letter absorption eval on a saved SAELens SAE, offline "
        "when the model is available locally, with an alarm for untrustworthy results.",
        epilog="exit status: 0 done; 1 the SAE could not be evaluated; 2 the result is "
        "untrustworthy and --strict was given",
    )
    parser.add_argument("--sae", required=True, help="folder of a saved SAELens SAE (cfg.json)")
    parser.add_argument("--model", required=True,
                        help=f"TransformerLens model name, or {PLANTED_MODEL_NAME!r} for the "
                        "offline planted model")
    parser.add_argument("--out", required=True, help="output folder; every file goes here")
    parser.add_argument("--name", default=None, help="SAE name in the result files "
                        "(default: the SAE folder's name)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default: SAEBench's for the model, else float32)")
    parser.add_argument("--llm-batch-size", type=int, default=defaults.llm_batch_size,
                        help=f"prompts per model forward pass (default {defaults.llm_batch_size})")
    parser.add_argument("--max-k-value", type=int, default=defaults.max_k_value,
                        help="largest k of SAEBench's k-sparse probes (feature splitting)")
    parser.add_argument("--seed", type=int, default=defaults.random_seed,
                        help="seeds the probe split and probe training "
                        f"(default {defaults.random_seed})")
    parser.add_argument("--words-per-letter", type=int, default=None,
                        help="probe a seeded subsample of at most this many words per first "
                        "letter (100 is enough for SmolLM2's 49k vocabulary; default: "
                        "SAEBench's full vocabulary)")
    parser.add_argument("--training-steps", type=int, default=None,
                        help="override the SAE's recorded training steps for the alarm")
    parser.add_argument("--min-training-steps", type=int,
                        default=default_thresholds.min_training_steps,
                        help="alarm below this many steps actually trained (the checkpoint's "
                        "clock, else the SAE's metadata; default "
                        f"{default_thresholds.min_training_steps})")
    parser.add_argument("--min-k1-probe-f1", type=float,
                        default=default_thresholds.min_k1_probe_f1,
                        help="note (not an alarm: heavy absorption lowers it) when most "
                        "letters' best single latent has a lower F1 "
                        f"(default {default_thresholds.min_k1_probe_f1})")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 2 when the result is untrustworthy")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    config = replace(defaults, random_seed=args.seed, llm_batch_size=args.llm_batch_size,
                     max_k_value=args.max_k_value)
    thresholds = replace(default_thresholds, min_training_steps=args.min_training_steps,
                         min_k1_probe_f1=args.min_k1_probe_f1)
    try:
        check_output_dir(args.out)
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        output = run_absorption_eval(
            args.sae, model, args.out, config, sae_name=args.name,
            training_steps=args.training_steps, thresholds=thresholds, device=args.device,
            show_progress=not args.quiet, words_per_letter=args.words_per_letter,
        )
    except (ValueError, AbsorptionEvalError) as error:
        print(f"orthosae-absorption: cannot evaluate: {one_line(error)}", file=sys.stderr)
        return 1
    except OSError as error:  # e.g. the output folder filled up or became read-only
        where = f"{error.filename}: " if error.filename else ""
        print(f"orthosae-absorption: cannot evaluate: {where}{one_line(error.strerror or error)}",
              file=sys.stderr)
        return 1
    print(format_summary(output, result_path(args.out, output.sae_lens_release_id)))
    if args.strict and not get_alarm(output).trustworthy:
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
