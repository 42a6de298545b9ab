"""``orthosae-demo``: train a small ``ortho_contrastive`` SAE offline, end to end.

A tiny randomly initialised transformer and an in-memory token dataset are built
locally; SAELens's ``LanguageModelSAETrainingRunner`` trains the SAE with the method's
default schedules (threshold 0.3 -> 0.05, contrastive weight 0 -> 0.3 over 1000 steps,
k = 128) for the whole token budget and saves the plugin-free inference SAE. The demo
then prints what it trained, held-out reconstruction numbers before and after, and
where everything was saved, including a plot of every loss term per step.

    orthosae-demo                      # or: python -m orthosae_plugin.demo
    orthosae-demo --steps 1200 --out runs/demo
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sae_lens import SAE, LanguageModelSAETrainingRunner  # noqa: E402

from orthosae_plugin.ortho_contrastive import OrthoContrastiveTrainingSAE  # noqa: E402
from orthosae_plugin.orthogonality import decoder_pair_stats  # noqa: E402
from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset  # noqa: E402


@torch.no_grad()
def reconstruction_report(sae: SAE, acts_ND: torch.Tensor) -> dict[str, float]:
    """Held-out MSE (summed over d_in, as SAELens), explained variance and L0."""
    feats_NS = sae.encode(acts_ND)
    recon_ND = sae.decode(feats_NS)
    sq_err_N = (recon_ND - acts_ND).pow(2).sum(-1)
    total_var_N = (acts_ND - acts_ND.mean(0)).pow(2).sum(-1)
    return {
        "mse": sq_err_N.mean().item(),
        "explained_variance": 1 - (sq_err_N.sum() / total_var_N.sum()).item(),
        "l0": (feats_NS > 0).float().sum(-1).mean().item(),
    }


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


def plot_losses(history: list[dict[str, float]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(history[0]), figsize=(4 * len(history[0]), 3))
    for ax, name in zip(axes, history[0]):
        ax.plot([h[name] for h in history])
        ax.set_title(name)
        ax.set_xlabel("training step")
    fig.suptitle("ortho_contrastive on the toy model (weighted loss terms)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(out: Path, steps: int = 1500, batch_size: int = 256, d_sae: int = 256) -> Path:
    """Train, save and report; returns the folder of the saved inference SAE."""
    setup = ToySetup(sae_kwargs={"d_sae": d_sae})
    cfg = tiny_runner_config(
        setup,
        training_tokens=steps * batch_size,
        train_batch_size_tokens=batch_size,
        output_path=str(out / "sae"),
        checkpoint_path=None,
    )
    model = tiny_model(setup)
    runner = LanguageModelSAETrainingRunner(
        cfg, override_model=model, override_dataset=tiny_token_dataset(setup)
    )
    held_out = ToySetup(seed=setup.seed + 1, n_sequences=64)
    tokens = torch.tensor(tiny_token_dataset(held_out)["tokens"])
    _, cache = model.run_with_cache(tokens, names_filter=setup.hook_name)
    acts_ND = cache[setup.hook_name].flatten(0, 1)

    before = reconstruction_report(runner.sae, acts_ND)
    history = record_losses(runner.sae)
    sae = runner.run()
    saved = SAE.load_from_disk(out / "sae")  # what users get: a plain `standard` SAE
    after = reconstruction_report(saved, acts_ND)
    plot_losses(history, out / "training_losses.png")

    step = sae.current_step()
    max_cos, frac_above = decoder_pair_stats(sae.unit_decoder().detach(), sae.ortho_threshold_at(step))
    c = sae.cfg
    print(
        f"\nTrained `{c.architecture()}` (d_in={c.d_in}, d_sae={c.d_sae}) on {setup.hook_name} of a "
        f"random {setup.n_layers}-layer toy transformer through SAELens's runner.\n"
        f"  steps trained          {step} (= {cfg.training_tokens} tokens // batch {batch_size})\n"
        f"  ortho threshold        {c.ortho_threshold_start} -> {sae.ortho_threshold_at(step):.3f} "
        f"over {c.ortho_anneal_steps} steps ({c.ortho_mode})\n"
        f"  contrastive weight     0 -> {c.contrastive_coefficient} over "
        f"{c.contrastive_warm_up_steps} steps, k={c.projection_dim}\n"
        f"  decoder max |cos|      {max_cos:.3f}; pairs above threshold {frac_above:.2%}\n"
        f"  held-out MSE           {before['mse']:.3f} -> {after['mse']:.3f}\n"
        f"  explained variance     {before['explained_variance']:.3f} -> {after['explained_variance']:.3f}\n"
        f"  L0                     {before['l0']:.1f} -> {after['l0']:.1f}\n"
        f"  last step's losses     "
        + ", ".join(f"{k}={v:.4f}" for k, v in history[-1].items())
        + f"\nSaved a plugin-free `{saved.cfg.architecture()}` SAE to {out / 'sae'}\n"
        f"  load it with: SAE.load_from_disk({str(out / 'sae')!r})\n"
        f"Loss curves: {out / 'training_losses.png'}"
    )
    return out / "sae"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default: 1500; >= 1000 for the warm-up)")
    parser.add_argument("--batch-size", type=int, default=256, help="tokens per training batch (default: 256)")
    parser.add_argument("--d-sae", type=int, default=256, help="dictionary size (default: 256)")
    args = parser.parse_args(argv)
    run_demo(args.out, steps=args.steps, batch_size=args.batch_size, d_sae=args.d_sae)


if __name__ == "__main__":
    main()
