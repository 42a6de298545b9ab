"""The README's code runs as written, and the demo trains and saves what it says."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import sae_lens

from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.cli import parse_train_args

README = (Path(__file__).parents[1] / "README.md").read_text()


def readme_block(tag: str) -> str:
    match = re.search(rf"<!-- readme-example:{tag} -->\n```python\n(.*?)```", README, re.S)
    assert match, f"README has no example tagged {tag}"
    return match.group(1)


def test_readme_toy_example_trains_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("toy"), "README.md:toy", "exec"), {})
    assert capsys.readouterr().out.strip().endswith("ortho_contrastive 1200 steps")
    assert (tmp_path / "runs" / "readme" / "cfg.json").exists()


def test_readme_batchtopk_example_saves_a_jumprelu_sae(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("batchtopk"), "README.md:batchtopk", "exec"), {})
    assert capsys.readouterr().out.split() == [
        "OrthoContrastiveBatchTopKTrainingSAE", "100", "JumpReLUSAE", "jumprelu"
    ]


def test_readme_absorption_example_scores_the_planted_rate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("absorption"), "README.md:absorption", "exec"), {})
    lines = capsys.readouterr().out.splitlines()  # SAEBench prints progress lines too
    assert "0.29" in lines, lines
    assert lines[lines.index("0.29") + 1] == "trustworthy"
    assert (tmp_path / "runs" / "absorption").is_dir()


def test_readme_smollm2_example_trains_on_cached_activations(tmp_path, monkeypatch, capsys, smollm2_activations):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("smollm2"), "README.md:smollm2", "exec"), {})
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
    exec(compile(readme_block("gemma"), "README.md:gemma", "exec"), {})
    cfg = built["cfg"]
    assert isinstance(cfg.sae, OrthoContrastiveTrainingSAEConfig)
    assert cfg.hook_name == "blocks.19.hook_resid_post"
    assert cfg.sae.ortho_anneal_steps == 30_000
    assert cfg.sae.projection_dim == 128


def test_readme_command_line_parses_to_an_ortho_contrastive_config():
    block = re.search(r"```bash\n(orthosae-train .*?)```", README, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))[1:]
    cfg = parse_train_args(argv)
    assert isinstance(cfg.sae, OrthoContrastiveTrainingSAEConfig)
    assert cfg.sae.ortho_mode == "chunked"
    assert cfg.sae.ortho_anneal_steps == 122_880_000 // 4096


# --tokens 20000 reuses the session's SmolLM2 activation cache (tests/conftest.py), so the
# demo's only model forward here is its held-out eval.
DEMO_QUICK = ["--tokens", "20000", "--batch-size", "500", "--d-sae", "1152", "--eval-tokens", "1024"]


def test_demo_trains_on_smollm2_saves_and_reports(tmp_path, smollm2_activations):
    result = subprocess.run(
        [sys.executable, "-m", "orthosae_plugin.demo", *DEMO_QUICK, "--out", str(tmp_path)],
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
        [sys.executable, "-m", "orthosae_plugin.demo", *DEMO_QUICK, "--warm-up-steps", "1000", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "= 40 training steps, fewer than contrastive_warm_up_steps=1000" in result.stderr
