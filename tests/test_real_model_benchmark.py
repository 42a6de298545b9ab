"""``benchmarks.real_model``'s machinery at toy size (the planted first-letter model stands
in for SmolLM2): the arm list, one run end to end, resuming, and the verdict at matched L0."""

import argparse
import json
import math
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata

from benchmarks import real_model as bench
from fixtures.planted import one_torch_thread  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = replace(bench.PRESETS["tiny"], training_tokens=4096, d_sae=128)


def test_the_arms_cover_the_issue():
    archs = {(a.architecture, a.sae_kwargs.get("sparsity_base"), a.sae_kwargs.get("ortho_coefficient"),
              a.sae_kwargs.get("contrastive_coefficient")) for a in bench.ARMS}
    for saelens in ("standard", "topk", "batchtopk", "matryoshka_batchtopk"):
        assert (saelens, None, None, None) in archs
    for base in (None, "batchtopk"):  # ReLU+L1 and BatchTopK bases: both, ortho only, contrastive only
        assert {("ortho_contrastive", base, None, None), ("ortho_contrastive", base, None, 0.0),
                ("ortho_contrastive", base, 0.0, None)} <= archs
    assert len({a.name for a in bench.ARMS}) == len(bench.ARMS)
    assert all(len(a.sparsity_values) >= 2 for a in bench.ARMS)  # matched L0 needs a sweep
    assert [v for _, v in bench.planned(bench.ARMS[:2], quick=True)] == [1.0, 32.0]


def test_every_arm_builds_its_config():
    metadata = SAEMetadata(model_name="m", hook_name="blocks.0.hook_resid_post")
    for arm in bench.ARMS:
        for value in arm.sparsity_values:
            cfg = bench.sae_config(arm, value, bench.PRESETS["cpu"], 576, metadata)
            assert getattr(cfg, arm.sparsity_field) == value
            assert cfg.metadata.hook_name == "blocks.0.hook_resid_post"


def test_an_arm_variant_changes_only_the_named_fields_and_is_saved_apart(tmp_path):
    name = "oc relu: both[ortho_threshold_end=0.1, contrastive_coefficient=1, projection_dim=none]"
    base = next(a for a in bench.ARMS if a.name == "oc relu: both")
    (variant,) = bench.arms_from_args(argparse.Namespace(arms=[name]))
    assert variant.name == name
    assert (variant.architecture, variant.sparsity_field, variant.sparsity_values) == (
        base.architecture, base.sparsity_field, base.sparsity_values)
    assert variant.sae_kwargs == {**base.sae_kwargs, "ortho_threshold_end": 0.1,
                                  "contrastive_coefficient": 1, "projection_dim": None}
    assert bench.run_path(tmp_path, variant, 3.0) != bench.run_path(tmp_path, base, 3.0)
    ortsae = next(a for a in bench.ARMS if a.name == "ortsae batchtopk")
    (tuned,) = bench.arms_from_args(argparse.Namespace(arms=["ortsae batchtopk[ortho_coefficient=300]"]))
    assert tuned.sae_kwargs == {**ortsae.sae_kwargs, "ortho_coefficient": 300}


