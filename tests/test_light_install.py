"""Without the ``[smollm2]`` extra, the architecture trains, saves and is evaluated, and the
real-model code says which extra is missing.

The process without the extra is ``tests/fixtures/light_install.py``'s (a Python whose
``site-packages`` is a view of this environment's without the extra's files): it runs the
absorption example (``examples/absorption_eval.py``: ``ortho_contrastive`` trained through
SAELens's runner on the planted model, the inference SAE saved, SAEBench's absorption eval run
on it), then calls the real-model code. What the test proves: the package, SAELens's training
runner on ``ortho_contrastive``, saving the inference SAE and the absorption eval on the planted
model (``orthosae_plugin.evals.planted``, SAEBench's steps) import and run without the extra's
packages, and the real-model code fails with the install command before downloading anything.
"""

from fixtures.light_install import EXTRA_DISTRIBUTIONS


def test_training_saving_and_the_absorption_eval_need_no_extra(run_without_the_extra):
    run = run_without_the_extra
    assert run["returncode"] == 0, run["stderr"][-3000:]
    report = run["report"]
    assert report["missing"] == list(EXTRA_DISTRIBUTIONS) and report["gguf_metadata"] is False
    assert report["architecture_trained"] == "ortho_contrastive"
    assert report["saved_architecture"] == "standard"
    assert report["absorption"] is not None and 0 <= report["absorption"] <= 1
    install = 'pip install "orthosae-plugin[smollm2]"'
    assert "needs gguf" in report["model"] and install in report["model"]
    assert "needs rdata, pysword" in report["text"] and install in report["text"]
    assert report["fetch"].startswith("error: ") and install in report["fetch"]
    assert report["cache_left_empty"]  # refused before anything was downloaded or written
