"""Specification of ``orthosae_plugin.evals.absorption``: SAEBench's absorption eval on any
SAE and model, offline, every file in one folder, and an alarm for results that cannot be
trusted. End-to-end tests run on the planted first-letter model (tests/fixtures/planted.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import sae_bench
import numpy as np
import torch
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput
from sae_bench.evals.absorption.prompting import create_icl_prompt
from sae_bench.evals.absorption.vocab import get_alpha_tokens
from sae_lens import SAE, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from fixtures.planted import (  # noqa: F401  (pytest fixtures)
    FAST_CONFIG,
    one_torch_thread,
    planted,
    planted_other_seed,
    untrained_sae,
)
from orthosae_plugin.evals.absorption import (
    AbsorptionEvalError,
    fold_decoder_norms,
    format_summary,
    get_vocabulary,
    load_model,
    load_output,
    main,
    probe_batch_size,
    result_path,
    run_absorption_eval,
    run_absorption_eval_seeds,
)
from orthosae_plugin.evals.alarm import (
    AlarmThresholds,
    SaeProvenance,
    assess_result,
    get_alarm,
    random_alignment_level,
    single_direction_level,
)
from orthosae_plugin.evals.planted import (
    LETTERS,
    PlantedModelConfig,
    build_planted_model,
    build_reference_sae,
    load_planted_words,
)
from orthosae_plugin.evals.saebench_fixes import select_words

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ABSORBED_GROUPS = (0, 3, 6, 9)  # of 10: planted absorption rates 0, 0.3, 0.6, 0.9
CALIBRATION_TOLERANCE = {0: 0.01, 3: 0.01, 6: 0.01, 9: 0.05}
"""Measured absorption vs the planted share of the words SAEBench scored, per number of
absorbed groups. Exact up to 60 % (the tolerance only absorbs float sums). At 90 % the
letter latent fires on one word in ten, and SAEBench's k-sparse probe picks an absorbing
word latent as the main latent of 2 of 26 letters ('o', 'z'); the letter latent then
counts as an absorber of its own words, and the mean reads 0.917 for a planted 0.890."""
SCALED_FIELDS = ("model_name", "llm_dtype", "k_sparse_probe_batch_size",
                 "precalc_k_sparse_probe_sae_acts")


def listing(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def reference_runs(planted, tmp_path_factory):
    """The reference SAEs with 0, 3, 6 and 9 of 10 groups absorbed, evaluated into one output
    folder from an empty working directory. FAST_CONFIG trains fewer k-sparse probes than
    SAEBench's default (k <= 3, 20 epochs): the same scores here, in a fifth of the time;
    the default config runs end to end in the example's test."""
    cwd = tmp_path_factory.mktemp("cwd")
    out = tmp_path_factory.mktemp("results") / "absorption"
    site_packages_before = listing(Path(sae_bench.__file__).parent)
    with contextlib.chdir(cwd):
        outputs = {
            k: run_absorption_eval(
                build_reference_sae(planted, k), planted.model, out, FAST_CONFIG,
                sae_name=f"absorbed_{k}", show_progress=False,
            )
            for k in ABSORBED_GROUPS
        }
    return {
        "outputs": outputs, "out": out, "cwd": cwd,
        "site_packages_before": site_packages_before,
        "site_packages_after": listing(Path(sae_bench.__file__).parent),
    }


# ------------------------------------------------------------------ the planted model


def test_every_planted_word_is_one_token_and_every_letter_has_words(planted):
    words = load_planted_words()
    assert len(words) > 1000
    for word in words:
        assert planted.model.to_tokens(word, prepend_bos=False).shape == (1, 1), word
    assert {w[0] for w in words} == set(LETTERS)


def test_planted_residual_carries_the_first_letter_at_saebench_prompt_position(planted):
    vocab = get_alpha_tokens(planted.model.tokenizer)
    words = vocab[::50]
    prompts = [
        create_icl_prompt(w, examples=vocab, base_template="{word} has the first letter:",
                          max_icl_examples=10, prepend_separator_to_first_example=True).base
        for w in words
    ]
    _, cache = planted.model.run_with_cache(prompts, names_filter=planted.hook_name)
    acts_ND = cache[planted.hook_name][:, -6, :]  # SAEBench's default prompt_token_pos
    letter_proj_NL = acts_ND @ planted.letter_directions_LD.T
    expected_NL = torch.zeros_like(letter_proj_NL)
    expected_NL[torch.arange(len(words)), [LETTERS.index(w[0].lower()) for w in words]] = 1.0
    torch.testing.assert_close(letter_proj_NL, expected_NL * planted.config.letter_norm,
                               atol=0.25, rtol=0)


def test_reference_sae_letter_latent_is_silent_exactly_on_absorbed_groups(planted):
    absorbed_groups = 3
    sae = build_reference_sae(planted, absorbed_groups)
    ids = planted.alpha_token_ids
    feats_NS = sae.encode(planted.model.embed.W_E[ids])
    letter_acts_N = feats_NS[torch.arange(len(ids)), planted.token_letter_V[ids]]
    absorbed_N = planted.token_group_V[ids] < absorbed_groups
    assert (letter_acts_N[absorbed_N] == 0).all()
    assert (letter_acts_N[~absorbed_N] > 0.5 * planted.config.letter_norm).all()
    assert (sae.W_dec.norm(dim=-1) - 1).abs().max() < 1e-5


# ------------------------------------------------------------------ what the eval measures


