"""``benchmarks.layer_table`` on the planted first-letter model (a one-layer toy whose
residual stream encodes each word's first letter along a known direction): SAEBench's
ground-truth probe finds the letters there, and the folder's README tabulates the JSON."""

import json

import pytest
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

from benchmarks import layer_table
from fixtures.planted import one_torch_thread  # noqa: F401  (pytest fixture)
from orthosae_plugin.evals.planted import build_planted_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_probe_finds_the_planted_letters_and_the_readme_tabulates_them(tmp_path):
    planted = build_planted_model()
    result = layer_table.measure(planted.model, [0], 20, 42, AbsorptionEvalConfig(), log=lambda _: None)
    row = result["layers"][0]
    assert row["letters_passing"] >= 24 and row["mean_f1"] > 0.9  # the letters are planted linearly
    assert set(row["per_letter_f1"]) == set("abcdefghijklmnopqrstuvwxyz")
    assert row["forward_seconds_32_prompts"] > 0
    result["command"] = "python -m benchmarks.layer_table --layers 0"
    (tmp_path / "layers_wpl20.json").write_text(json.dumps(result))
    readme = layer_table.write_readme(tmp_path).read_text()
    assert "`python -m benchmarks.layer_table --layers 0`" in readme
    assert f"| 0 | {row['mean_f1']:.3f} | {row['min_f1']:.3f} | {row['letters_passing']}/26 |" in readme
