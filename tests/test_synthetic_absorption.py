"""Ground-truth absorption on synthetic hierarchies: the metric on hand-built SAEs with
known absorption, and a tiny run of the benchmark end to end."""

import json
import math
from dataclasses import replace

import pytest
import torch
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from sae_lens.synthetic import (
    ConstantFiringProbabilityConfig,
    FeatureDictionary,
    Hierarchy,
    HierarchyNode,
    SyntheticModel,
    SyntheticModelConfig,
    hierarchy_modifier,
    mean_correlation_coefficient,
)
from torch.testing import assert_close

from benchmarks import synthetic_absorption as bench
from benchmarks import sweep
from orthosae_plugin.evals.synthetic import (
    SyntheticAbsorptionConfig,
    effective_decoder,
    parent_child_pairs,
    synthetic_absorption,
)

# Features 0..3 are the first four basis vectors of R^8. Feature 0 is the parent of
# features 1 and 2, which are mutually exclusive (so a sample holds at most one child);
# feature 3 is free. Every feature fires with probability 0.5 (children: given the
# parent) and magnitude 1.
PARENT, CHILD_A, CHILD_B, FREE = 0, 1, 2, 3
N_FEATURES, D_IN = 4, 8
F_FD = torch.eye(N_FEATURES, D_IN)


def planted_model() -> SyntheticModel:
    roots = [
        HierarchyNode(PARENT, [HierarchyNode(CHILD_A), HierarchyNode(CHILD_B)],
                      mutually_exclusive_children=True)
    ]
    feature_dict = FeatureDictionary(N_FEATURES, D_IN, bias=False, initializer=None)
    feature_dict.feature_vectors.data = F_FD.clone()
    cfg = SyntheticModelConfig(
        num_features=N_FEATURES,
        hidden_dim=D_IN,
        firing_probability=ConstantFiringProbabilityConfig(probability=0.5),
        bias=False,
        seed=0,
    )
    return SyntheticModel(cfg, feature_dict=feature_dict,
                          hierarchy=Hierarchy(roots=roots, modifier=hierarchy_modifier(roots)))


def hand_built_sae(W_enc_DS: torch.Tensor, W_dec_SD: torch.Tensor, b_enc_S=None) -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=W_dec_SD.shape[0]))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc_DS)
        sae.W_dec.copy_(W_dec_SD)
        sae.b_enc.copy_(torch.zeros(W_dec_SD.shape[0]) if b_enc_S is None else b_enc_S)
        sae.b_dec.zero_()
    return sae


def faithful_weights() -> tuple[torch.Tensor, torch.Tensor]:
    """Latent i reads and writes feature i exactly."""
    return F_FD.T.clone(), F_FD.clone()


def absorb(W_enc_DS, W_dec_SD, child, kept_share=0.0):
    """The child's latent takes over (1 - kept_share) of the parent: it writes
    child + (1 - kept_share) parent, and the parent's latent is inhibited by the child
    down to kept_share of its magnitude. Reconstructions stay exact."""
    W_enc_DS[:, PARENT] -= (1 - kept_share) * F_FD[child]
    W_dec_SD[child] += (1 - kept_share) * F_FD[PARENT]
    return W_enc_DS, W_dec_SD


def run(sae, **cfg):
    return synthetic_absorption(sae, planted_model(), SyntheticAbsorptionConfig(num_samples=20_000, **cfg))


def pair(result, child):
    return next(p for p in result.pairs if p.child == child)


def test_pairs_are_the_direct_edges_between_feature_nodes():
    roots = [
        HierarchyNode(0, [HierarchyNode(1, [HierarchyNode(2)]), HierarchyNode(3)]),
        HierarchyNode(None, [HierarchyNode(4)]),  # organisational: 4 is not gated by anything
    ]
    assert parent_child_pairs(roots) == [(0, 1), (0, 3), (1, 2)]


def test_faithful_sae_has_zero_absorption_and_full_recall():
    result = run(hand_built_sae(*faithful_weights()))
    assert result.absorption == 0.0
    assert result.parent_recall_alone == 1.0
    assert result.child_recall == 1.0
    assert result.n_pairs == 2 and result.n_pairs_skipped == 0
    assert_close(result.parent_share_coactive, 1.0)
    assert result.matched_mcc == pytest.approx(1.0)
    # Parent (0.5) x this child wins (0.5 * 0.5 alone + 0.25 * 0.5 after a tie) of 20k
    # samples = 3750 co-active samples per pair; the parent is alone in 0.5 x 0.25 = 2500.
    assert all(3500 < p.n_coactive < 4000 for p in result.pairs)
    assert 2300 < result.parents[0].n_alone < 2700


