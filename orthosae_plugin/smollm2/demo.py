"""``orthosae-demo``: train an ``ortho_contrastive`` SAE on a real language model, offline.

SmolLM2-135M-Instruct (``orthosae_plugin.smollm2.model``; fetched and converted into the
cache on first use) reads public-domain English (Austen's novels and the World English Bible,
``orthosae_plugin.smollm2.corpus``). The residual stream after block 15 (the middle of its 30
layers) is cached once with SAELens's ``CacheActivationsRunner``, position 0 left out;
SAELens's ``LanguageModelSAETrainingRunner`` then trains ``ortho_contrastive`` on the cache
for the whole token budget and saves the plugin-free inference SAE. The demo prints what it
trained, then L0, explained variance and CE-loss recovered of the saved SAE on held-out text
(SAELens's evals), where it saved everything, and the wall time of each phase.

    orthosae-demo                              # or: python -m orthosae_plugin.smollm2.demo / make demo
    orthosae-demo --tokens 20000 --d-sae 1152  # a quick run (what the tests do)
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sae_lens import SAE  # noqa: E402

from orthosae_plugin.smollm2.activations import (  # noqa: E402
    SAVED_KWARGS_ADVICE,
    cache_info,
    cached_activations,
    heldout_metrics,
    smollm2_runner_config,
    smollm2_training_runner,
)
from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig  # noqa: E402
from orthosae_plugin.orthogonality import decoder_pair_stats  # noqa: E402
from orthosae_plugin.smollm2.model import load_smollm2  # noqa: E402

DEFAULT_LAYER = 15
DEFAULT_TOKENS = 97_536  # activations cached: 3 whole shards of the cache (the model's forward is the slow part)
DEFAULT_EPOCHS = 5  # passes over them: 476 steps of 1024 (a step costs ~1/6 of caching its tokens)
ORTHO_THRESHOLD_END = 0.1
"""The end of the ortho threshold's anneal: 2.4 / sqrt(576), what the package's
``ThresholdBelowChanceWarning`` recommends for SmolLM2's d_in = 576. The config's default,
0.05, is set for d_in = 2304 (Gemma-2-2B: 2.4 / 48); at d_in = 576 random directions
already reach |cos| 1 / sqrt(576) ~ 0.042, so 0.05 would penalise most decoder pairs rather
than near-duplicate latents."""
DEFAULT_L1 = 3.0
DEFAULT_LR = 1e-3
DEFAULT_NORMALIZE = "expected_average_only_in"
"""SAELens scales the activations to mean norm sqrt(d_in) for training (estimated on 100 batches)
and folds the factor into the saved weights, so l1 means the same at every layer."""


def record_losses(sae: OrthoContrastiveTrainingSAE) -> list[dict[str, float]]:
    """Record every loss term of every step (wraps the instance's forward pass, as
    SAELens's own `compile_sae` does)."""
    history: list[dict[str, float]] = []
    forward = sae.training_forward_pass

    def recording_forward(step_input):  # type: ignore[no-untyped-def]
        output = forward(step_input)
        history.append({k: v.item() for k, v in output.losses.items()})
        return output

    sae.training_forward_pass = recording_forward  # type: ignore[method-assign]
    return history


def plot_losses(history: list[dict[str, float]], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, len(history[0]), figsize=(4 * len(history[0]), 3))
    for ax, name in zip(axes, history[0]):
        ax.plot([h[name] for h in history])
        ax.set_title(name)
        ax.set_xlabel("training step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(out: Path, tokens: int = DEFAULT_TOKENS, layer: int = DEFAULT_LAYER, batch_size: int = 1024,
             d_sae: int = 2304, l1_coefficient: float = DEFAULT_L1, warm_up_steps: int | None = None,
             eval_tokens: int = 4096, lr: float = DEFAULT_LR, epochs: int = DEFAULT_EPOCHS,
             normalize_activations: str = DEFAULT_NORMALIZE) -> Path:
    """Cache ``tokens`` activations, train ``epochs`` passes over them, save and report; returns
    the folder of the saved inference SAE."""
    if epochs < 1:
        raise ValueError(f"epochs={epochs}; must be at least 1")
    clock = {"start": time.perf_counter()}
    model = load_smollm2()
    clock["model"] = time.perf_counter()
    hook = f"blocks.{layer}.hook_resid_post"
    activations = cached_activations(hook, n_tokens=tokens, model=model)
    info = cache_info(activations)
    clock["activations"] = time.perf_counter()

    steps = tokens * epochs // batch_size
    training_tokens = steps * batch_size  # whole batches: SAELens would train a last, partial one as a step
    sae_cfg = OrthoContrastiveTrainingSAEConfig(
        d_in=model.cfg.d_model, d_sae=d_sae, l1_coefficient=l1_coefficient,
        # the default warm-up (1000 steps) is longer than a CPU demo; a third of the run
        contrastive_warm_up_steps=max(1, steps // 3) if warm_up_steps is None else warm_up_steps,
        normalize_activations=normalize_activations, ortho_threshold_end=ORTHO_THRESHOLD_END,
    )
    cfg = smollm2_runner_config(sae_cfg, activations, training_tokens=training_tokens, lr=lr,
                                train_batch_size_tokens=batch_size, output_path=str(out / "sae"),
                                n_batches_for_norm_estimate=100)
    runner = smollm2_training_runner(cfg, model=model)
    history = record_losses(runner.sae)
    with warnings.catch_warnings():
        # SAELens says so at the start of every pass after the first; the demo asks for them
        # (`epochs`) and reports them below.
        warnings.filterwarnings("ignore", message="All samples in the training dataset have been exhausted")
        sae = runner.run()
    clock["training"] = time.perf_counter()
    plot_losses(history, out / "training_losses.png",
                f"ortho_contrastive on SmolLM2-135M {hook} (weighted loss terms)")

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SAVED_KWARGS_ADVICE)  # the model in hand is processed so
        saved = SAE.load_from_disk(out / "sae")  # what users get: a plain SAELens SAE
    metrics = heldout_metrics(saved, model, hook, n_tokens=eval_tokens)
    clock["eval"] = time.perf_counter()

    step = sae.current_step()
    max_cos, frac_above = decoder_pair_stats(sae.unit_decoder().detach(), sae.ortho_threshold_at(step))
    c = sae.cfg
    last_ortho = next((h["ortho_loss"] for h in reversed(history) if h.get("ortho_loss", 0.0) > 0), 0.0)
    phases = [("load model", "start", "model"), ("cache activations", "model", "activations"),
              ("train", "activations", "training"), ("held-out eval", "training", "eval")]
    print(
        f"\nTrained `{c.architecture()}` (d_in={c.d_in}, d_sae={c.d_sae}, {c.sparsity_base} base, "
        f"l1 {c.l1_coefficient}, lr {cfg.lr}, normalize_activations {normalize_activations}) on {hook} of SmolLM2-135M-Instruct ({model.cfg.model_name}) through "
        f"SAELens's runner, from activations cached once ({info['n_tokens']:,} tokens; position 0 of "
        f"each {info['context_size']}-token row left out).\n"
        f"  steps trained          {step} (= {cfg.training_tokens} tokens // batch {batch_size}), "
        f"{cfg.training_tokens / info['n_tokens']:.1f} passes over the cached activations\n"
        f"  ortho threshold        {c.ortho_threshold_start} -> {sae.ortho_threshold_at(step):.3f} "
        f"over {c.ortho_anneal_steps} steps ({c.ortho_mode})\n"
        f"  contrastive weight     0 -> {c.contrastive_coefficient} over "
        f"{c.contrastive_warm_up_steps} steps, k={c.projection_dim}\n"
        f"  decoder max |cos|      {max_cos:.3f}; pairs above threshold {frac_above:.2%}\n"
        f"  last step's losses     " + ", ".join(f"{k}={v:.4f}" for k, v in history[-1].items()) + "\n"
        f"  ortho term             computed every {c.ortho_lazy_every} steps with that weight "
        f"({c.ortho_lazy_mode}); last computed value {last_ortho:.4f}\n"
        f"Held-out text ({metrics['n_tokens']:,} tokens never trained on; SAELens's metric definitions, position 0 "
        f"excluded):\n"
        f"  L0                     {metrics['l0']:.1f}\n"
        f"  explained variance     {metrics['explained_variance']:.3f}\n"
        f"  CE-loss recovered      {metrics['ce_loss_recovered']:.3f} (CE clean {metrics['ce_loss_clean']:.3f}, "
        f"with SAE {metrics['ce_loss_with_sae']:.3f}, zero-ablated {metrics['ce_loss_zero_ablation']:.3f})\n"
        f"Saved a plugin-free `{saved.cfg.architecture()}` SAE to {out / 'sae'}\n"
        f"  load it with: SAE.load_from_disk({str(out / 'sae')!r})\n"
        f"Loss curves: {out / 'training_losses.png'}\n"
        f"Activations cache: {activations}\n"
        "Wall time: " + ", ".join(f"{name} {clock[b] - clock[a]:.0f} s" for name, a, b in phases)
        + f"; total {clock['eval'] - clock['start']:.0f} s"
    )
    return out / "sae"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                        help=f"activations cached, the tokens of one pass (default: {DEFAULT_TOKENS:,})")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"passes over the cached activations (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--layer", type=int, default=DEFAULT_LAYER,
                        help=f"train on blocks.LAYER.hook_resid_post (default: {DEFAULT_LAYER}, of 0-29)")
    parser.add_argument("--batch-size", type=int, default=1024, help="tokens per training batch (default: 1024)")
    parser.add_argument("--d-sae", type=int, default=2304, help="dictionary size (default: 2304 = 4 x 576)")
    parser.add_argument("--l1", type=float, default=DEFAULT_L1, help=f"L1 coefficient (default: {DEFAULT_L1:g})")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"learning rate (default: {DEFAULT_LR:g})")
    parser.add_argument("--normalize", choices=["none", DEFAULT_NORMALIZE], default=DEFAULT_NORMALIZE,
                        help=f"SAELens's normalize_activations (default: {DEFAULT_NORMALIZE})")
    parser.add_argument("--warm-up-steps", type=int, default=None,
                        help="contrastive_warm_up_steps (default: a third of the steps)")
    parser.add_argument("--eval-tokens", type=int, default=4096,
                        help="held-out tokens for L0 / explained variance / CE loss (default: 4096)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run_demo(args.out, tokens=args.tokens, layer=args.layer, batch_size=args.batch_size, d_sae=args.d_sae,
             l1_coefficient=args.l1, warm_up_steps=args.warm_up_steps, eval_tokens=args.eval_tokens, lr=args.lr,
             epochs=args.epochs, normalize_activations=args.normalize)


if __name__ == "__main__":
    main()
