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
The verdict on whether a result can be trusted is :mod:`orthosae_plugin.evals.alarm`;
:func:`run_absorption_eval_seeds` repeats the eval over several eval seeds and reports the
spread of every metric (the measurement's own noise).

Reproducible: one ``seed`` fixes every random draw on the eval's path (the vocabulary
subsample, SAEBench's 80/20 split and in-context examples, probe initialisation and batch
order); the word lists are sorted before anything is drawn from them, so Python's hash
randomization cannot reorder them; the caller's random states are restored afterwards. The
same SAE, model and settings give the same numbers in every process.

Real vocabularies: SAEBench probes every alphabetic token (47,078 for SmolLM2's 49k
vocabulary: ~4M tokens of forward passes). ``words_per_letter=100`` probes a seeded
subsample of at most 100 words per first letter instead (ground-truth probe F1 0.80 mean
at SmolLM2 layer 15, 25 of 26 letters above 0.6; 40 per letter was too few, 17 of 26); the
choice is recorded in the result (``eval_result_unstructured["orthosae_vocabulary"]``) and
named in the printed verdict.

Loading a model by name is :mod:`orthosae_plugin.evals.models`; the printed summary is
:mod:`orthosae_plugin.evals.absorption_report`; the command line ``orthosae-absorption``
is :mod:`orthosae_plugin.evals.absorption_cli`. :mod:`orthosae_plugin.evals.absorption`
gathers the public names of all four.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sae_bench.evals.absorption.common import (
    load_or_train_probe,
    load_probe,
    load_probe_data_split,
)
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput
from sae_bench.evals.absorption.feature_absorption import run_feature_absortion_experiment
from sae_bench.evals.absorption.k_sparse_probing import run_k_sparse_probing_experiment
from sae_bench.evals.absorption.main import _aggregate_results_df
from sae_bench.sae_bench_utils import general_utils
from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME
from sklearn.exceptions import UndefinedMetricWarning
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from orthosae_plugin.evals.absorption_report import (
    EvalSpread,
    build_output,
    format_summary,
    get_vocabulary,
    load_output,
)
from orthosae_plugin.evals.alarm import (
    AlarmThresholds,
    SaeProvenance,
    assess_result,
    get_alarm,
    single_direction_level,
)
from orthosae_plugin.evals.letters import letter_projection_carried, per_letter_table
from orthosae_plugin.evals.models import load_model
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
    seeded,
    stop_after_layer,
)
from orthosae_plugin.evals.steps import run_schedule, training_steps_of

EVAL_SEEDS_KEY = "orthosae_eval_seeds"
"""File-name suffix of :func:`run_absorption_eval_seeds`'s summary JSON."""



class AbsorptionEvalError(RuntimeError):
    """The eval ran but has no absorption number to report (the reason is in the message)."""


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
    seed: int | None = None,
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
            letter (seeded by the eval seed) instead of SAEBench's full alphabetic
            vocabulary (None, the default). For real vocabularies: 100 is what earlier runs
            measured to keep the ground-truth probe (F1 0.80 mean on SmolLM2, 25/26
            letters > 0.6); 40 was too few. Recorded in the output
            (``eval_result_unstructured["orthosae_vocabulary"]``) and in the summary.
        forward_memo: a dict to keep SAEBench's model forwards in. Pass the same dict to the
            evals of several SAEs of the same model (and layer): the forwards do not depend
            on the SAE, so they run once (the real-model benchmark does this). It holds the
            layer's activations for every prompt (at 100 words per letter on SmolLM2, a few
            hundred MB); never share one between models.
        seed: the eval seed; every random draw of the eval comes from it (vocabulary
            subsample, 80/20 split, in-context examples, probe initialisation and batch
            order). Replaces ``config.random_seed`` (SAEBench's default 42 when None) and is
            recorded in the output as ``eval_config.random_seed``. The same SAE, model,
            settings and seed give the same metrics in every process.

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
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r}; allowed: an integer (or None: "
                             f"config.random_seed={config.random_seed})")
        config = replace(config, random_seed=seed)
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
    with seeded(config.random_seed):  # it draws in-context examples
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
        seeded(config.random_seed),
    ):
        # SAEBench trains probes (run_eval sets grad mode globally, main.py:44); sklearn
        # warns for every k-sparse probe that predicts no positives, which the alarm covers.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        table = _run_saebench_experiments(
            model, sae, layer, sae_name, config, output_dir, device, show_progress, vocab,
            single_direction_level(sae.cfg.d_in,
                                   (thresholds or AlarmThresholds()).alignment_p_value),
        )
    alarm = assess_result(table, provenance, config, model.cfg.model_name, thresholds)
    output = build_output(table, config, sae, sae_name, alarm, vocab)
    output.to_json_file(str(result_path(output_dir, sae_name)))
    return output