def test_sae_absorbing_one_of_two_children_has_fifty_percent_absorption():
    result = run(hand_built_sae(*absorb(*faithful_weights(), child=CHILD_A)))
    assert pair(result, CHILD_A).absorption == 1.0
    assert pair(result, CHILD_B).absorption == 0.0
    assert result.absorption == 0.5
    # The parent's latent still fires whenever the parent is alone: this is absorption,
    # not a dead latent.
    assert result.parent_recall_alone == 1.0
    assert result.absorption_beyond_misses == 0.5
    assert result.n_parents_missed == 0
    # The matching sends each feature to its own latent even though the absorbing
    # child's decoder is at 45 degrees to both child and parent.
    assert pair(result, CHILD_A).child_latent == CHILD_A
    assert pair(result, CHILD_A).child_cos == pytest.approx(2**-0.5)


def test_sae_absorbing_every_child_has_full_absorption():
    W_enc, W_dec = absorb(*absorb(*faithful_weights(), child=CHILD_A), child=CHILD_B)
    result = run(hand_built_sae(W_enc, W_dec))
    assert result.absorption == 1.0
    assert result.parent_recall_alone == 1.0
    assert result.absorption_beyond_misses == 1.0
    assert result.parent_share_coactive == 0.0


def test_dead_parent_latent_is_reported_as_missed_not_as_absorption():
    W_enc, W_dec = faithful_weights()
    W_enc[:, PARENT] = 0.0
    b_enc = torch.zeros(N_FEATURES)
    b_enc[PARENT] = -1.0  # never fires
    result = run(hand_built_sae(W_enc, W_dec, b_enc))
    assert result.absorption == 1.0  # the parent is never carried...
    assert result.parent_recall_alone == 0.0  # ...because its latent never fires at all
    assert result.absorption_beyond_misses == 0.0
    assert result.n_parents_missed == 1


def test_partial_absorption_counts_against_the_stated_share():
    # When a child fires, the parent's latent keeps 30% of the parent's magnitude.
    sae = hand_built_sae(*absorb(*absorb(*faithful_weights(), CHILD_A, 0.3), CHILD_B, 0.3))
    assert run(sae, min_share=0.5).absorption == 1.0
    lenient = run(sae, min_share=0.25)
    assert lenient.absorption == 0.0
    assert_close(lenient.parent_share_coactive, 0.3, atol=1e-5, rtol=0)
    assert_close(lenient.parent_share_alone, 1.0)


def test_matching_is_the_one_behind_saelens_mcc():
    torch.manual_seed(0)
    sae = hand_built_sae(torch.randn(D_IN, 6), torch.randn(6, D_IN))
    result = run(sae)
    assert result.matched_mcc == pytest.approx(
        mean_correlation_coefficient(sae.W_dec.detach(), F_FD), abs=1e-6
    )


def test_effective_decoder_undoes_topk_decoder_norm_rescaling():
    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=N_FEATURES, k=2, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        sae.W_dec.copy_(3.0 * F_FD)
    assert_close(effective_decoder(sae), F_FD)


def test_too_few_samples_leave_pairs_out_instead_of_guessing():
    result = run(hand_built_sae(*faithful_weights()), min_samples=50_000)
    assert result.n_pairs == 0 and result.n_pairs_skipped == 2
    assert math.isnan(result.absorption)