@pytest.mark.parametrize(("name", "says"), [
    ("nope", "known arms are"),
    ("oc relu: both[l1_coefficient=3]", "sparsity sweep"),
    ("oc relu: both[ortho_treshold_end=0.1]", "'ortho_treshold_end' is not a config field of 'ortho_contrastive'"),
    ("standard[ortho_coefficient=1]", "'ortho_coefficient' is not a config field of 'standard'"),
    ("oc relu: both[0.1]", "'0.1' is not field=value"),
])
def test_a_bad_arm_name_is_refused_naming_what_is_wrong(name, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        bench.arms_from_args(argparse.Namespace(arms=[name]))


def test_one_run_end_to_end_then_resumed_from_disk(tmp_path):
    arms = [replace(bench.ARMS[0], sparsity_values=(0.5, 2.0))]
    results = bench.run_grid(TINY, arms, False, tmp_path / "runs", tmp_path / "work", bench.PlantedSource,
                             log=lambda _: None)
    assert [r.sparsity for r in results] == [0.5, 2.0]
    for r in results:
        assert set(bench.METRICS) <= set(r.metrics)
        assert all(math.isfinite(v) for v in r.metrics.values())
        assert 0 <= r.metrics["absorption"] <= 1 and r.metrics["l0"] > 0
        assert {"trustworthy", "reasons", "notes", "random_alignment_level"} <= set(r.alarm)
        assert len(r.absorption_letters) == 26  # what the alarm saw, per letter
        assert all({"gt_probe_f1", "k1_probe_f1", "best_latent_cos", "aligned_share"} <= set(v)
                   for v in r.absorption_letters.values())
        assert r.sae_config["architecture"] == "standard"  # the plugin-free inference SAE
        kept = SAE.load_from_disk(r.sae_path)  # kept in the work dir, for re-scoring with more eval seeds
        assert Path(r.sae_path).parent == tmp_path / "work" / "saes" and kept.cfg.d_sae == TINY.d_sae
    assert results[0].metrics["l0"] > results[1].metrics["l0"]  # more L1, fewer latents

    def no_training(_):
        raise AssertionError("a saved run was trained again")

    again = bench.run_grid(TINY, arms, False, tmp_path / "runs", tmp_path / "work", no_training, log=lambda _: None)
    assert [r.metrics for r in again] == [r.metrics for r in results]

    # The same arm name with other settings (changed in code) does not reload them.
    changed = [replace(arms[0], sae_kwargs={"l1_warm_up_steps": 7})]
    said = []
    with pytest.raises(AssertionError, match="trained again"):
        bench.run_grid(TINY, changed, False, tmp_path / "runs", tmp_path / "work", no_training, log=said.append)
    assert "saved with other arm settings (l1_warm_up_steps: 0 -> 7); retraining" in said[0]
    assert bench.settings_changed(results[0], arms[0], 0.5, TINY) == []
    assert bench.settings_changed(results[0], arms[0], 2.0, TINY) == ["l1_coefficient: 0.5 -> 2.0"]
    # A field the run predates (added to the config since) counts as at its default.
    older = json.loads(json.dumps(asdict(results[0])))
    del older["sae_config"]["metadata"]["training_architecture_details"]["l1_warm_up_steps"]
    assert bench.settings_changed(bench.RunResult(**older), changed[0], 0.5, TINY) == []

    paths = bench.write_outputs(results, TINY, arms, results[1].metrics["l0"] + 1, tmp_path / "out",
                                {"command": "c", "machine": "m", "source": "planted", "wall_seconds": 1.0})
    assert all(p.exists() for p in paths.values())
    assert len(json.loads(paths["json"].read_text())["runs"]) == 2
    readme = paths["readme"].read_text()  # the folder's README: command, machine, table, caveats
    assert "`c`" in readme and "- **Machine:** m" in readme and "The benchmark's verdict" in readme
    assert "A toy model" not in readme  # the meta does not say real=False


def test_an_arm_with_its_own_lr_trains_at_it_and_is_saved_under_that_lr(tmp_path, monkeypatch):
    (tuned,) = bench.arms_from_args(argparse.Namespace(arms=["standard[lr=0.003]"]))
    assert (tuned.lr, tuned.sae_kwargs) == (0.003, bench.ARMS[0].sae_kwargs)
    tuned = replace(tuned, sparsity_values=(2.0,))
    trained_at = []

    def run_one(arm, sparsity, bench_, *rest):
        trained_at.append(bench_.lr)
        return replace(fake(arm.name, sparsity, 3.0, 0.1), bench_key=bench_.key())

    monkeypatch.setattr(bench, "run_one", run_one)
    (run,) = bench.run_grid(TINY, [tuned], False, tmp_path / "runs", tmp_path / "work", bench.PlantedSource,
                            log=lambda _: None)
    assert trained_at == [0.003] != [TINY.lr]
    # The saved run is the one a benchmark run at lr 0.003 finds: nothing is trained again.
    plain = replace(bench.ARMS[0], name=tuned.name, sparsity_values=(2.0,))

    def no_training(_):
        raise AssertionError("a saved run was trained again")

    (again,) = bench.run_grid(replace(TINY, lr=0.003), [plain], False, tmp_path / "runs", tmp_path / "work",
                              no_training, log=lambda _: None)
    assert again == run
    assert "lr 0.001 (standard[lr=0.003] 0.003)" in bench.markdown(
        [run], replace(TINY, lr=0.001), [tuned], 3.0, {"source": "planted", "command": "c", "machine": "m", "wall_seconds": 1.0})


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "fast", "true"])
def test_an_arm_lr_must_be_a_positive_finite_number(value):
    with pytest.raises(ValueError, match=re.escape(f"lr={value} must be a finite learning rate > 0")):
        bench.arms_from_args(argparse.Namespace(arms=[f"standard[lr={value}]"]))


