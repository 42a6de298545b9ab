"""Scaffolding shared by the test files: tiny configs, step inputs, batches and toy runs,
and one Python process that never imports the plugin."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
from sae_lens.saes.sae import TrainStepInput

from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset

# The saved runs under tests/data/saved_runs/: SAELens runner checkpoints of two tiny
# ortho_contrastive runs, written by tests/data/write_saved_runs.py.
SAVED_RUN_BATCH = 32
SAVED_RUN_STEPS = 12
SAVED_RUN_CASES: dict[str, dict[str, Any]] = {
    "relu_l1_close_pairs": {"ortho_lazy_every": 2},
    "matryoshka_within_groups_reuse": {
        "sparsity_base": "matryoshka_batchtopk", "k": 4, "topk_threshold_lr": 0.5,
        "matryoshka_widths": [16, 32, 48], "matryoshka_ortho_pairs": "within_groups",
        "ortho_lazy_mode": "reuse", "ortho_lazy_every": 3,
    },
}


def saved_run_setup(case: str) -> ToySetup:
    """The toy run of the saved run ``case``."""
    sae_kwargs = {
        "d_sae": 48, "contrastive_warm_up_steps": 4, "ortho_coefficient": 5.0, "projection_dim": 8,
        "ortho_threshold_start": 0.2, "ortho_threshold_end": 0.02, **SAVED_RUN_CASES[case],
    }
    return ToySetup(d_model=16, n_layers=1, d_vocab=64, context_size=8, n_sequences=256, sae_kwargs=sae_kwargs)


def saved_run_runner(case: str, **runner_kwargs: Any) -> LanguageModelSAETrainingRunner:
    """SAELens's runner for the saved run ``case`` (``checkpoint_path``,
    ``resume_from_checkpoint``, ... in ``runner_kwargs``)."""
    toy = saved_run_setup(case)
    cfg = tiny_runner_config(toy, training_tokens=SAVED_RUN_BATCH * SAVED_RUN_STEPS,
                             train_batch_size_tokens=SAVED_RUN_BATCH, **runner_kwargs)
    return LanguageModelSAETrainingRunner(cfg, override_model=tiny_model(toy),
                                          override_dataset=tiny_token_dataset(toy))


def step_input(x: torch.Tensor, coefficients: dict[str, float], dead: torch.Tensor | None = None,
               logging: bool = False) -> TrainStepInput:
    """A hand-built step input at ``n_training_steps=0`` (the SAE keeps its own clock)."""
    return TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=dead,
                          n_training_steps=0, is_logging_step=logging)


def random_batch(B: int, d: int, seed: int) -> torch.Tensor:
    """``(B, d)`` Gaussian activations with mean 1, fixed by ``seed``."""
    return torch.randn(B, d, generator=torch.Generator().manual_seed(seed)) + 1.0


def dead_mask(d_sae: int, seed: int = 0) -> torch.Tensor:
    """About a third of the latents dead, so that the TopK auxiliary losses are not 0."""
    return torch.rand(d_sae, generator=torch.Generator().manual_seed(seed)) < 0.3


@torch.no_grad()
def perturb(sae: Any, seed: int = 0) -> Any:
    """Weights where every part of a base matters: decoder rows of unequal norms (the
    TopK rescaling and its fold), non-zero biases."""
    g = torch.Generator().manual_seed(seed)
    d_sae, d_in = sae.cfg.d_sae, sae.cfg.d_in
    sae.W_dec.mul_(torch.rand(d_sae, 1, generator=g) * 1.5 + 0.5)
    sae.W_enc.add_(0.05 * torch.randn(sae.W_enc.shape, generator=g))
    sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
    sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
    return sae


def shared_state(src: Any, dst: Any) -> None:
    """Copy ``src``'s tensors into ``dst`` for every key ``dst`` has."""
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in dst.state_dict()})


def runner_cfg(sae_cfg: Any, **kwargs: Any) -> LanguageModelSAERunnerConfig:
    """A SAELens runner config around ``sae_cfg`` (2000 steps of 4096 tokens unless
    ``kwargs`` say otherwise); builds no model."""
    defaults = dict(
        model_name="tiny", hook_name="blocks.0.hook_resid_post", dataset_path="in-memory",
        training_tokens=4096 * 2000, train_batch_size_tokens=4096, context_size=32,
        logger=LoggingConfig(log_to_wandb=False), verbose=False, checkpoint_path=None,
    )
    return LanguageModelSAERunnerConfig(sae=sae_cfg, **{**defaults, **kwargs})


# The plugin-free process: reads one JSON-encoded script per line, runs it in a fresh
# namespace with its prints captured, and answers one marked JSON line.
_PLUGIN_FREE_WORKER = r"""
import contextlib, io, json, sys, traceback
from sae_lens import SAE  # noqa: F401  (imported once, for every script)
for line in sys.stdin:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(json.loads(line), {"__name__": "__main__"})
        error = None
    except BaseException:
        error = traceback.format_exc()
    if error is None and any(m.split(".")[0] == "orthosae_plugin" for m in sys.modules):
        error = "a script imported orthosae_plugin"
    sys.stdout.write(MARK + json.dumps({"stdout": printed.getvalue(), "error": error}) + "\n")
    sys.stdout.flush()
"""
_MARK = "@@plugin-free-result@@ "


class PluginFreePython:
    """A Python process that never imports the plugin, for the tests that load a saved SAE
    "without the plugin". Importing SAELens takes seconds, so one process (started at the
    first script) runs every such test's script, each in a fresh namespace, and fails any
    script after which a module of the plugin is loaded."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._reader = ThreadPoolExecutor(max_workers=1)

    def run(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``script``; returncode 0 and what it printed, or 1 and its traceback as stderr."""
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-c", f"MARK = {_MARK!r}\n" + _PLUGIN_FREE_WORKER],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(script) + "\n")
        process.stdin.flush()

        def answer() -> dict[str, Any]:
            for line in process.stdout:  # lines a library wrote to the real stdout are skipped
                if line.startswith(_MARK):
                    return json.loads(line[len(_MARK):])
            return {"stdout": "", "error": f"the plugin-free process ended (exit status {process.wait()})"}

        result = self._reader.submit(answer).result(timeout=timeout)
        return subprocess.CompletedProcess(["plugin-free python"], 0 if result["error"] is None else 1,
                                           result["stdout"], result["error"] or "")

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            self._process.wait(timeout=60)
        self._reader.shutdown()