@pytest.mark.parametrize("field, value", [("min_share", 0.0), ("min_share", 1.5),
                                          ("num_samples", 0), ("min_samples", 0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticAbsorptionConfig(**{field: value})


def test_a_model_without_hierarchy_is_refused():
    model = SyntheticModel(SyntheticModelConfig(num_features=N_FEATURES, hidden_dim=D_IN, seed=0))
    with pytest.raises(ValueError, match="hierarchy"):
        synthetic_absorption(hand_built_sae(*faithful_weights()), model)


# --- the benchmark ------------------------------------------------------------------


def test_matched_l0_interpolates_along_the_sweep_and_never_extrapolates():
    assert sweep.interpolate_at([2.0, 4.0, 8.0], [1.0, 0.5, 0.0], 3.0) == 0.75
    assert sweep.interpolate_at([8.0, 4.0, 2.0], [0.0, 0.5, 1.0], 6.0) == 0.25  # L0 falling
    assert math.isnan(sweep.interpolate_at([2.0, 4.0], [1.0, 0.5], 5.0))
    # An L1 sweep that folds back (L0 6.0 -> 5.0 -> 5.5): the first crossing counts.
    assert sweep.interpolate_at([6.0, 5.0, 5.5], [0.4, 0.6, 0.9], 5.25) == pytest.approx(0.55)


def test_matched_l0_summary_interpolates_each_seed_then_averages_over_seeds():
    def run(seed, l0, absorption):
        metrics = {m: 0.0 for m in bench.METRICS} | {"l0": l0, "absorption": absorption}
        return bench.RunResult("A", "standard", "l1_coefficient", l0, seed, metrics, {}, 0.0, {})

    results = [run(0, 4.0, 0.2), run(0, 6.0, 0.4), run(1, 4.0, 0.4), run(1, 6.0, 0.6)]
    mean, std, n = sweep.matched_l0_summary(results, target_l0=5.0, metrics=bench.METRICS)["A"]["absorption"]
    assert (mean, n) == (pytest.approx(0.4), 2)
    assert std == pytest.approx(0.1 * 2**0.5)  # sample std of 0.3 and 0.5


def test_tiny_benchmark_writes_every_run_a_table_and_plots(tmp_path):
    arms = ("standard", "oc topk base: both")
    tiny = bench.BenchmarkConfig(
        num_features=16, hidden_dim=8, hierarchy_roots=2, hierarchy_branching=2,
        seeds=(0, 1), training_samples=1024, batch_size=128, eval_samples=512,
        arms=[arm for arm in bench.default_arms() if arm.name in arms],
    )
    for arm in tiny.arms:
        arm.sparsity_values = arm.sparsity_values[:2]
    results = bench.run_grid(tiny, progress=False)
    paths = bench.write_outputs(tiny, results, tmp_path, arms[1], wall_seconds=1.0)

    runs = json.loads(paths["runs"].read_text())["runs"]
    assert len(runs) == 2 * 2 * 2  # seeds x arms x sparsity settings
    assert {(r["arm"], r["seed"], r["sparsity"]) for r in runs} == {
        (arm.name, seed, value) for arm in tiny.arms for seed in (0, 1) for value in arm.sparsity_values
    }
    oc_run = next(r for r in runs if r["architecture"] == "ortho_contrastive")
    assert oc_run["sae_config"]["sparsity_base"] == "topk"
    assert oc_run["sae_config"]["ortho_anneal_steps"] == 1024 // 128  # bound by the runner config
    for r in runs:
        assert 0.0 <= r["metrics"]["absorption"] <= 1.0
        assert r["metrics"]["l0"] > 0
    table = paths["table"].read_text()
    for arm in arms:
        assert f"| {arm} |" in table
    assert f"Targets for `{arms[1]}`" in table
    assert paths["absorption_plot"].read_bytes()[:4] == b"\x89PNG"
    assert paths["ev_plot"].read_bytes()[:4] == b"\x89PNG"
    readme = paths["readme"].read_text()  # the folder's README: the matched-L0 table and its caveats
    assert f"| {arms[0]} |" in readme and "## Caveats" in readme and "`runs.json`" in readme

    # The saved runs re-render the same table without training.
    again = bench.main(["--from-runs", str(paths["runs"]), "--out", str(tmp_path / "again"),
                        "--headline-arm", arms[1]])
    assert again["table"].read_text() == table


def test_merging_trains_only_the_missing_arms_and_keeps_the_saved_runs(tmp_path):
    def tiny(names, **kwargs):
        arms = [replace(arm, sparsity_values=arm.sparsity_values[:2])
                for arm in bench.default_arms() if arm.name in names]
        for arm in arms:
            if arm.sae_kwargs.get("sparsity_base") == "matryoshka_batchtopk":
                arm.sae_kwargs = {**arm.sae_kwargs, "topk_threshold_lr": 0.5}  # 8 steps
        return bench.BenchmarkConfig(
            num_features=16, hidden_dim=8, hierarchy_roots=2, hierarchy_branching=2,
            seeds=(0,), training_samples=1024, batch_size=128, eval_samples=512, arms=arms,
            **kwargs,
        )

    saved = tiny(["standard"])
    paths = bench.write_outputs(saved, bench.run_grid(saved, progress=False), tmp_path, "standard", 2.0)
    before = json.loads(paths["runs"].read_text())["runs"]

    new_arm = "oc matryoshka base: both"
    merged, results, wall = bench.merge_new_arms(paths["runs"], tiny(["standard", new_arm]), workers=1)
    assert [arm.name for arm in merged.arms] == ["standard", new_arm]
    assert wall >= 2.0
    assert [r.arm for r in results] == ["standard"] * 2 + [new_arm] * 2
    bench.write_outputs(merged, results, tmp_path, "standard", wall)
    after = json.loads(paths["runs"].read_text())["runs"]
    assert after[:2] == before  # the saved runs, untouched
    assert after[2]["sae_config"]["sparsity_base"] == "matryoshka_batchtopk"
    assert after[2]["sae_config"]["matryoshka_widths"] == [2, 4, 8, 16]

    with pytest.raises(ValueError, match=r"benchmark settings differ from this command's in \['eval_samples'\]"):
        bench.merge_new_arms(paths["runs"], replace(tiny([new_arm]), eval_samples=256), workers=1)
    changed = tiny(["standard"])
    changed.arms[0].sae_kwargs = {"l1_warm_up_steps": 7}  # the same name, changed in code
    with pytest.raises(ValueError, match=r"arm 'standard' was saved with other settings"):
        bench.merge_new_arms(paths["runs"], changed, workers=1)


def test_merging_keeps_the_saved_meta_notes_and_appends_the_invocation():
    saved = {"invocations": [{"command": "a"}], "note": "recorded by hand"}
    assert bench.merged_meta(saved, {"command": "b"}) == {
        "invocations": [{"command": "a"}, {"command": "b"}], "note": "recorded by hand"}
    assert saved["invocations"] == [{"command": "a"}]  # the saved meta is not changed