def fake(arm, sparsity, l0, absorption, trusted=True):
    metrics = dict.fromkeys(bench.METRICS, 0.5) | {"l0": l0, "absorption": absorption}
    return bench.RunResult(arm=arm, architecture="x", sparsity_field="k", sparsity=sparsity, seed=0,
                           metrics=metrics, alarm={"trustworthy": trusted, "reasons": []},
                           absorption_letters={}, eval_seconds=0.0, bench_key="k", sae_config={})


def test_verdict_names_the_winner_at_matched_l0_even_when_it_is_not_ortho_contrastive():
    runs = [fake("standard", 1, 20, 0.10), fake("standard", 2, 40, 0.30),  # 0.20 at L0 30
            fake("oc relu: both", 1, 20, 0.20), fake("oc relu: both", 2, 40, 0.40),  # 0.30
            fake("topk", 1, 35, 0.0), fake("topk", 2, 50, 0.0)]  # does not reach L0 30
    lines = bench.verdict(runs, 30.0, bench.ARMS)
    assert "`standard`, 0.200" in lines[0] and "`oc relu: both`" in lines[0] and "-33%" in lines[0]
    assert any("does not win" in line for line in lines)
    assert any("topk" in line and "Not reaching" in line for line in lines)


def test_at_matched_explained_variance_the_arms_are_ranked_at_the_l0_each_needs():
    def run(arm, sparsity, l0, ev, absorption):
        result = fake(arm, sparsity, l0, absorption)
        result.metrics["explained_variance"] = ev
        return result

    runs = [run("standard", 1, 90, 0.86, 0.30), run("standard", 2, 50, 0.82, 0.18),  # EV 0.82: 0.18 at L0 50
            run("batchtopk", 1, 20, 0.80, 0.10), run("batchtopk", 2, 32, 0.84, 0.30),  # 0.20 at L0 26
            run("topk", 1, 20, 0.70, 0.05), run("topk", 2, 32, 0.75, 0.07)]  # never reaches EV 0.82
    line = bench.verdict(runs, 30.0, bench.ARMS, target_ev=0.82)[-1]
    assert line == ("- At matched explained variance 0.82 instead (the same reconstruction, at whatever L0 each "
                    "arm needs for it), lowest absorption first: `standard` 0.180 (L0 50), `batchtopk` 0.200 "
                    "(L0 26); not reaching it: topk.")
    assert not any("explained variance" in line for line in bench.verdict(runs, 30.0, bench.ARMS))
    table = bench.markdown(runs, TINY, bench.ARMS, 30.0, {"source": "planted", "command": "c", "machine": "m",
                                                          "wall_seconds": 1.0}, target_ev=0.82)
    section = table.split("## At matched explained variance = 0.82")[1].split("## Every run")[0]
    assert "| batchtopk | 0.200 |" in section and "| 26.0 |" in section and "| topk | n/a |" in section


def test_with_target_ev_absorption_is_also_plotted_against_explained_variance(tmp_path):
    meta = {"source": "planted", "command": "c", "machine": "m", "wall_seconds": 1.0}
    runs = [fake("standard", 1, 90, 0.30), fake("standard", 2, 50, 0.18)]
    runs[0].metrics["explained_variance"] = 0.86
    paths = bench.write_outputs(runs, TINY, bench.ARMS, 30.0, tmp_path / "ev", meta, target_ev=0.82)
    assert paths["absorption_ev_plot"] == tmp_path / "ev/absorption_vs_ev.png" and paths["absorption_ev_plot"].stat().st_size
    assert "`absorption_vs_ev.png`: absorption against held-out explained variance" in paths["readme"].read_text()
    plain = bench.write_outputs(runs, TINY, bench.ARMS, 30.0, tmp_path / "l0", meta)
    assert "absorption_ev_plot" not in plain and "absorption_vs_ev" not in plain["readme"].read_text()


def test_the_results_page_says_whether_the_alarm_flagged_any_run():
    meta = {"source": "planted", "command": "c", "machine": "m", "wall_seconds": 1.0}
    runs = [fake("standard", 1, 20, 0.10), fake("standard", 2, 40, 0.30)]
    caveats = bench.results_readme(runs, TINY, bench.ARMS, 30.0, meta).caveats
    assert "The absorption alarm trusts all 2 SAEs." in caveats
    runs[0] = fake("standard", 1, 20, 0.10, trusted=False)
    (alarm,) = [c for c in bench.results_readme(runs, TINY, bench.ARMS, 30.0, meta).caveats if "alarm" in c]
    assert alarm.startswith("The absorption alarm flagged 1 of 2 SAEs (reasons in `results.json`")