def test_absorption_scores_come_out_in_order_and_near_the_planted_rates(
    reference_runs, planted
):
    scores = {
        k: out.eval_result_metrics.mean.mean_absorption_fraction_score
        for k, out in reference_runs["outputs"].items()
    }
    assert scores[0] < scores[3] < scores[6] < scores[9], scores
    for k in ABSORBED_GROUPS:
        assert abs(planted.planted_absorption_rate(k) - k / 10) < 0.01
        assert abs(scores[k] - k / 10) < 0.1, (k, scores)


def test_absorption_equals_the_planted_share_on_the_words_saebench_scored(
    reference_runs, planted
):
    # Every test word passes the ground-truth probe here (F1 = 1), so SAEBench scores
    # exactly its probe test split: the words in the cached split file.
    (test_split,) = (reference_runs["out"] / "probes").glob(
        f"{planted.config.model_name}-*/*/layer_0/test_df.csv")
    vocab = planted.model.tokenizer.get_vocab()
    words = pd.read_csv(test_split, keep_default_na=False)["token"]
    test_ids = torch.tensor([vocab[word] for word in words])
    for k, output in reference_runs["outputs"].items():
        if CALIBRATION_TOLERANCE[k] > 0.01:
            continue  # not exact by design: see CALIBRATION_TOLERANCE
        mean = output.eval_result_metrics.mean
        planted_share = planted.planted_absorption_rate(k, test_ids)
        assert mean.mean_absorption_fraction_score == pytest.approx(planted_share, abs=1e-6)
        # one absorbing latent per word: every absorbed word is fully absorbed
        assert mean.mean_full_absorption_score == pytest.approx(planted_share, abs=1e-6)


def test_reference_saes_are_trusted_and_the_clean_one_is_explained(reference_runs):
    for k, output in reference_runs["outputs"].items():
        alarm = get_alarm(output)
        assert alarm.trustworthy, (k, alarm.reasons)
        assert alarm.measured["n_letters_passing_gt_probe"] == 26
    clean = get_alarm(reference_runs["outputs"][0])
    assert any("clean dictionary" in note for note in clean.notes)


@pytest.mark.parametrize("absorbed_groups", ABSORBED_GROUPS)
def test_calibration_measures_the_planted_share_of_the_scored_words_and_is_trusted(
    reference_runs, planted, absorbed_groups
):
    name = f"absorbed_{absorbed_groups}"
    output = reference_runs["outputs"][absorbed_groups]
    # the words SAEBench scored: its per-word absorption table
    (scored_path,) = (reference_runs["out"] / "artifacts" / "feature_absorption" / name).glob(
        "*.parquet")
    vocab = planted.model.tokenizer.get_vocab()
    scored_ids = torch.tensor([vocab[w.strip()] for w in pd.read_parquet(scored_path)["token"]])
    planted_share = planted.planted_absorption_rate(absorbed_groups, scored_ids)
    measured = output.eval_result_metrics.mean.mean_absorption_fraction_score
    assert abs(measured - planted_share) <= CALIBRATION_TOLERANCE[absorbed_groups], (
        measured, planted_share)
    assert abs(planted_share - absorbed_groups / 10) < 0.1
    alarm = get_alarm(output)
    assert alarm.trustworthy, alarm.reasons
    assert alarm.measured["letters_not_carried_by_aligned_latents"] == ""


@pytest.mark.parametrize("geometry", [
    dict(d_model=128, letter_norm=0.5),   # letter weaker than the token part
    dict(d_model=576, token_norm=2.0),    # wide model, strong tokens: d_sae only 2.1x d_model
])
def test_heavy_absorption_is_trusted_and_measured_on_other_geometries_and_random_is_flagged(
        geometry, tmp_path):
    # 17 of 20 groups absorbed: 85 %. The weak-letter case was flagged by the aligned-share
    # rule at the best-of-d_sae level (absorbing decoders mix the letter with their token);
    # the evidence for every geometry is benchmarks/results/alarm_evidence/.
    planted = build_planted_model(PlantedModelConfig(n_groups=20, **geometry))
    output = run_absorption_eval(build_reference_sae(planted, 17), planted.model, tmp_path,
                                 FAST_CONFIG, sae_name="absorbing", show_progress=False)
    assert get_alarm(output).trustworthy, get_alarm(output).reasons
    measured = output.eval_result_metrics.mean.mean_absorption_fraction_score
    assert abs(measured - planted.planted_absorption_rate(17)) < 0.05
    d_sae = build_reference_sae(planted, 0).cfg.d_sae
    random_sae = StandardSAE(StandardSAEConfig(d_in=planted.config.d_model, d_sae=d_sae,
                                               metadata=SAEMetadata(
                                                   model_name=planted.config.model_name,
                                                   hook_name=planted.hook_name)))
    with torch.no_grad():
        dec_SD = torch.nn.functional.normalize(
            torch.randn(d_sae, planted.config.d_model, generator=torch.Generator().manual_seed(0)),
            dim=1)
        random_sae.W_dec.copy_(dec_SD)
        random_sae.W_enc.copy_(dec_SD.T)
        random_sae.b_enc.zero_()
    flagged = get_alarm(run_absorption_eval(random_sae, planted.model, tmp_path, FAST_CONFIG,
                                            sae_name="random", show_progress=False))
    assert not flagged.trustworthy
    assert any("carried by no latent aligned" in r for r in flagged.reasons)
    assert any("no latent among the 3" in r for r in flagged.reasons)


