"""The README's and docs/'s code runs as written, their links resolve, and the demo trains
and saves what it says."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import sae_lens

from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.cli import parse_train_args

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text()
EXAMPLE = re.compile(r"<!-- readme-example:([\w-]+) -->\n```python\n(.*?)```", re.S)
# Every tagged example in the README and docs/ is run by one test below.
TESTED_EXAMPLES = {"toy", "batchtopk", "absorption", "smollm2", "gemma", "sweep"}


def tagged_examples() -> dict[str, list[tuple[str, str]]]:
    """tag -> [(document, code)] over the README and every page of docs/."""
    found: dict[str, list[tuple[str, str]]] = {}
    for document in DOCUMENTS:
        for tag, code in EXAMPLE.findall(document.read_text()):
            found.setdefault(tag, []).append((str(document.relative_to(ROOT)), code))
    return found


def readme_block(tag: str) -> str:
    places = tagged_examples().get(tag, [])
    assert len(places) == 1, f"example {tag!r} must appear exactly once in README.md and docs/, found {places}"
    return places[0][1]


def test_every_tagged_example_is_run_by_a_test_and_appears_once():
    assert {tag: len(places) for tag, places in tagged_examples().items()} == dict.fromkeys(TESTED_EXAMPLES, 1)


def test_every_results_folder_with_a_table_has_its_readme():
    tables = [*ROOT.glob("benchmarks/results/**/table.md"), *ROOT.glob("benchmarks/results/**/results.md")]
    assert tables
    assert [str(t.parent) for t in tables if not (t.parent / "README.md").exists()] == []


def test_every_relative_link_in_the_readme_and_docs_points_to_an_existing_file():
    broken = []
    for document in [*DOCUMENTS, *sorted(ROOT.glob("benchmarks/results/**/README.md"))]:
        text = re.sub(r"```.*?```", "", document.read_text(), flags=re.S)  # code is not a link
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            path = (document.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_no_user_text_cites_the_design_notes_or_issue_numbers():
    """What users read (the README, docs/, the results' READMEs, the code's docstrings and
    comments, the set-up script) cites neither notes outside the repository nor issue numbers."""
    user_text = [*DOCUMENTS, *ROOT.glob("benchmarks/results/**/README.md"), *ROOT.glob("orthosae_plugin/**/*.py"),
                 *ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py"), *ROOT.glob("scripts/*")]
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in user_text for n, line in enumerate(path.read_text().splitlines(), 1)
             if "DESIGN" in line or re.search(r"\bissues? ?#?\d", line, re.I)]
    assert found == []


def test_readme_toy_example_trains_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("toy"), "toy", "exec"), {})
    assert capsys.readouterr().out.strip().endswith("ortho_contrastive 1200 steps")
    assert (tmp_path / "runs" / "readme" / "cfg.json").exists()


def test_readme_batchtopk_example_saves_a_jumprelu_sae(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("batchtopk"), "batchtopk", "exec"), {})
    assert capsys.readouterr().out.split() == [
        "OrthoContrastiveBatchTopKTrainingSAE", "100", "JumpReLUSAE", "jumprelu"
    ]


def test_readme_absorption_example_scores_the_planted_rate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("absorption"), "absorption", "exec"), {})
    lines = capsys.readouterr().out.splitlines()  # SAEBench prints progress lines too
    assert "0.29" in lines, lines
    assert lines[lines.index("0.29") + 1] == "trustworthy"
    assert (tmp_path / "runs" / "absorption").is_dir()


def test_readme_smollm2_example_trains_on_cached_activations(tmp_path, monkeypatch, capsys, smollm2_activations):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("smollm2"), "smollm2", "exec"), {})
    assert capsys.readouterr().out.strip().splitlines()[-1] == "40 ['ce_loss_clean', 'ce_loss_recovered', 'ce_loss_with_sae']"
    assert (tmp_path / "runs" / "smollm2" / "cfg.json").exists()


def test_readme_gemma_example_builds_a_valid_config(monkeypatch):
    built = {}

    class NoGemmaHere:  # the real runner would download Gemma-2-2B
        def __init__(self, cfg, **kwargs):
            built["cfg"] = cfg

        def run(self):
            return None

    monkeypatch.setattr(sae_lens, "LanguageModelSAETrainingRunner", NoGemmaHere)
    exec(compile(readme_block("gemma"), "gemma", "exec"), {})
    cfg = built["cfg"]
    assert isinstance(cfg.sae, OrthoContrastiveTrainingSAEConfig)
    assert cfg.hook_name == "blocks.19.hook_resid_post"
    assert cfg.sae.ortho_anneal_steps == 30_000
    assert cfg.sae.projection_dim == 128


def test_readme_sweep_trains_three_sparsity_settings_for_the_whole_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("sweep"), "sweep", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert [line.split()[:3] for line in lines] == [
        ["l1_0.5", "200", "200"], ["l1_1", "200", "200"], ["l1_2", "200", "200"]
    ]
    l0 = [float(line.split()[3]) for line in lines]
    assert l0[0] > l0[1] > l0[2]  # more L1, fewer active latents
    for name in ("l1_0.5", "l1_1", "l1_2"):
        saved = json.loads((tmp_path / "runs" / "sweep" / name / "cfg.json").read_text())
        assert saved["architecture"] == "standard" and saved["metadata"]["training_steps"] == 200


def test_readme_command_line_parses_to_an_ortho_contrastive_config():
    block = re.search(r"```bash\n(orthosae-train .*?)```", README, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))[1:]
    cfg = parse_train_args(argv)
    assert isinstance(cfg.sae, OrthoContrastiveTrainingSAEConfig)
    assert cfg.sae.ortho_mode == "chunked"
    assert cfg.sae.ortho_anneal_steps == 122_880_000 // 4096


# --tokens 20000 reuses the session's SmolLM2 activation cache (tests/conftest.py), so the
# demo's only model forward here is its held-out eval; one pass over it, at a higher learning
# rate than the demo's (its 40 steps are a check that everything runs, not a trained SAE).
DEMO_QUICK = ["--tokens", "20000", "--epochs", "1", "--lr", "4e-3", "--batch-size", "500", "--d-sae", "1152",
              "--eval-tokens", "1024"]


def test_demo_trains_on_smollm2_saves_and_reports(tmp_path, smollm2_activations):
    result = subprocess.run(
        [sys.executable, "-m", "orthosae_plugin.smollm2.demo", *DEMO_QUICK, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "on blocks.15.hook_resid_post of SmolLM2-135M-Instruct (smollm2-135m-instruct-q4_1)" in out
    assert "steps trained          40 (= 20000 tokens // batch 500)" in out
    assert "ortho term             computed every 4 steps with that weight (weighted)" in out
    assert f"Saved a plugin-free `standard` SAE to {tmp_path / 'sae'}" in out
    ev = float(re.search(r"explained variance\s+(\S+)", out).group(1))
    ce = float(re.search(r"CE-loss recovered\s+(\S+)", out).group(1))
    l0 = float(re.search(r"\bL0\s+(\S+)", out).group(1))
    assert 0.3 < ev < 1 and 0 < ce < 1 and 0 < l0 < 1152
    assert (tmp_path / "sae" / "sae_weights.safetensors").exists()
    assert (tmp_path / "training_losses.png").stat().st_size > 10_000


def test_demo_refuses_a_budget_below_the_warm_up(tmp_path, smollm2_activations):
    result = subprocess.run(
        [sys.executable, "-m", "orthosae_plugin.smollm2.demo", *DEMO_QUICK, "--warm-up-steps", "1000", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "= 40 training steps, fewer than contrastive_warm_up_steps=1000" in result.stderr


def test_docs_config_documents_every_field_of_the_config():
    import dataclasses

    documented = set(re.findall(r"^\| `(\w+)`", (ROOT / "docs" / "config.md").read_text(), re.M))
    documented |= {f"ortho_threshold_{end}" for end in ("start", "end")}  # one row for the pair
    fields = {f.name for f in dataclasses.fields(OrthoContrastiveTrainingSAEConfig)}
    assert sorted(fields - documented) == []