def test_the_results_page_says_how_many_training_seeds_each_arm_has():
    meta = {"source": "planted", "command": "c", "machine": "m", "wall_seconds": 1.0}
    runs = [fake("standard", 1, 20, 0.10), fake("batchtopk", 20, 20, 0.10)]
    runs += [replace(fake("standard", 1, 20, 0.12), seed=seed) for seed in (1, 2)]
    seeds = bench.results_readme(runs, TINY, bench.ARMS, 30.0, meta).caveats[0]
    assert seeds.startswith("3 training seeds for `standard`; 1 training seed (no error bars) for `batchtopk`; ")
    same = bench.results_readme(runs[:1] + runs[2:], TINY, bench.ARMS, 30.0, meta).caveats[0]
    assert same.startswith("3 training seeds; ")


@pytest.mark.parametrize("value", ["nan", "inf", "1.5"])
def test_target_ev_must_be_a_finite_explained_variance(value, tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"--target-ev {float(value)} is invalid")):
        bench.main(["--source", "planted", "--preset", "tiny", "--target-ev", value, "--out", str(tmp_path)])


def test_quick_verdict_says_l0_is_not_matched():
    runs = [fake("standard", 1, 20, 0.10, trusted=False), fake("oc relu: both", 1, 30, 0.2)]
    lines = bench.verdict(runs, 25.0, bench.ARMS)
    assert "not matched" in lines[0] and "`oc relu: both`" in lines[0]  # the alarm-free run
    assert "flagged 1 of 2" in lines[-1]


def test_training_seeds_are_saved_apart_and_tabulated_as_mean_and_sd(tmp_path, monkeypatch):
    """``--seeds 2``: seed 0's runs where they always were, seed 1's in ``<preset>-seed1``; the
    matched-L0 table gives mean ± sd over the seeds, and ``--from-runs`` finds both."""
    trained = []

    def run_one(arm, sparsity, bench_config, source, acts_ND, heldout, work_dir, forward_memo=None):
        trained.append((bench_config.seed, sparsity))
        metrics = dict.fromkeys(bench.METRICS, 0.5) | {"l0": 40 / sparsity, "absorption": 0.1 + 0.01 * bench_config.seed}
        return bench.RunResult(arm=arm.name, architecture="standard", sparsity_field=arm.sparsity_field,
                               sparsity=sparsity, seed=bench_config.seed, metrics=metrics,
                               alarm={"trustworthy": True, "reasons": [], "notes": []}, absorption_letters={},
                               eval_seconds=0.0, bench_key=bench_config.key(), sae_config={})

    monkeypatch.setattr(bench, "run_one", run_one)
    args = ["--source", "planted", "--preset", "tiny", "--arms", "standard", "--seeds", "2",
            "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")]
    paths = bench.main(args)
    assert sorted(trained) == [(seed, s) for seed in (0, 1) for s in bench.L1_STANDARD]
    assert len(list((tmp_path / "out/runs/planted-tiny").glob("*.json"))) == 3
    assert len(list((tmp_path / "out/runs/planted-tiny-seed1").glob("*.json"))) == 3
    table = paths["table"].read_text()
    assert "| standard | 0.105 ± 0.007 |" in table and "training seeds 0, 1" in table
    assert "l1_coefficient=2, seed 1" in table
    assert bench.main([*args, "--from-runs"])["table"].read_text().count("seed 1 |") == 3
    # A note (e.g. runs copied in from another invocation) is on the page, and kept by later invocations.
    bench.main([*args, "--from-runs", "--note", "seed 1 was trained elsewhere"])
    assert "- seed 1 was trained elsewhere" in bench.main([*args, "--from-runs"])["readme"].read_text()
    with pytest.raises(ValueError, match="--seeds 0 is invalid"):
        bench.main([*args[:-4], "--seeds", "0"])


class PlantedLike:
    model = type("M", (), {"cfg": type("C", (), {"model_name": "m"})()})()
    hook_name = "blocks.15.hook_resid_post"


def test_the_contrastive_warm_up_fits_every_budget_and_the_grid_keeps_its_300_steps():
    cpu = bench.PRESETS["cpu"]
    assert bench.warm_up_steps(cpu) == 300  # 1,024 steps: the committed runs' warm-up
    for tokens in (262_144, 524_288, 2_097_152):
        short = replace(cpu, training_tokens=tokens, batch_size=1024)
        assert bench.warm_up_steps(short) == min(300, int(0.3 * short.steps)) <= short.steps
        oc = next(arm for arm in bench.ARMS if arm.name == "oc relu: both")
        cfg = bench.sae_config(oc, 3.0, short, 576)
        assert cfg.contrastive_warm_up_steps == bench.warm_up_steps(short)
