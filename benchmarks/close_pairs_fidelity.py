"""Section 4: 'close_pairs' against 'exact' along a real training run.

'close_pairs' equals 'exact' at every step by construction: each step checks that no
unlisted pair can have crossed the threshold since the scan (the two largest row
movements against the slack), scans ahead of time when the rows' pace would use the
slack up, and recomputes the step on a fresh scan when the check fails. How often it
scans depends on how fast decoder directions move, so this trains an
``ortho_contrastive`` SAE at its defaults (Adam at SAELens's default learning rate, the
threshold annealed over the whole run) on synthetic activations (sparse combinations of
a hidden dictionary, with or without a shared offset as in residual streams), and at
every ortho step also computes the exact ortho loss of the same weights. Reported: the
relative error of the 'close_pairs' loss (rounding only), scans and recomputed steps per
1,000 steps, the share of pairs listed, and the steps computed exactly (over-full list).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from sae_lens.saes.sae import TrainStepInput
from tqdm import tqdm

from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.orthogonality import ortho_penalty_exact


def synthetic_batch(true_dict_FD: torch.Tensor, batch: int, generator: torch.Generator, offset: float = 0.5) -> torch.Tensor:
    """Sparse non-negative combinations of the hidden dictionary's rows, noise and an offset,
    on the dictionary's device (``generator`` must live there too: at the GPU preset's
    sizes a batch is ~0.3 TFLOP, seconds on a CPU)."""
    n_features, d_in = true_dict_FD.shape
    device = true_dict_FD.device
    codes_BF = (torch.rand(batch, n_features, generator=generator, device=device) < 0.02) * torch.rand(
        batch, n_features, generator=generator, device=device) * 3
    return codes_BF @ true_dict_FD + 0.1 * torch.randn(batch, d_in, generator=generator, device=device) + offset


def run(
    d_in: int,
    d_sae: int,
    batch: int,
    steps: int,
    offsets: list[float],
    device: str,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """One training run per data offset."""
    runs = {}
    for offset in offsets:
        progress(f"close_pairs vs exact along {steps} training steps, d_in={d_in} d_sae={d_sae} "
                 f"batch={batch}, data offset {offset}")
        runs[f"offset {offset}"] = _one_run(d_in, d_sae, batch, steps, offset, device)
    return {"d_in": d_in, "d_sae": d_sae, "batch": batch, "steps": steps, "runs": runs}


def _one_run(d_in: int, d_sae: int, batch: int, steps: int, offset: float, device: str, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator(device=device).manual_seed(seed)
    true_dict_FD = torch.nn.functional.normalize(torch.randn(2 * d_sae, d_in, generator=g, device=device), dim=1)
    torch.manual_seed(seed)
    cfg = OrthoContrastiveTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, device=device, ortho_mode="close_pairs", ortho_anneal_steps=steps,
        contrastive_warm_up_steps=min(50, steps),
        ortho_overfull_chunks=1,  # over-full steps compute the exact term: this section is about the list
    )
    lazy = cfg.ortho_lazy_every
    sae = OrthoContrastiveTrainingSAE(cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-4)
    rows = []
    for step in tqdm(range(steps), desc="close_pairs fidelity", leave=False):
        scans_before, recomputed_before = sae.ortho_scans, sae.ortho_recomputed_steps
        x_BD = synthetic_batch(true_dict_FD, batch, g, offset)
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x_BD,
                coefficients={"l1": cfg.l1_coefficient, "ortho": cfg.ortho_coefficient,
                              "contrastive": cfg.contrastive_coefficient * min(1.0, step / max(cfg.contrastive_warm_up_steps, 1))},
                dead_neuron_mask=None,
                n_training_steps=step,
                is_logging_step=False,
            )
        )
        scanned = sae.ortho_scans - scans_before
        recomputed = sae.ortho_recomputed_steps - recomputed_before
        if step % lazy == 0:
            with torch.no_grad():
                exact = ortho_penalty_exact(sae.unit_decoder(), sae.ortho_threshold_at(step), cfg.ortho_block_size).item()
            got = out.losses["ortho_loss"].item() / (cfg.ortho_coefficient * lazy)
            pairs = sae.ortho_close_pairs
            rows.append(
                {
                    "step": step,
                    "tau": sae.ortho_threshold_at(step),
                    "close_pairs_loss": got,
                    "exact_loss": exact,
                    "relative_error": abs(got - exact) / exact if exact > 0 else abs(got),
                    "listed_share": None if pairs is None else pairs.shape[0] / (d_sae * (d_sae - 1)),
                    "fell_back_to_exact": pairs is None,
                    "scanned": scanned > 0,
                    "recomputed": recomputed > 0,
                }
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    listed = [r for r in rows if not r["fell_back_to_exact"]]
    errors = [r["relative_error"] for r in listed]
    return {
        "margin": cfg.ortho_margin, "rescan_every": cfg.ortho_rescan_every, "max_pair_fraction": cfg.ortho_max_pair_fraction,
        "lazy_every": lazy,
        "summary": {
            "scans": sae.ortho_scans,
            "scans_per_1000_steps": 1000 * sae.ortho_scans / steps,
            "scans_while_on_the_list_per_1000_steps": 1000 * sum(r["scanned"] for r in listed) / steps,
            "recomputed_steps": sae.ortho_recomputed_steps,
            "recomputed_per_1000_steps": 1000 * sae.ortho_recomputed_steps / steps,
            "ortho_steps": len(rows),
            "steps_on_the_list": len(listed),
            "steps_fell_back_to_exact": len(rows) - len(listed),
            "median_relative_error": statistics.median(errors) if errors else None,
            "max_relative_error": max(errors) if errors else None,
            "max_absolute_error": max((abs(r["close_pairs_loss"] - r["exact_loss"]) for r in listed), default=None),
            "steps_with_relative_error_above_1e-3": sum(e > 1e-3 for e in errors),
            "first_such_step": next((r["step"] for r in listed if r["relative_error"] > 1e-3), None),
        },
        "rows": rows,
    }
