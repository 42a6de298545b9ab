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
