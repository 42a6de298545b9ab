"""The speed benchmark runs end to end at tiny sizes (no timing is asserted)."""

import json

from benchmarks import speed


def test_speed_benchmark_writes_every_table_plot_and_target_at_smoke_sizes(tmp_path, capsys):
    results = speed.main(["--preset", "smoke", "--out", str(tmp_path)])

    assert set(results) == {"step", "contrastive", "ortho", "fidelity", "approximation", "targets", "meta"}
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["preset"] == "smoke"
    markdown = (tmp_path / "results.md").read_text()
    for heading in ["## Targets", "## 1. Training step", "## 2. Contrastive term", "## 3. Orthogonality term",
                    "## 4. close_pairs vs exact", "## 5. Approximation quality"]:
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
    assert len(fidelity["rows"]) == 6 and fidelity["summary"]["scans"] >= 1
    # the step target is stated for the smoke shape too (marked as having no target there)
    assert any("no target at this shape" in t["target"] for t in results["targets"])
    assert "Results in" in capsys.readouterr().out
