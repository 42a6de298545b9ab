"""The speed benchmark runs end to end at tiny sizes (no timing is asserted)."""

import json

from benchmarks import speed


def test_speed_benchmark_writes_every_table_plot_and_target_at_smoke_sizes(tmp_path, capsys):
    results = speed.main(["--preset", "smoke", "--out", str(tmp_path)])

    assert set(results) == {"step", "contrastive", "ortho", "fidelity", "approximation", "whole_run", "memory",
                            "targets", "meta", "section_meta"}
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["preset"] == "smoke"
    markdown = (tmp_path / "results.md").read_text()
    for heading in ["## Targets", "## 1. Training step", "## 2. Contrastive term", "## 3. Orthogonality term",
                    "## 4. close_pairs vs exact", "## 5. Approximation quality", "## 6. Whole run", "## 7. Peak memory"]:
        assert heading in markdown
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert pngs == {"step_ratio_0.png", "contrastive_cost.png", "ortho_time.png", "ortho_memory.png",
                    "close_pairs_fidelity.png", "ablation_cos_error.png", "ablation_infonce_gap.png", "ablation_grad_cosine.png"}

    step_rows = {row["variant"] for row in results["step"][0]["rows"]}
    assert {"standard (SAELens)", "ortho exact", "ortho close_pairs, scan step"} <= step_rows
    assert all(row["time"]["median_s"] > 0 for row in results["step"][0]["rows"])
    assert {row["variant"] for row in results["ortho"]["rows"]} == {
        "dense naive", "exact blockwise", "chunked", "close_pairs list", "close_pairs scan"}
    # the projected loss keeps less for backward than the exact one, at any size
    rows = {row["variant"]: row for row in results["contrastive"][0]["rows"]}
    assert rows["k=4"]["saved_for_backward_bytes"] < rows["exact"]["saved_for_backward_bytes"]
    assert [row["k"] for row in results["approximation"]["data"]["gaussian"]["rows"]] == [4, 8]
    fidelity = results["fidelity"]["runs"]["offset 0.0"]
    assert len(fidelity["rows"]) == 2 and fidelity["summary"]["scans"] >= 1  # ortho steps 0 and 4 of 6 (lazy 4)
    whole = results["whole_run"][0]
    assert [p["phase"] for p in whole["phases"]] == [0.0, 1.0]
    assert any(name.startswith("defaults") for name in whole["run_average_ratio"])
    # the over-full estimate's alternatives are timed, with their error where the list is over-full
    chunk_rows = [row for p in whole["phases"] for row in p["rows"] if "over-full chunks" in row["variant"]]
    assert chunk_rows and all(("chunk_grad_rms_rel_error" in row) == (not row["on_the_list"]) for row in chunk_rows)
    assert {row["variant"] for row in results["memory"]["rows"]} >= {"exact (one pass)", "close_pairs, list in use"}
    # the step target is stated for the smoke shape too (marked as having no target there)
    assert any("no target at this shape" in t["target"] for t in results["targets"])
    assert "Results in" in capsys.readouterr().out


def test_merge_keeps_the_sections_not_rerun_with_their_own_command(tmp_path):
    speed.main(["--preset", "smoke", "--sections", "memory", "--out", str(tmp_path)])
    results = speed.main(["--preset", "smoke", "--sections", "whole_run", "--out", str(tmp_path), "--merge"])
    assert {"memory", "whole_run"} <= set(results)
    assert "--sections memory" in results["section_meta"]["memory"]["command"]
    assert "--sections whole_run" in results["section_meta"]["whole_run"]["command"]


def test_whole_run_times_bf16_products_where_they_are_timed_and_reports_their_error(tmp_path, monkeypatch):
    from benchmarks import whole_run

    monkeypatch.setattr(whole_run, "bf16_timed_on", lambda device: True)  # CUDA only outside this test
    results = speed.main(["--preset", "smoke", "--out", str(tmp_path), "--sections", "whole_run"])
    rows = [row for phase in results["whole_run"][0]["phases"] for row in phase["rows"] if row["variant"] == whole_run.BF16]
    assert len(rows) == 2
    for row in rows:
        assert 0 <= row["bf16_value_rel_error"] < 0.05 and 0 <= row["bf16_grad_rel_error"] < 0.05
    assert "bf16 error: value" in (tmp_path / "results.md").read_text()


def test_the_over_full_estimates_error_is_zero_for_one_chunk_and_shrinks_when_draws_are_averaged():
    import torch

    from benchmarks.whole_run import chunk_estimate_error
    from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig

    def error(chunks):
        torch.manual_seed(0)
        sae = OrthoContrastiveTrainingSAE(OrthoContrastiveTrainingSAEConfig(d_in=16, d_sae=64, ortho_overfull_chunks=chunks))
        return chunk_estimate_error(sae, tau=0.1, step=0)

    one = error(1)
    assert one["chunk_value_rms_rel_error"] < 1e-6 and one["chunk_grad_rms_rel_error"] < 1e-5
    four = error(4)
    assert four["chunk_value_rms_rel_error"] > 0.01 and four["chunk_grad_rms_rel_error"] > 0.1
    assert four["chunk_grad_rel_error_of_mean_of_8"] < four["chunk_grad_rms_rel_error"]
