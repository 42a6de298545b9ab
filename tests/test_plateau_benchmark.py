"""``benchmarks.plateau`` at toy size (the planted first-letter model stands in for
SmolLM2): one run per budget with its own schedule, the replayed stream, the plateau rule,
the table and plots, resuming from disk; and the real-model runs committed before the
cache-size field keep their fingerprint."""

import json
from pathlib import Path

import pytest

from benchmarks import plateau
from benchmarks import real_model as bench
from fixtures.planted import one_torch_thread  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def test_the_plateau_is_the_first_budget_whose_doubling_gains_less_than_the_bound():
    assert plateau.plateau_budget([(1, 0.50), (2, 0.60), (4, 0.605), (8, 0.70)], 0.01) == 2
    assert plateau.plateau_budget([(1, 0.50), (2, 0.60), (4, 0.70)], 0.01) is None
    assert plateau.plateau_budget([(1, 0.50), (2, 0.49)], 0.01) == 1  # a fall is no gain


def test_a_flagged_runs_reason_is_shown_without_its_letters():
    reason = "17 of 24 scored letters are carried by no latent aligned (share < 0.25): bdefk; neither a letter latent"
    assert plateau.short_reason(reason) == "17 of 24 scored letters are carried by no latent aligned (share < 0.25)"
    assert plateau.short_reason("too few steps") == "too few steps"


def test_committed_real_model_runs_keep_their_fingerprint():
    """Adding ``cache_tokens`` (default None) must not orphan the committed runs."""
    keys = {json.loads(p.read_text())["bench_key"]
            for p in (REPO / "benchmarks/results/real_model/runs/cpu").glob("*.json")}
    assert keys == {bench.PRESETS["cpu"].key()}
    with_cache = bench.PRESETS["cpu"].__class__(cache_tokens=1_048_576)
    assert with_cache.key() != bench.PRESETS["cpu"].key()


def test_every_budget_reads_the_same_shuffled_stream_of_cached_activations():
    tiny = bench.PRESETS["tiny"]
    source = bench.PlantedSource(tiny)
    small, _, _ = bench.training_activations(source, tiny.__class__(**{**vars(tiny), "training_tokens": 1024,
                                                                       "cache_tokens": 2048}))
    large, _, _ = bench.training_activations(source, tiny.__class__(**{**vars(tiny), "training_tokens": 8192,
                                                                       "cache_tokens": 2048}))
    assert len(small) == len(large) > 1024  # massive-activation tokens aside
    assert (small == large).all()


def fake_run(trained):
    """``run_one`` without training: metrics that grow with the budget, as a curve would."""

    def run_one(arm, sparsity, bench_config, source, acts_ND, heldout, work_dir, forward_memo=None):
        trained.append((bench_config.training_tokens, bench_config.steps, len(acts_ND)))
        ev = 1 - 1 / bench_config.steps
        metrics = dict.fromkeys(bench.METRICS, 0.1) | {"explained_variance": ev, "l0": 30.0, "train_seconds": 1.0}
        return bench.RunResult(arm=arm.name, architecture=arm.architecture, sparsity_field=arm.sparsity_field,
                               sparsity=sparsity, seed=0, metrics=metrics,
                               alarm={"trustworthy": bench_config.steps > 16, "reasons": ["too few steps"],
                                      "random_alignment_level": 0.21},
                               absorption_letters={"a": {"absorption": 0.5, "gt_probe_f1": 0.9, "k1_probe_f1": 0.2,
                                                         "best_latent_cos": 0.1, "aligned_share": 0.05}},
                               eval_seconds=1.0, bench_key=bench_config.key(),
                               sae_config={})

    return run_one


def test_budgets_train_separately_on_one_replayed_stream_then_resume(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(bench, "run_one", fake_run(trained))
    args = ["--source", "planted", "--preset", "tiny", "--arms", "standard", "--setting", "standard=1",
            "--budgets", "2048", "4096", "--batch-size", "256", "--cache-tokens", "2048",
            "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")]
    paths = plateau.main(args)
    saved = json.loads(paths["json"].read_text())
    curve = saved["arms"]["standard"]["budgets"]
    assert [(b["tokens"], b["steps"], b["epochs"]) for b in curve] == [(2048, 8, 1.0), (4096, 16, 2.0)]
    assert [t[:2] for t in trained] == [(2048, 8), (4096, 16)]  # a run (and schedule) per budget
    assert trained[0][2] == trained[1][2]  # the same stream of cached tokens, replayed by the larger
    assert [b["trusted"] for b in curve] == [False, False]
    assert saved["arms"]["standard"]["plateau_tokens"] is None  # EV 0.875 -> 0.9375 still gains
    assert saved["arms"]["standard"]["setting"] == "l1_coefficient=1"
    runs = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out" / "runs").rglob("*.json"))
    assert runs == [Path("runs/2048/standard__l1_coefficient_1.json"), Path("runs/4096/standard__l1_coefficient_1.json")]
    readme = paths["readme"].read_text()
    assert "### standard (l1_coefficient=1)" in readme and "| 4,096 | 16 | 2 | 0.938 (+0.062) |" in readme
    assert "flagged: too few steps" in readme and "not reached by 4,096 tokens" in readme
    assert "chance level 0.21" in readme and "| a | 0.90 | 0.20 | 0.10 | 0.05 | 0.500 |" in readme
    assert all(paths[f"{m}_vs_tokens"].exists() for m, _, _ in plateau.CURVES)

    def no_training(_):
        raise AssertionError("a saved run was trained again")

    monkeypatch.setitem(bench.SOURCES, "planted", no_training)
    again = plateau.main(args)
    assert json.loads(again["json"].read_text())["arms"] == saved["arms"]
    noted = plateau.main([*args, "--from-runs", "--note", "run X was paused"])["readme"].read_text()
    assert "- run X was paused" in noted
    table = plateau.main([*args, "--from-runs"])["readme"].read_text()
    assert "- run X was paused" in table  # notes stand
    assert "(re-tabulated with `python -m benchmarks.plateau" in table  # the command that trained, and this one
    assert table.split("## Caveats")[0].split("- **Wall time:**")[1].split("\n", 1)[1] == \
        readme.split("## Caveats")[0].split("- **Wall time:**")[1].split("\n", 1)[1]


def test_a_setting_for_an_arm_not_run_is_refused():
    with pytest.raises(ValueError, match="--setting names \\['topk'\\]"):
        plateau.main(["--source", "planted", "--arms", "standard", "--setting", "topk=8"])
    with pytest.raises(ValueError, match="--setting 'standard' is invalid"):
        plateau.main(["--source", "planted", "--arms", "standard", "--setting", "standard"])
