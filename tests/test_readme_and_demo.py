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


def test_demo_trains_saves_and_reports(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "orthosae_plugin.demo", "--steps", "1000", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steps trained          1000 (= 256000 tokens // batch 256)" in result.stdout
    assert f"Saved a plugin-free `standard` SAE to {tmp_path / 'sae'}" in result.stdout
    ev_before, ev_after = map(float, re.search(r"explained variance\s+(\S+) -> (\S+)", result.stdout).groups())
    assert ev_after > max(ev_before, 0.5)
    assert (tmp_path / "sae" / "sae_weights.safetensors").exists()
    assert (tmp_path / "training_losses.png").stat().st_size > 10_000


@pytest.mark.parametrize("bad", [["--steps", "10"]])
def test_demo_refuses_a_budget_below_the_warm_up(tmp_path, bad):
    result = subprocess.run(
        [sys.executable, "-m", "orthosae_plugin.demo", *bad, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "= 10 training steps, fewer than contrastive_warm_up_steps=1000" in result.stderr
