"""SAEBench's feature-absorption eval on any SAELens SAE and any model, offline, with an alarm.

:func:`run_absorption_eval` runs SAEBench's own building blocks
(``run_k_sparse_probing_experiment`` then ``run_feature_absortion_experiment``) on a model
object you already hold, and returns SAEBench's own :class:`AbsorptionEvalOutput` (same
JSON schema as ``sae_bench`` writes). It wraps, rather than calls,
``sae_bench.evals.absorption.main.run_eval`` because that function (sae-bench 0.6.0)

* always loads its LLM by name from the hub (main.py:62);
* writes ``artifacts/absorption/`` into the working directory (main.py:101) and leaves its
  probe caches inside site-packages (common.py:33, the building blocks' default dirs);
* keys probe caches by model name and layer only, and ``force`` does not retrain them
  (common.py:50-63), so a second model with the same name silently reuses the first's probe;
* skips an SAE whose result file exists (main.py:78) and ``break``s out of the loop when
  too few letters pass the ground-truth probe (main.py:111-118), reporting nothing;
* for SAE objects only *warns* when decoder rows are not unit-norm (general_utils.py:115),
  and the metric is then wrong (the planted 60 % reference SAE with decoder norms spread
  over 0.2 .. 5 scores 0.35);
* never applies ``config.random_seed``, and lists the vocabulary in hash-map order, so its
  probe split differs from run to run (see :func:`_sorted_saebench_vocabulary`);
* trains the k-sparse probes with ``k_sparse_probe_batch_size = 4096``: on a small
  vocabulary that is one optimiser step per epoch, and the planted clean reference SAE
  (true absorption 0) scores 0.65.

Everything here is what is needed to fix those and nothing more: all files go under one
output folder, probes are cached per model *fingerprint*, decoder norms are folded into a
copy of the SAE, the hook is checked, probe batches are scaled to the vocabulary, and the
result carries a verdict (:class:`AbsorptionAlarm`, stored in the output's
``eval_result_unstructured``) saying whether it can be trusted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import random
import re
import statistics
import sys
import textwrap
import warnings
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch
from sae_bench.evals.absorption import common as saebench_common
from sae_bench.evals.absorption import feature_absorption as saebench_feature_absorption
from sae_bench.evals.absorption.common import load_or_train_probe
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
from sae_bench.evals.absorption.prompting import create_icl_prompt
from sae_bench.evals.absorption.vocab import LETTERS, get_alpha_tokens
from sae_bench.sae_bench_utils import (
    general_utils,
    get_eval_uuid,
    get_sae_bench_version,
    get_sae_lens_version,
)
from sae_bench.sae_bench_utils.activation_collection import LLM_NAME_TO_DTYPE
from sae_lens import SAE
from sae_lens.constants import RUNNER_CFG_FILENAME
from sklearn.exceptions import UndefinedMetricWarning
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from orthosae_plugin.evals.alarm import (
    ALARM_KEY,
    NORM_TOLERANCE,
    AbsorptionAlarm,
    AlarmThresholds,
    SaeProvenance,
    assess_result,
    get_alarm,
)
from orthosae_plugin.evals.planted import PLANTED_MODEL_NAME, build_planted_model

__all__ = [
    "AbsorptionEvalError",
    "AlarmThresholds",
    "format_summary",
    "get_alarm",
    "load_model",
    "load_output",
    "main",
    "result_path",
    "run_absorption_eval",
]

RESID_POST_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
# SAEBench splits the alphabetic vocabulary 80/20 into probe train/test words
# (probing.py: create_dataset_probe_training, train_test_fraction=0.8).
SAEBENCH_TRAIN_FRACTION = 0.8
MIN_PROBE_STEPS_PER_EPOCH = 8
"""k-sparse probe batches are capped so that each epoch takes at least this many steps."""
PRECALC_MAX_BYTES = 2**30
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
    :class:`~orthosae_plugin.evals.planted.PlantedModelConfig`); any other name goes to
    ``HookedTransformer.from_pretrained_no_processing`` (the hub, or the local Hugging Face
    cache with ``HF_HUB_OFFLINE=1``), in SAEBench's dtype for that model unless given.
    """
    if name == PLANTED_MODEL_NAME:
        return build_planted_model(device=device).model
    dtype_str = dtype or LLM_NAME_TO_DTYPE.get(name, "float32")
    return HookedTransformer.from_pretrained_no_processing(
        name, device=device, dtype=general_utils.str_to_dtype(dtype_str)
    )