def test_results_land_only_in_the_output_folder(reference_runs):
    assert list(reference_runs["cwd"].iterdir()) == []
    assert reference_runs["site_packages_after"] == reference_runs["site_packages_before"]
    out = reference_runs["out"]
    for k in ABSORBED_GROUPS:
        assert result_path(out, f"absorbed_{k}").exists()
        assert (out / f"absorbed_{k}_custom_sae_k_sparse_probing.json").exists()
    assert {p.name for p in out.iterdir()} >= {"artifacts", "probes"}


def test_result_file_is_saebench_output_with_the_values_used(reference_runs, planted):
    output = reference_runs["outputs"][3]
    on_disk = load_output(result_path(reference_runs["out"], "absorbed_3"))
    assert isinstance(on_disk, AbsorptionEvalOutput)
    assert on_disk.eval_type_id == "absorption_first_letter"
    assert on_disk.eval_result_metrics == output.eval_result_metrics
    assert [d.first_letter for d in on_disk.eval_result_details] == list(LETTERS)
    assert on_disk.eval_config.model_name == planted.config.model_name
    n_alpha = len(get_alpha_tokens(planted.model.tokenizer))
    assert on_disk.eval_config.k_sparse_probe_batch_size == probe_batch_size(
        FAST_CONFIG, n_alpha
    )
    assert get_alarm(on_disk) == get_alarm(output)


def test_second_model_with_the_same_name_does_not_reuse_the_first_models_probe(
    reference_runs, planted, planted_other_seed, tmp_path
):
    assert planted_other_seed.model.cfg.model_name == planted.model.cfg.model_name
    sae = build_reference_sae(planted_other_seed, 3)
    shared = run_absorption_eval(sae, planted_other_seed.model, reference_runs["out"],
                                 FAST_CONFIG, sae_name="other_model", show_progress=False)
    fresh = run_absorption_eval(sae, planted_other_seed.model, tmp_path, FAST_CONFIG,
                                sae_name="other_model", show_progress=False)
    assert shared.eval_result_metrics == fresh.eval_result_metrics
    assert shared.eval_result_details == fresh.eval_result_details
    assert len(list((reference_runs["out"] / "probes").iterdir())) == 2


def test_k_sparse_probes_start_from_the_same_random_state_whether_the_probe_was_trained_or_loaded(
    planted, tmp_path, monkeypatch
):
    # Training the ground-truth probe draws random numbers, loading it does not; an SAE's
    # scores must not depend on which happened (on SmolLM2 one SAE scored 0.055 and 0.047).
    from orthosae_plugin.evals import absorption_eval as module

    states = []
    original = module.run_k_sparse_probing_experiment

    def recording(**kwargs):
        states.append((torch.random.get_rng_state().clone(), np.random.get_state()[1].copy()))
        return original(**kwargs)

    monkeypatch.setattr(module, "run_k_sparse_probing_experiment", recording)
    sae = build_reference_sae(planted, 3)
    for name in ("trains_the_probe", "loads_the_probe"):
        run_absorption_eval(sae, planted.model, tmp_path, FAST_CONFIG, sae_name=name, show_progress=False)
    (torch_trained, numpy_trained), (torch_loaded, numpy_loaded) = states
    assert torch.equal(torch_trained, torch_loaded)
    assert (numpy_trained == numpy_loaded).all()


def test_a_shared_forward_memo_runs_the_model_once_for_several_saes_and_changes_no_score(
    reference_runs, planted
):
    memo: dict = {}
    blocks_run = []
    handle = planted.model.blocks[0].register_forward_hook(lambda *args: blocks_run.append(1))
    try:
        first = run_absorption_eval(build_reference_sae(planted, 3), planted.model, reference_runs["out"],
                                    FAST_CONFIG, sae_name="memo_3", show_progress=False, forward_memo=memo)
        forwards_of_the_first = len(blocks_run)
        second = run_absorption_eval(build_reference_sae(planted, 6), planted.model, reference_runs["out"],
                                     FAST_CONFIG, sae_name="memo_6", show_progress=False, forward_memo=memo)
    finally:
        handle.remove()
    assert forwards_of_the_first > 0 and len(memo) > 0
    assert len(blocks_run) == forwards_of_the_first  # the second SAE's eval ran no forward
    for output, k in [(first, 3), (second, 6)]:
        assert output.eval_result_metrics == reference_runs["outputs"][k].eval_result_metrics
        assert output.eval_result_details == reference_runs["outputs"][k].eval_result_details


REPRODUCE = """
import json, random, sys
import torch
from fixtures.planted import FAST_CONFIG
from orthosae_plugin.evals.absorption import run_absorption_eval, get_alarm
from orthosae_plugin.evals.planted import build_planted_model, build_reference_sae, load_planted_words


def reproduce(out, threads):
    torch.set_num_threads(threads)
    random.seed(threads)  # the caller's own random state must not matter
    # words in hash order: PYTHONHASHSEED reorders them from process to process
    words = list(set(load_planted_words()))
    planted = build_planted_model(words=words)
    output = run_absorption_eval(build_reference_sae(planted, 6), planted.model, out,
                                 FAST_CONFIG, show_progress=False, words_per_letter=30, seed=7)
    result = {"mean": vars(output.eval_result_metrics.mean),
              "letters": [vars(d) for d in output.eval_result_details],
              "seed": output.eval_config.random_seed, "verdict": get_alarm(output).verdict,
              "vocabulary_seed": output.eval_result_unstructured["orthosae_vocabulary"]["seed"]}
    return json.dumps({"result": result, "word_order": words[:20]})
"""


