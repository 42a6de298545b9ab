"""``benchmarks.eval_noise`` writes its folder's README from the saved sections: each SAE's
spread over the eval seeds, its verdicts, and for a SAE trained by the benchmark what it is."""

import json
import shutil
from pathlib import Path

from benchmarks import eval_noise

COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "eval_noise"


def test_the_readme_tabulates_every_saved_section(tmp_path):
    for name in ("planted.json", "smollm2.json"):
        shutil.copy(COMMITTED / name, tmp_path / name)
    saved = json.loads((tmp_path / "smollm2.json").read_text())["results"]["smollm2_standard"]
    absorption = saved["spread"]["metrics"]["mean_absorption_fraction_score"]
    readme = eval_noise.write_readme(tmp_path).read_text()
    assert "## planted (" in readme and "## smollm2 (" in readme
    assert f"| smollm2_standard | 42, 43, 44 | 3 untrustworthy | {absorption['mean']:.4f} ± {absorption['std']:.4f}" in readme
    assert f"trained here on {saved['training_tokens']:,} tokens of layer 15" in readme


def test_a_loaded_sae_is_described_as_loaded_not_as_trained_here(tmp_path):
    section = json.loads((COMMITTED / "smollm2.json").read_text())
    row = section["results"].pop("smollm2_standard")
    for field in ("training_tokens", "train_seconds"):
        del row[field]
    row |= {"sae": "/cache/saes/oc-seed0", "architecture": "standard", "d_sae": 2304,
            "hook_name": "blocks.15.hook_resid_post"}
    section["results"]["oc-seed0"] = row
    (tmp_path / "smollm2-oc-seed0.json").write_text(json.dumps(section))
    readme = eval_noise.write_readme(tmp_path).read_text()
    assert "## smollm2-oc-seed0 (" in readme and "| oc-seed0 | 42, 43, 44 |" in readme
    assert ("`oc-seed0`: a saved `standard` SAE (d_sae 2304, `blocks.15.hook_resid_post`) loaded "
            "from its folder, scored at 100 words per letter.") in readme
    assert "trained here" not in readme