def training_steps_of(sae: SAE, sae_path: Path | None = None) -> tuple[int | None, str]:
    """The SAE's recorded number of training steps and where it was read from.

    Order: ``cfg.metadata.training_steps``; then SAELens's ``runner_cfg.json`` next to a
    saved SAE (``training_tokens // train_batch_size_tokens``); else unknown.
    """
    steps = sae.cfg.metadata.get("training_steps")
    if steps is not None:
        return int(steps), "cfg.metadata.training_steps"
    if sae_path is not None and (sae_path / RUNNER_CFG_FILENAME).exists():
        runner_cfg = json.loads((sae_path / RUNNER_CFG_FILENAME).read_text())
        tokens, batch = runner_cfg.get("training_tokens"), runner_cfg.get("train_batch_size_tokens")
        if tokens is not None and batch:
            source = f"{RUNNER_CFG_FILENAME} (training_tokens // train_batch_size_tokens)"
            return int(tokens) // int(batch), source
    return None, "unknown"


def check_hook(sae: SAE, model: HookedTransformer) -> int:
    """Return the layer SAEBench will read, or raise if it would read the wrong place.

    SAEBench reads activations at ``blocks.{layer}.hook_resid_post`` with ``layer`` the
    first number in the SAE's hook name (general_utils.py:296), so an SAE trained on any
    other hook would be evaluated on activations it never saw, without a word.
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

    SAEBench's default (-6) assumes " has the first letter:" is five tokens, as in Gemma's
    and GPT-2's tokenizers; with another tokenizer every activation would be read from the
    wrong token.
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


def fold_decoder_norms(sae: SAE) -> tuple[float, bool, str | None]:
    """Fold decoder norms into the encoder (in place) so that SAEBench's cosines and
    projections are taken against unit decoder rows, as its metric assumes.

    Returns (max |‖W_dec[i]‖ - 1| before folding, whether rows are unit-norm now, and the
    architecture's reason when it cannot be folded).
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

    SAEBench caches its ground-truth probe under ``{model_name}/layer_{L}`` only; this
    fingerprint goes into the cache path so that a different model with the same name (a
    fine-tune, another seed of a toy model) never reuses another model's probe. Per weight
    it hashes the name, shape, a strided sample of 1024 values and the float64 sum.
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


def probe_batch_size(config: AbsorptionEvalConfig, n_alpha_tokens: int) -> int:
    """``config.k_sparse_probe_batch_size``, lowered so that each epoch over the probe's
    training words takes at least MIN_PROBE_STEPS_PER_EPOCH steps.

    Unchanged (4096) from 40,960 alphabetic tokens up, so SAEBench-scale vocabularies get
    SAEBench's setting; 117 for the planted model's 1175. Measured there: at 4096 (one step
    per epoch) the clean reference SAE scores 0.65 instead of 0.0; from 470 (two steps)
    down, 0.0.
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


def _check_split_covers_letters(split_dir: Path) -> None:
    """Refuse a probe split in which a letter has no train or no test word.

    SAEBench fails deep inside for a letter without train words (KeyError at
    k_sparse_probing.py:283) and silently scores one without test words as probe F1 0
    (scikit-learn only warns); say so plainly instead.
    """
    for split in ("train", "test"):
        answers = pd.read_csv(split_dir / f"{split}_df.csv", keep_default_na=False)["answer"]
        present = {str(a).strip().lower() for a in answers}
        missing = [letter for letter in LETTERS if letter not in present]
        if missing:
            raise AbsorptionEvalError(
                f"letters {missing} have no {split} words in SAEBench's random 80/20 split of "
                f"the alphabetic vocabulary ({split_dir}); the model's vocabulary has too few "
                "tokens starting with them. Use config.random_seed to draw another split, "
                "or a model with a larger vocabulary."
            )


@contextlib.contextmanager
def _sorted_saebench_vocabulary():
    """Make SAEBench list the alphabetic vocabulary in sorted order while it runs.

    SAEBench lists it in ``tokenizer.vocab`` order (vocab.py:16), which for fast tokenizers
    comes from a Rust hash map and changes from call to call; its seeded 80/20 probe split
    (probing.py:276) and in-context examples then differ between runs with the same seed.
    """

    def sorted_alpha_tokens(tokenizer: Any, *args: Any, **kwargs: Any) -> list[str]:
        return sorted(get_alpha_tokens(tokenizer, *args, **kwargs))

    with (
        mock.patch.object(saebench_common, "get_alpha_tokens", sorted_alpha_tokens),
        mock.patch.object(saebench_feature_absorption, "get_alpha_tokens", sorted_alpha_tokens),
    ):
        yield


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    provenance = SaeProvenance(sae.cfg.d_in, sae.cfg.d_sae, steps, steps_source, deviation,
                               folded, fold_error, sae.cfg.metadata.model_name)
    sae = sae.to(device=device, dtype=model.cfg.dtype)
    general_utils._standardize_sae_cfg(sae.cfg)  # as SAEBench's own loader does

    n_alpha = len(get_alpha_tokens(model.tokenizer))  # type: ignore[arg-type]
    config = replace(
        config,
        model_name=model.cfg.model_name,
        llm_dtype=general_utils.dtype_to_str(model.cfg.dtype),
        k_sparse_probe_batch_size=probe_batch_size(config, n_alpha),
        precalc_k_sparse_probe_sae_acts=config.precalc_k_sparse_probe_sae_acts
        or precalc_fits(n_alpha, sae.cfg.d_sae),
    )
    with torch.enable_grad(), warnings.catch_warnings(), _sorted_saebench_vocabulary():
        # SAEBench trains probes (run_eval sets grad mode globally, main.py:44); sklearn
        # warns for every k-sparse probe that predicts no positives, which the alarm covers.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        table = _run_saebench_experiments(
            model, sae, layer, sae_name, config, output_dir, device, show_progress
        )
    alarm = assess_result(table, provenance, config, model.cfg.model_name, thresholds)
    output = _build_output(table, config, sae, sae_name, alarm)
    output.to_json_file(str(result_path(output_dir, sae_name)))
    return output


def _run_saebench_experiments(
    model: HookedTransformer, sae: SAE, layer: int, sae_name: str,
    config: AbsorptionEvalConfig, output_dir: Path, device: str, show_progress: bool,
) -> pd.DataFrame:
    """SAEBench's ground-truth probe, k-sparse probing and absorption experiments, with
    every path under `output_dir`; returns :func:`per_letter_table`."""
    fingerprint = model_fingerprint(
        model, config.prompt_template, config.prompt_token_pos, config.random_seed
    )
    probes_dir = output_dir / "probes" / f"{_safe(model.cfg.model_name)}-{fingerprint}"
    artifacts = output_dir / "artifacts"
    common = dict(
        model=model, sae=sae, layer=layer, sae_name=sae_name, max_k_value=config.max_k_value,
        prompt_template=config.prompt_template, prompt_token_pos=config.prompt_token_pos,
        device=device, probes_dir=probes_dir, force=True,  # per-SAE results: never stale
    )
    stages = tqdm(total=3, desc=f"absorption {sae_name}", disable=not show_progress)
    _seed_everything(config.random_seed)

    stages.set_postfix_str("ground-truth probe")
    load_or_train_probe(model, config.prompt_template, config.prompt_token_pos,
                        layer=layer, probes_dir=probes_dir, device=device)
    _check_split_covers_letters(probes_dir / model.cfg.model_name / f"layer_{layer}")
    stages.update()

    stages.set_postfix_str("k-sparse probes")
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
    return per_letter_table(metrics_df, _aggregate_results_df(raw_df), config)


def _build_output(table: pd.DataFrame, config: AbsorptionEvalConfig, sae: SAE,
                  sae_name: str, alarm: AbsorptionAlarm) -> AbsorptionEvalOutput:
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
        eval_result_unstructured={ALARM_KEY: asdict(alarm)},
    )


def _resolve_sae(sae: SAE | str | Path, device: str) -> tuple[SAE, Path | None]:
    if isinstance(sae, (str, Path)):
        path = Path(sae)
        if not (path / "cfg.json").exists():
            raise ValueError(
                f"sae={str(sae)!r} has no cfg.json; allowed: an SAE object or the folder of "
                "a saved SAELens SAE (cfg.json + sae_weights.safetensors)")
        return SAE.load_from_disk(path, device=device), path
    if not isinstance(sae, SAE):
        raise ValueError(f"sae is a {type(sae).__name__}; allowed: an SAELens SAE or a folder path")
    return copy.deepcopy(sae), None


def _default_sae_name(sae: SAE) -> str:
    return _safe(f"{sae.cfg.architecture()}_{sae.cfg.metadata.hook_name}_{sae.cfg.d_sae}")


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-]", "_", name)


# --------------------------------------------------------------------------- reporting


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
    if alarm.trustworthy:
        lines.append("verdict: TRUSTWORTHY (no alarm fired)")
    else:
        lines.append("!" * 78)
        lines.append("!!! verdict: UNTRUSTWORTHY -- do not report these numbers:")
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
    parser.add_argument("--training-steps", type=int, default=None,
                        help="override the SAE's recorded training steps for the alarm")
    parser.add_argument("--min-training-steps", type=int,
                        default=default_thresholds.min_training_steps,
                        help="alarm below this many recorded training steps (default "
                        f"{default_thresholds.min_training_steps})")
    parser.add_argument("--min-k1-probe-f1", type=float,
                        default=default_thresholds.min_k1_probe_f1,
                        help="alarm when most letters' best single latent has a lower F1 "
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
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        output = run_absorption_eval(
            args.sae, model, args.out, config, sae_name=args.name,
            training_steps=args.training_steps, thresholds=thresholds, device=args.device,
            show_progress=not args.quiet,
        )
    except (ValueError, AbsorptionEvalError) as error:
        print(f"orthosae-absorption: cannot evaluate: {error}", file=sys.stderr)
        return 1
    print(format_summary(output, result_path(args.out, output.sae_lens_release_id)))
    if args.strict and not get_alarm(output).trustworthy:
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