def test_two_processes_with_different_hash_seeds_and_threads_give_identical_metrics(tmp_path):
    # Python's hash randomization reorders sets and str-keyed dicts between processes;
    # the eval (and the planted model built from a set of words) must not depend on it,
    # nor on the number of torch threads or on what the caller drew from `random` before.
    # One run in this process (its own hash seed, one thread), one at the same time in a
    # subprocess with another hash seed and two threads.
    tests_dir = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [tests_dir, str(Path(tests_dir).parent), os.environ.get("PYTHONPATH", "")])}
    other_hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    # OpenMP's waiting threads sleep rather than spin: on a shared machine a spinning second
    # thread made this run 2-3x slower (the results do not depend on it).
    child = subprocess.Popen(
        [sys.executable, "-c", REPRODUCE + "print(reproduce(sys.argv[1], 2))", str(tmp_path / "child")],
        env={**env, "PYTHONHASHSEED": other_hash_seed, "OMP_WAIT_POLICY": "PASSIVE"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    namespace: dict = {}
    exec(REPRODUCE, namespace)
    random_state, threads = random.getstate(), torch.get_num_threads()
    try:
        here = json.loads(namespace["reproduce"](str(tmp_path / "here"), 1))
    finally:
        random.setstate(random_state)
        torch.set_num_threads(threads)
    there = json.loads(child.communicate(timeout=600)[0].splitlines()[-1])
    assert here["word_order"] != there["word_order"]  # the two hash seeds did reorder the words
    first, second = here["result"], there["result"]
    assert first == second
    assert first["seed"] == first["vocabulary_seed"] == 7  # recorded in the result
    assert 0.4 < first["mean"]["mean_absorption_fraction_score"] < 0.8


def test_the_eval_leaves_the_callers_random_state_alone(planted, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_absorption_eval(untrained_sae(planted), planted.model, tmp_path, FAST_CONFIG,
                        show_progress=False, words_per_letter=30, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_decoder_norms_are_folded_into_a_copy_and_do_not_change_the_result(
    reference_runs, planted
):
    scaled = build_reference_sae(planted, 3)
    scale_S = torch.linspace(0.2, 5.0, scaled.cfg.d_sae)
    with torch.no_grad():  # the same SAE function, with decoder rows of norm 0.2 .. 5
        scaled.W_dec.mul_(scale_S[:, None])
        scaled.W_enc.div_(scale_S)
        scaled.b_enc.div_(scale_S)
    scaled_W_dec = scaled.W_dec.detach().clone()

    folded = run_absorption_eval(scaled, planted.model, reference_runs["out"], FAST_CONFIG,
                                 sae_name="scaled", show_progress=False)
    unit = reference_runs["outputs"][3].eval_result_metrics.mean
    assert folded.eval_result_metrics.mean.mean_absorption_fraction_score == pytest.approx(
        unit.mean_absorption_fraction_score, abs=1e-3)
    assert torch.equal(scaled.W_dec, scaled_W_dec)  # the caller's SAE is untouched
    assert any("folded" in note for note in get_alarm(folded).notes)


def test_untrained_sae_trips_the_alarm_and_strict_cli_exits_nonzero(planted, tmp_path, capsys):
    untrained_sae(planted).save_model(tmp_path / "untrained")  # no step count recorded
    status = main(["--sae", str(tmp_path / "untrained"), "--model", "planted-first-letter",
                   "--out", str(tmp_path / "out"), "--max-k-value", "3", "--strict", "--quiet"])
    printed = capsys.readouterr().out
    assert status == 2
    assert "UNTRUSTWORTHY" in printed
    alarm = get_alarm(load_output(result_path(tmp_path / "out", "untrained")))
    assert not alarm.trustworthy
    assert any("looks untrained" in reason for reason in alarm.reasons)


def test_example_trains_ortho_contrastive_and_gets_a_trusted_result(run_without_the_extra):
    # examples/absorption_eval.py --steps 1000, run by the session's process without the
    # [smollm2] extra (tests/fixtures/light_install.py), which the example does not need
    run = run_without_the_extra
    assert run["returncode"] == 0 and run["report"]["example_status"] == 0, run["stdout"][-3000:] + run["stderr"][-3000:]
    assert "verdict: TRUSTWORTHY" in run["stdout"]
    output = load_output(result_path(run["example_out"] / "absorption", "sae"))
    assert output.eval_config == replace(
        AbsorptionEvalConfig(), **{f: getattr(output.eval_config, f) for f in SCALED_FIELDS}
    )  # SAEBench's default config, except what the eval sets from the model
    assert get_alarm(output).measured["training_steps"] == 1000


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "hook_name",
    ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.0.hook_mlp_out",
     "blocks.1.hook_resid_post", None],
)
def test_sae_at_a_hook_the_eval_cannot_read_is_refused_before_any_file_is_written(
    planted, tmp_path, hook_name
):
    sae = untrained_sae(planted)
    sae.cfg.metadata.hook_name = hook_name
    with pytest.raises(ValueError, match="hook_name"):
        run_absorption_eval(sae, planted.model, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_resid_pre_refusal_names_the_equivalent_resid_post(planted, tmp_path):
    sae = untrained_sae(planted)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"  # the planted model has 1 block
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_resid_post"):
        run_absorption_eval(sae, planted.model, tmp_path, show_progress=False)


def test_sae_of_another_width_is_refused(planted, tmp_path):
    metadata = SAEMetadata(model_name=planted.config.model_name, hook_name=planted.hook_name)
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=256, metadata=metadata))
    with pytest.raises(ValueError, match="d_in=64"):
        run_absorption_eval(sae, planted.model, tmp_path / "out", show_progress=False)


def test_prompt_position_that_misses_the_word_is_refused(planted, tmp_path):
    config = AbsorptionEvalConfig(prompt_token_pos=-5)
    with pytest.raises(ValueError, match="prompt_token_pos=-5"):
        run_absorption_eval(untrained_sae(planted), planted.model, tmp_path, config,
                            show_progress=False)


def test_cli_reports_a_refusal_with_status_1(planted, tmp_path, capsys):
    sae = untrained_sae(planted)
    sae.cfg.metadata.hook_name = "blocks.0.hook_mlp_out"
    sae.save_model(tmp_path / "sae")
    status = main(["--sae", str(tmp_path / "sae"), "--model", "planted-first-letter",
                   "--out", str(tmp_path / "out"), "--quiet"])
    assert status == 1
    assert "hook_mlp_out" in capsys.readouterr().err


def test_letter_without_test_words_is_reported_not_crashed(tmp_path):
    # 'x' has a single alphabetic token (the answer token "X"): it cannot be in both splits
    words = [w for w in load_planted_words() if not w.startswith("x")][::4]
    small = build_planted_model(words=words)
    sae = untrained_sae(small)
    with pytest.raises(AbsorptionEvalError, match=r"letters \[.*'x'.*\] have no"):
        run_absorption_eval(sae, small.model, tmp_path, FAST_CONFIG, show_progress=False)


# ------------------------------------------------------------------ the alarm's rules


def per_letter(gt=1.0, k1=1.0, cos=1.0, absorption=0.2, full=0.1, split=1,
               carried=1.0, best=None) -> pd.DataFrame:
    return pd.DataFrame({
        "letter": list(LETTERS), "gt_probe_f1": gt, "k1_probe_f1": k1,
        "k1_decoder_probe_cos": cos, "best_decoder_probe_cos": cos if best is None else best,
        "mean_absorption_fraction": absorption,
        "full_absorption_rate": full, "num_split_features": split,
        "aligned_projection_share": carried,
    })


def provenance(**changes) -> SaeProvenance:
    values = dict(d_in=2304, d_sae=16384, training_steps=50_000,
                  training_steps_source="cfg.metadata.training_steps",
                  max_decoder_norm_deviation=0.0, decoder_norms_folded=True,
                  fold_error=None, sae_model_name="gemma-2-2b")
    return SaeProvenance(**{**values, **changes})


def assess(table=None, **changes):
    return assess_result(per_letter() if table is None else table, provenance(**changes),
                         AbsorptionEvalConfig(), "gemma-2-2b")


def test_alarm_is_quiet_on_a_plausible_result():
    alarm = assess()
    assert alarm.trustworthy and alarm.reasons == []


@pytest.mark.parametrize(
    "table, changes, reason",
    [
        (None, {"training_steps": 4}, "trained for 4 steps"),
        (None, {"decoder_norms_folded": False, "max_decoder_norm_deviation": 0.7,
                "fold_error": "TopK"}, "could not be folded"),
        (per_letter(gt=[0.9] * 10 + [0.3] * 16), {}, "only 10 of 26 letters"),
        (per_letter(carried=[0.1] * 14 + [0.9] * 12), {},
         "14 of 26 scored letters are carried by no latent aligned"),
        (None, {"training_steps": 300, "warm_up_steps": {"contrastive_warm_up_steps": 1000}},
         "before its run's warm-ups ended (contrastive_warm_up_steps=1000)"),
        (per_letter(cos=0.05), {}, "the dictionary looks untrained"),
        (per_letter(k1=0.6, absorption=0.0, full=0.0, split=1), {}, "exactly 0 absorption"),
        (None, {"sae_model_name": "gemma-2-9b"}, "trained on 'gemma-2-9b'"),
    ],
)
def test_alarm_fires_with_a_reason(table, changes, reason):
    alarm = assess(table, **changes)
    assert not alarm.trustworthy
    assert any(reason in r for r in alarm.reasons), alarm.reasons


def test_heavy_absorption_with_aligned_latents_is_not_an_alarm():
    # The 90 % reference SAE: the letter latent misses 90 % of its words (k=1 F1 ~0.14),
    # but the letter and the absorbing latents are aligned with the probe and carry it.
    alarm = assess(per_letter(k1=0.14, cos=0.76, carried=0.99, absorption=0.9, full=0.9))
    assert alarm.trustworthy, alarm.reasons
    assert any("heavy absorption alone" in note for note in alarm.notes)


def test_an_absorbing_main_latent_is_not_an_alarm_when_a_ranked_latent_is_aligned():
    # Heavy absorption with a weak letter direction: SAEBench's k=1 latent is an absorbing
    # latent, mostly token direction (cosine 0.1 with the probe, below the random level
    # 0.11 of 2304 x 16384); the letter latent ranks among the k-sparse probe's top
    # latents, aligned (0.8). Only when no ranked latent is aligned does the rule fire.
    table = per_letter(k1=0.1, cos=0.1, best=0.8, absorption=0.85, full=0.85)
    assert assess(table).trustworthy, assess(table).reasons
    unaligned = assess(per_letter(cos=0.1, best=0.1))
    assert any("no latent among the 10 that SAEBench's k-sparse probe ranks" in r
               for r in unaligned.reasons), unaligned.reasons


def test_steps_after_the_warm_ups_are_trusted_and_a_checkpoint_is_noted():
    # issue 9's real SmolLM2 SAEs: 586 steps, trustworthy (the old floor was 1000)
    assert assess(training_steps=586).trustworthy
    checkpoint = assess(training_steps=1100, planned_steps=1200,
                        warm_up_steps={"contrastive_warm_up_steps": 1000, "l1_warm_up_steps": 0})
    assert checkpoint.trustworthy, checkpoint.reasons
    assert any("1100 of its run's 1200 planned steps" in note for note in checkpoint.notes)


def test_exact_zero_absorption_is_believed_only_with_near_perfect_letter_latents():
    clean = assess(per_letter(k1=0.97, absorption=0.0, full=0.0, split=1))
    assert clean.trustworthy
    assert any("clean dictionary" in note for note in clean.notes)


def test_unknown_step_count_is_a_note_not_a_reason():
    alarm = assess(training_steps=None, training_steps_source="unknown")
    assert alarm.trustworthy
    assert any("training steps is unknown" in note for note in alarm.notes)


def test_model_names_from_saelens_and_transformerlens_are_matched():
    assert assess(sae_model_name="google/gemma-2-2b").trustworthy
    assert assess(sae_model_name="gemma-2b").reasons  # another model


def test_alarm_thresholds_are_configurable():
    alarm = assess_result(per_letter(), provenance(training_steps=4),
                          AbsorptionEvalConfig(), "gemma-2-2b",
                          AlarmThresholds(min_training_steps=1))
    assert alarm.trustworthy


def test_random_alignment_level_is_what_random_directions_exceed_rarely():
    d_in, d_sae = 64, 256
    generator = torch.Generator().manual_seed(0)
    probe_D = torch.nn.functional.normalize(torch.randn(d_in, generator=generator), dim=0)
    best = []
    for _ in range(200):
        dec_SD = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=generator), dim=1)
        best.append((dec_SD @ probe_D).max().item())
    level = random_alignment_level(d_in, d_sae, p_value=0.01)
    assert sum(b > level for b in best) <= 0.01 * len(best) + 2
    assert level < 1.5 * max(best)  # a bound, not a vacuous one


