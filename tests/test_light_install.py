"""Without the ``[smollm2]`` extra, the architecture trains, saves and is evaluated, and the
real-model code says which extra is missing.

Building a fresh virtual environment without the extra would take minutes and the network, so
the test runs a Python whose only ``site-packages`` is a view of this environment's, with every
file of the extra's distributions (``gguf``, ``rdata``, ``pysword``) left out: they can be
neither imported nor found by ``importlib.metadata``, exactly as after ``pip install
orthosae-plugin`` without the extra. Their own dependencies (numpy, pandas, xarray, pyyaml, ...)
stay in the view; nothing of this package imports those directly. What the test proves: the
package, SAELens's training runner on ``ortho_contrastive``, saving the inference SAE and the
absorption eval on the planted model (``orthosae_plugin.evals.planted``, SAEBench's steps)
import and run without the extra's packages, and the real-model code fails with the install
command before downloading anything.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).parents[1]
EXTRA_DISTRIBUTIONS = ("gguf", "rdata", "pysword")


def site_packages_without_the_extra(view: Path) -> Path:
    """A folder of links to every entry of this environment's site-packages except the files
    of the extra's distributions (their packages and their ``.dist-info``)."""
    site = Path(sysconfig.get_paths()["purelib"])
    left_out = set()
    for name in EXTRA_DISTRIBUTIONS:
        distribution = importlib.metadata.distribution(name)
        assert Path(distribution.locate_file("")).resolve() == site.resolve(), f"{name} is not in {site}"
        left_out.update(Path(str(file)).parts[0] for file in distribution.files or [])
    left_out.discard("..")  # console scripts live in bin/, outside site-packages
    view.mkdir()
    for entry in site.iterdir():
        if entry.name not in left_out:
            (view / entry.name).symlink_to(entry)
    return view


LIGHT_RUN = r'''
import importlib.metadata, importlib.util, json, math, sys, site
from dataclasses import replace
from pathlib import Path

site.addsitedir(sys.argv[1])
out = Path(sys.argv[2])
report = {"missing": [name for name in ("gguf", "rdata", "pysword") if importlib.util.find_spec(name) is None]}
try:
    importlib.metadata.distribution("gguf")
    report["gguf_metadata"] = True
except importlib.metadata.PackageNotFoundError:
    report["gguf_metadata"] = False

import torch
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_lens import SAE, LanguageModelSAETrainingRunner

import orthosae_plugin  # noqa: F401  (registers ortho_contrastive)
from orthosae_plugin.evals.absorption import run_absorption_eval
from orthosae_plugin.evals.planted import build_planted_model
from orthosae_plugin.toy import ToySetup, tiny_runner_config
from datasets import Dataset

torch.set_num_threads(1)
planted = build_planted_model()
setup = ToySetup(d_model=planted.config.d_model, n_layers=planted.config.n_layers,
                 sae_kwargs={"d_sae": 128, "contrastive_warm_up_steps": 20})
steps, batch = 60, 128
cfg = replace(tiny_runner_config(setup, training_tokens=steps * batch, train_batch_size_tokens=batch,
                                 output_path=str(out / "sae")), model_name=planted.config.model_name)
generator = torch.Generator().manual_seed(0)
words_NS = planted.alpha_token_ids[torch.randint(len(planted.alpha_token_ids), (steps * batch // setup.context_size + 1,
                                                 setup.context_size), generator=generator)]
trained = LanguageModelSAETrainingRunner(cfg, override_model=planted.model,
                                         override_dataset=Dataset.from_dict({"tokens": words_NS.tolist()})).run()
report["architecture_trained"] = trained.cfg.architecture()

report["saved_architecture"] = SAE.load_from_disk(out / "sae").cfg.architecture()
output = run_absorption_eval(out / "sae", planted.model, out / "absorption",
                             AbsorptionEvalConfig(max_k_value=3, k_sparse_probe_num_epochs=20), show_progress=False)
score = output.eval_result_metrics.mean.mean_absorption_fraction_score
report["absorption"] = score if math.isfinite(score) else None

import os
os.environ["ORTHOSAE_CACHE"] = str(out / "empty-cache")
from orthosae_plugin.smollm2.cache import MissingExtra
from orthosae_plugin.smollm2.cli import main as smollm2_command
from orthosae_plugin.smollm2.corpus import debian_text_dir
from orthosae_plugin.smollm2.model import load_smollm2

for name, call in (("model", load_smollm2), ("text", debian_text_dir), ("fetch", lambda: smollm2_command(["fetch"]))):
    try:
        call()
        report[name] = "no error"
    except (MissingExtra, SystemExit) as error:
        report[name] = str(error)
report["cache_left_empty"] = not any((out / "empty-cache").rglob("*"))
print(json.dumps(report))
'''


def test_training_saving_and_the_absorption_eval_need_no_extra(tmp_path):
    view = site_packages_without_the_extra(tmp_path / "site-packages")
    result = subprocess.run(
        [sys.executable, "-S", "-c", LIGHT_RUN, str(view), str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["missing"] == list(EXTRA_DISTRIBUTIONS) and report["gguf_metadata"] is False
    assert report["architecture_trained"] == "ortho_contrastive"
    assert report["saved_architecture"] == "standard"
    assert report["absorption"] is not None and 0 <= report["absorption"] <= 1
    install = 'pip install "orthosae-plugin[smollm2]"'
    assert "needs gguf" in report["model"] and install in report["model"]
    assert "needs rdata, pysword" in report["text"] and install in report["text"]
    assert report["fetch"].startswith("error: ") and install in report["fetch"]
    assert report["cache_left_empty"]  # refused before anything was downloaded or written
