"""Section 5: how well the projected similarities approximate the exact ones, against k.

On two kinds of data:

- 'toy model': residual-stream activations of the end-to-end test model
  (``orthosae_plugin.toy``, ``blocks.1.hook_resid_post``, ``d_in = 64``), reconstructed by
  a SAELens ``standard`` SAE trained on them here for a few hundred steps;
- 'gaussian': ``x ~ N(1, I)`` in ``d_in`` dimensions, ``x_hat = x + 0.3 N(0, I)``.

For each ``k`` and each of several projection seeds, on one batch:

- the error of the projected cosine against the exact one, over every (reconstruction,
  input) pair that enters ``S``: its mean (bias) and standard deviation, next to the
  Gaussian-projection prediction ``sqrt(mean((1 - rho^2)^2)) / sqrt(k)``;
- the gap between the projected and the exact InfoNCE loss;
- the cosine between the gradients of the two losses with respect to the reconstruction.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

from orthosae_plugin.contrastive import embed_for_similarity, make_projection, self_contrastive_loss
from orthosae_plugin.toy import ToySetup, tiny_model, tiny_token_dataset

TEMPERATURE = 0.1
L1_COEFFICIENT = 0.01
"""Sparsity weight of the toy SAE (SAELens's decoder-norm-weighted L1)."""


def toy_model_batch(batch: int, sae_steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, x_hat)`` from the end-to-end test model and an SAE trained on its activations."""
    setup = ToySetup(n_sequences=max(64, 4 * batch // ToySetup.context_size), seed=seed)
    model = tiny_model(setup)
    tokens = torch.tensor(tiny_token_dataset(setup)["tokens"])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=setup.hook_name)
    acts_ND = cache[setup.hook_name].flatten(0, 1)
    train_ND, held_out_ND = acts_ND[batch:], acts_ND[:batch]

    torch.manual_seed(seed)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=setup.d_model, d_sae=4 * setup.d_model))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(sae_steps):
        x_BD = train_ND[torch.randint(len(train_ND), (256,), generator=g)]
        out = sae.training_forward_pass(
            TrainStepInput(sae_in=x_BD, coefficients={"l1": L1_COEFFICIENT}, dead_neuron_mask=None,
                           n_training_steps=step, is_logging_step=False)
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        return held_out_ND, sae(held_out_ND)


def gaussian_batch(batch: int, d_in: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_BD = torch.randn(batch, d_in, generator=g) + 1.0
    return x_BD, x_BD + 0.3 * torch.randn(batch, d_in, generator=g)


def _loss_and_grad(x_BD: torch.Tensor, x_hat_BD: torch.Tensor, P_DK: torch.Tensor | None) -> tuple[float, torch.Tensor]:
    x_hat_BD = x_hat_BD.clone().requires_grad_(True)
    loss = self_contrastive_loss(x_BD, x_hat_BD, TEMPERATURE, P_DK)
    (grad_BD,) = torch.autograd.grad(loss, x_hat_BD)
    return loss.item(), grad_BD


def _cosines(x_BD: torch.Tensor, x_hat_BD: torch.Tensor, P_DK: torch.Tensor | None) -> torch.Tensor:
    """The ``(B, B)`` cosines that enter ``S``: reconstructions against inputs."""
    centre_D = x_BD.mean(dim=0)
    return embed_for_similarity(x_hat_BD, centre_D, P_DK) @ embed_for_similarity(x_BD, centre_D, P_DK).T


def measure(x_BD: torch.Tensor, x_hat_BD: torch.Tensor, ks: list[int], seeds: int) -> list[dict[str, Any]]:
    """One row per k: each measure's mean and std over the projection seeds."""
    d_in = x_BD.shape[1]
    rho_BB = _cosines(x_BD, x_hat_BD, None)
    predicted_std_unit_k = (1.0 - rho_BB.pow(2)).pow(2).mean().sqrt().item()
    exact_loss, exact_grad_BD = _loss_and_grad(x_BD, x_hat_BD, None)
    rows = []
    for k in ks:
        per_seed: dict[str, list[float]] = {"cos_error_mean": [], "cos_error_std": [], "loss_gap": [], "grad_cosine": []}
        for seed in range(seeds):
            P_DK = make_projection(d_in, k, seed=seed)
            error_BB = _cosines(x_BD, x_hat_BD, P_DK) - rho_BB
            loss, grad_BD = _loss_and_grad(x_BD, x_hat_BD, P_DK)
            per_seed["cos_error_mean"].append(error_BB.mean().item())
            per_seed["cos_error_std"].append(error_BB.std().item())
            per_seed["loss_gap"].append(loss - exact_loss)
            per_seed["grad_cosine"].append(
                torch.nn.functional.cosine_similarity(grad_BD.flatten(), exact_grad_BD.flatten(), dim=0).item()
            )
        row: dict[str, Any] = {"k": k, "predicted_cos_error_std": predicted_std_unit_k / k**0.5}
        for name, values in per_seed.items():
            row[name] = statistics.fmean(values)
            row[name + "_spread"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def run(
    ks: list[int],
    seeds: int,
    batch: int,
    gaussian_d_in: int,
    sae_steps: int,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    progress("approximation ablation: toy-model activations")
    x_BD, x_hat_BD = toy_model_batch(batch, sae_steps)
    relative_error = ((x_hat_BD - x_BD).pow(2).sum() / (x_BD - x_BD.mean(0)).pow(2).sum()).item()
    toy = {"d_in": x_BD.shape[1], "fraction_of_variance_unexplained": relative_error, "rows": measure(x_BD, x_hat_BD, ks, seeds)}
    progress("approximation ablation: gaussian data")
    x_BD, x_hat_BD = gaussian_batch(batch, gaussian_d_in)
    gaussian = {"d_in": gaussian_d_in, "rows": measure(x_BD, x_hat_BD, ks, seeds)}
    return {"batch": batch, "seeds": seeds, "temperature": TEMPERATURE, "data": {"toy model": toy, "gaussian": gaussian}}