def test_single_direction_level_is_what_one_random_direction_exceeds_rarely():
    d_in = 64
    generator = torch.Generator().manual_seed(0)
    probe_D = torch.nn.functional.normalize(torch.randn(d_in, generator=generator), dim=0)
    dec_ND = torch.nn.functional.normalize(torch.randn(20_000, d_in, generator=generator), dim=1)
    cos_N = (dec_ND @ probe_D).abs()
    level = single_direction_level(d_in, p_value=0.01)
    assert (cos_N > level).float().mean() <= 0.01
    assert (cos_N > level / 1.5).float().mean() > 0.01  # a bound, not a vacuous one


# ------------------------------------------------------------------ inputs and settings


def test_probe_batch_size_gives_enough_steps_on_small_vocabularies_only():
    config = AbsorptionEvalConfig()
    assert probe_batch_size(config, 1175) == 117  # the planted model: 940 train words
    assert probe_batch_size(config, 40_960) == config.k_sparse_probe_batch_size


def test_unfoldable_decoder_norms_are_reported():
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=4, metadata=SAEMetadata()))
    with torch.no_grad():
        sae.W_dec.copy_(3.0 * torch.nn.functional.normalize(sae.W_dec, dim=-1))
    deviation, folded, error = fold_decoder_norms(sae)
    assert not folded and math.isclose(deviation, 2.0, abs_tol=1e-4) and "TopK" in error