def run_absorption_eval_seeds(
    sae: SAE | str | Path,
    model: HookedTransformer | str,
    output_dir: str | Path,
    config: AbsorptionEvalConfig | None = None,
    *,
    n_seeds: int,
    seed: int | None = None,
    sae_name: str | None = None,
    **kwargs: Any,
) -> EvalSpread:
    """The eval repeated with `n_seeds` eval seeds (`seed`, `seed` + 1, ...; `seed` defaults
    to ``config.random_seed``): mean and spread of every metric over the seeds.

    Each seed draws every seeded part again (vocabulary subsample, 80/20 split, in-context
    examples, ground-truth and k-sparse probes), so the spread is the measurement's own
    noise on this SAE; a difference between two SAEs smaller than about twice it is not
    resolved. A seed whose eval has nothing to score (:class:`AbsorptionEvalError`, e.g. a
    letter left without test words by its split) is recorded in ``failed_seeds`` and left
    out of the spread; when every seed fails, that error is raised. Each seed costs one eval, ground-truth probe included (its forwards do not
    carry over: the prompts differ). Results: ``{sae_name}-seed{S}`` per seed (as
    :func:`run_absorption_eval` writes them) and ``{sae_name}_orthosae_eval_seeds.json``
    (the returned :class:`EvalSpread`). Other keyword arguments go to
    :func:`run_absorption_eval`.
    """
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"n_seeds={n_seeds!r}; allowed: an integer >= 1")
    config = config or AbsorptionEvalConfig()
    first = config.random_seed if seed is None else seed
    if isinstance(model, str):
        model = load_model(model, device=kwargs.get("device") or "cpu")
    if sae_name is None:
        sae_name = (Path(sae).name if isinstance(sae, (str, Path))
                    else _default_sae_name(sae) if isinstance(sae, SAE) else "sae")
    output_dir = Path(output_dir)
    seeds, outputs, failed = [], [], {}
    for s in range(first, first + n_seeds):
        try:
            outputs.append(run_absorption_eval(sae, model, output_dir, config, seed=s,
                                               sae_name=f"{sae_name}-seed{s}", **kwargs))
            seeds.append(s)
        except AbsorptionEvalError as error:  # e.g. a letter without test words
            failed[s] = str(error)
    if not outputs:
        raise AbsorptionEvalError(f"no eval seed gave a result: {failed}")
    files = [str(result_path(output_dir, o.sae_lens_release_id)) for o in outputs]
    spread = EvalSpread.of(sae_name, seeds, outputs, files, failed)
    (output_dir / f"{sae_name}_{EVAL_SEEDS_KEY}.json").write_text(
        json.dumps(asdict(spread), indent=1))
    return spread


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


def result_path(output_dir: str | Path, sae_name: str) -> Path:
    """Where :func:`run_absorption_eval` writes the result JSON (SAEBench's file name)."""
    return Path(general_utils.get_results_filepath(str(output_dir), sae_name, "custom_sae"))