def test_example_gemma_form_builds_a_valid_config_without_running(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "absorption_example", Path(__file__).parents[1] / "examples" / "absorption_eval.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    built = {}

    class NoGemmaHere:  # the real runner would download Gemma-2-2B
        def __init__(self, cfg, **kwargs):
            built["cfg"] = cfg
            self.model = "the runner's model"

        def run(self):
            return None

    monkeypatch.setattr(example, "LanguageModelSAETrainingRunner", NoGemmaHere)
    sae_path, model = example.train_on_gemma(tmp_path, training_tokens=40_960_000, d_sae=16384)
    cfg = built["cfg"]
    assert cfg.model_name == "gemma-2-2b"
    assert (cfg.hook_name, cfg.sae.d_in) == ("blocks.19.hook_resid_post", 2304)
    assert cfg.sae.ortho_anneal_steps == 10_000  # the run's real length
    assert (sae_path, model) == (tmp_path / "sae", "the runner's model")


# ------------------------------------------------------------------ command-line errors


def cli_error(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI with `args` on the planted model; (status, stderr)."""
    argv = ["--model", "planted-first-letter", "--quiet", *args]
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.err


def assert_one_line_naming(err: str, *names: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.fixture
def saved_sae(planted, tmp_path) -> Path:
    untrained_sae(planted).save_model(tmp_path / "sae")
    return tmp_path / "sae"


def test_cli_out_that_is_a_file_is_one_line_with_status_1(saved_sae, tmp_path, capsys):
    out = tmp_path / "results.json"
    out.write_text("{}")
    status, err = cli_error(capsys, "--sae", str(saved_sae), "--out", str(out))
    assert status == 1
    assert_one_line_naming(err, str(out), "is a file")
    status, err = cli_error(capsys, "--sae", str(saved_sae), "--out", str(out / "sub"))
    assert status == 1
    assert_one_line_naming(err, str(out), "is a file")


def test_cli_read_only_out_is_one_line_with_status_1(saved_sae, tmp_path, capsys, monkeypatch):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: make the write probe fail as it would
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(out))
        monkeypatch.setattr("orthosae_plugin.evals.absorption_cli.tempfile.TemporaryFile", refuse)
    try:
        status, err = cli_error(capsys, "--sae", str(saved_sae), "--out", str(out / "new"))
    finally:
        out.chmod(0o700)
    assert status == 1
    assert_one_line_naming(err, str(out), "cannot write", "Permission denied")
    assert not (out / "new").exists()


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda sae: (sae / "cfg.json").write_text('{"d_in": 128, "d_sae"'), "not readable JSON"),
        (lambda sae: (sae / "cfg.json").write_text('{"d_in": 128}'), "SAELens cannot load"),
        (lambda sae: (sae / "cfg.json").unlink(), "missing"),
        (lambda sae: (sae / "sae_weights.safetensors").unlink(), "SAELens cannot load"),
    ],
    ids=["corrupt-json", "incomplete-cfg", "missing-cfg", "missing-weights"],
)
def test_cli_bad_sae_folder_is_one_line_naming_the_file_with_status_1(
    saved_sae, tmp_path, capsys, damage, problem
):
    damage(saved_sae)
    status, err = cli_error(capsys, "--sae", str(saved_sae), "--out", str(tmp_path / "out"))
    assert status == 1
    assert_one_line_naming(err, str(saved_sae), problem)


def test_cli_missing_sae_folder_is_one_line_with_status_1(tmp_path, capsys):
    status, err = cli_error(capsys, "--sae", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert status == 1
    assert_one_line_naming(err, str(tmp_path / "nope"), "does not exist")


def test_cli_unknown_model_is_one_line_with_status_1(saved_sae, tmp_path, capsys):
    status = main(["--sae", str(saved_sae), "--model", "not-a-model", "--out",
                   str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 1
    assert_one_line_naming(err, "'not-a-model'", "unknown model", "planted-first-letter")


def test_cli_model_of_another_width_is_one_line_with_status_1(planted, tmp_path, capsys):
    metadata = SAEMetadata(model_name=planted.config.model_name, hook_name=planted.hook_name)
    StandardSAE(StandardSAEConfig(d_in=64, d_sae=256, metadata=metadata)).save_model(
        tmp_path / "sae")
    status, err = cli_error(capsys, "--sae", str(tmp_path / "sae"), "--out",
                            str(tmp_path / "out"))
    assert status == 1
    assert_one_line_naming(err, "d_in=64", "d_model=128")


# ------------------------------------------------------------------ real vocabularies


def test_words_per_letter_probes_a_recorded_seeded_subsample(planted, tmp_path, capsys):
    # Up to 40 of the planted model's 17-70 words per letter. SAEBench's random 80/20
    # split of the whole vocabulary can leave a letter with few words (z: 17) without test
    # words (a clear AbsorptionEvalError); seeds 1 and 3 split every letter.
    sae = build_reference_sae(planted, 3)
    runs = {
        (wpl, seed): run_absorption_eval(
            sae, planted.model, tmp_path / f"{wpl}-{seed}",
            replace(FAST_CONFIG, random_seed=seed), sae_name="sae",
            show_progress=False, words_per_letter=wpl)
        for wpl, seed in [(None, 42), (40, 1), (40, 3)]
    }
    n_alpha = len(get_alpha_tokens(planted.model.tokenizer))

    def probed_words(wpl, seed) -> list[str]:
        (split_dir,) = (tmp_path / f"{wpl}-{seed}" / "probes").glob("*/*/layer_0")
        return sorted(str(w) for split in ("train", "test") for w in
                      pd.read_csv(split_dir / f"{split}_df.csv", keep_default_na=False)["token"])

    full = get_vocabulary(runs[None, 42])
    assert (full.words_per_letter, full.n_words_probed) == (None, n_alpha)
    sub = get_vocabulary(load_output(result_path(tmp_path / "40-1", "sae")))
    assert sub.words_per_letter == 40 and sub.seed == 1
    assert sub.n_words_probed == sum(sub.words_per_letter_probed.values()) < n_alpha
    assert max(sub.words_per_letter_probed.values()) == 40
    assert len(probed_words(40, 1)) == sub.n_words_probed  # SAEBench probed only those
    assert len(probed_words(None, 42)) == n_alpha
    # seeded: the same seed draws the same words, another seed others
    assert select_words(get_alpha_tokens(planted.model.tokenizer), 40, 1) == probed_words(40, 1)
    assert probed_words(40, 3) != probed_words(40, 1)
    # the subsample is named in the printed verdict
    summary = format_summary(runs[40, 1])
    assert "verdict: TRUSTWORTHY" in summary
    assert "seeded subsample of 40 words per letter" in " ".join(summary.split())
    assert "full alphabetic vocabulary" in " ".join(format_summary(runs[None, 42]).split())
    # and measures the planted share on what it scored, within the calibration tolerance
    assert get_alarm(runs[40, 1]).trustworthy
    assert abs(runs[40, 1].eval_result_metrics.mean.mean_absorption_fraction_score - 0.3) < 0.1


def test_cli_words_per_letter(planted, tmp_path, capsys):
    build_reference_sae(planted, 3).save_model(tmp_path / "sae")
    status = main(["--sae", str(tmp_path / "sae"), "--model", "planted-first-letter", "--out",
                   str(tmp_path / "out"), "--words-per-letter", "40", "--seed", "1",
                   "--max-k-value", "3",
                   "--quiet"])
    assert status == 0
    assert "seeded subsample of 40 words" in " ".join(capsys.readouterr().out.split())
    output = load_output(result_path(tmp_path / "out", "sae"))
    assert output.eval_result_unstructured["orthosae_vocabulary"]["words_per_letter"] == 40


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_words_per_letter_must_be_a_positive_integer(planted, tmp_path, bad):
    with pytest.raises(ValueError, match="words_per_letter"):
        run_absorption_eval(untrained_sae(planted), planted.model, tmp_path,
                            show_progress=False, words_per_letter=bad)


def test_smollm2_name_loads_through_the_package_loader(monkeypatch):
    calls = []

    def fake_load_smollm2(device="cpu", dtype=torch.float32):
        calls.append((device, dtype))
        return "the SmolLM2 HookedTransformer"

    monkeypatch.setattr("orthosae_plugin.smollm2.model.load_smollm2", fake_load_smollm2)
    assert load_model("smollm2-135m-instruct-q4_1") == "the SmolLM2 HookedTransformer"
    assert load_model("smollm2-135m-instruct-q4_1", dtype="bfloat16") is not None
    assert calls == [("cpu", torch.float32), ("cpu", torch.bfloat16)]

    def broken(device="cpu", dtype=torch.float32):
        raise FileNotFoundError("no GGUF; run: python -m orthosae_plugin.smollm2 fetch\nmore")

    monkeypatch.setattr("orthosae_plugin.smollm2.model.load_smollm2", broken)
    with pytest.raises(ValueError, match=r"'smollm2-135m-instruct-q4_1': cannot load it: no GGUF"):
        load_model("smollm2-135m-instruct-q4_1")


# ------------------------------------------------------------------ eval seeds


def test_eval_seeds_report_every_metrics_spread_and_each_seed_is_the_single_eval(
        planted, tmp_path, capsys):
    sae_dir = tmp_path / "sae"
    build_reference_sae(planted, 3).save_model(sae_dir)
    status = main(["--sae", str(sae_dir), "--model", "planted-first-letter", "--out",
                   str(tmp_path / "out"), "--words-per-letter", "30", "--seed", "7",
                   "--eval-seeds", "2", "--max-k-value", "3", "--quiet"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "2 eval seeds (7..8)" in printed and "mean_absorption_fraction_score" in printed
    summary = json.loads((tmp_path / "out" / "sae_orthosae_eval_seeds.json").read_text())
    assert summary["seeds"] == [7, 8]
    per_seed = [load_output(path) for path in summary["result_files"]]
    assert [o.eval_config.random_seed for o in per_seed] == [7, 8]
    for name, spread in summary["metrics"].items():
        if name == "n_letters_scored":
            values = [len(o.eval_result_details) for o in per_seed]
        else:
            values = [getattr(o.eval_result_metrics.mean, name) for o in per_seed]
        assert spread["values"] == pytest.approx(values)
        assert spread["mean"] == pytest.approx(sum(values) / 2)
        assert spread["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    # seeds draw different words, so the absorption differs between them ...
    absorption = summary["metrics"]["mean_absorption_fraction_score"]["values"]
    assert absorption[0] != absorption[1]
    # ... and a seed's eval is exactly the single eval with that seed
    single = run_absorption_eval(sae_dir, planted.model, tmp_path / "single",
                                 AbsorptionEvalConfig(max_k_value=3), seed=8,
                                 words_per_letter=30, show_progress=False)
    assert single.eval_result_metrics.mean == per_seed[1].eval_result_metrics.mean


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_eval_seeds_must_be_a_positive_integer(planted, tmp_path, bad):
    with pytest.raises(ValueError, match="n_seeds"):
        run_absorption_eval_seeds(untrained_sae(planted), planted.model, tmp_path,
                                  n_seeds=bad, show_progress=False)


def test_a_seed_with_nothing_to_score_is_recorded_and_left_out_of_the_spread(
        planted, tmp_path, monkeypatch):
    from orthosae_plugin.evals import absorption_eval as module

    original = module.run_absorption_eval

    def second_seed_fails(*args, seed, **kwargs):
        if seed == 8:
            raise AbsorptionEvalError("letters ['u'] have no test words")
        return original(*args, seed=seed, **kwargs)

    monkeypatch.setattr(module, "run_absorption_eval", second_seed_fails)
    spread = run_absorption_eval_seeds(build_reference_sae(planted, 3), planted.model, tmp_path,
                                       FAST_CONFIG, n_seeds=2, seed=7, words_per_letter=30,
                                       show_progress=False)
    assert spread.seeds == [7] and list(spread.failed_seeds) == [8]
    assert "no test words" in spread.failed_seeds[8]
    assert spread.metrics["mean_absorption_fraction_score"].std == 0.0
    monkeypatch.setattr(module, "run_absorption_eval", lambda *a, **k: second_seed_fails(
        *a, **{**k, "seed": 8}))
    with pytest.raises(AbsorptionEvalError, match="no eval seed gave a result"):
        run_absorption_eval_seeds(build_reference_sae(planted, 3), planted.model, tmp_path,
                                  FAST_CONFIG, n_seeds=2, show_progress=False)
