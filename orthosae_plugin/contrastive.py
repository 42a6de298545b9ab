"""Self-contrastive reconstruction loss through a fixed random projection (DESIGN.md §1.2).

Each reconstruction must be closer to its own input than to the other inputs of the
batch (InfoNCE with the positives on the diagonal):

    c      = mean of x over the batch          (centring: raw residual-stream vectors all
                                                point roughly the same way)
    z      = normalize((x - c) P)     z_hat = normalize((x_hat - c) P)        # (B, k)
    S      = z_hat z^T / temperature                                          # (B, B)
    L_con  = cross_entropy(S, labels = arange(B))

``P`` is a fixed Gaussian ``(d_in, k)`` matrix with entries ``N(0, 1/k)``. Without it
(``projection_DK=None``) the similarities are exact cosines (the experiment's SS-COSAE
baseline). Projecting costs ``O(B d_in k)`` and the similarity matrix ``O(B^2 k)``
instead of ``O(B^2 d_in)``, and only ``(B, k)`` tensors are kept for backward.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def make_projection(
    d_in: int,
    k: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The fixed ``(d_in, k)`` Gaussian projection, entries ``N(0, 1/k)``, from ``seed``.

    Drawn on the CPU in float32 so that the same seed gives the same matrix on any
    device and in any dtype.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    P_DK = torch.randn(d_in, k, generator=generator, dtype=torch.float32) / k**0.5
    return P_DK.to(device=device, dtype=dtype)


def embed_for_similarity(
    v_BD: torch.Tensor, centre_D: torch.Tensor, projection_DK: torch.Tensor | None
) -> torch.Tensor:
    """``normalize((v - c) P)``, or ``normalize(v - c)`` without a projection."""
    centred_BD = v_BD - centre_D
    if projection_DK is not None:
        centred_BD = centred_BD @ projection_DK  # (B, k)
    return F.normalize(centred_BD, dim=-1)


def self_contrastive_loss(
    x_BD: torch.Tensor,
    x_hat_BD: torch.Tensor,
    temperature: float,
    projection_DK: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of reconstructions against their own inputs, positives on the diagonal.

    Args:
        x_BD: the SAE's inputs, ``(B, d_in)``; treated as constants.
        x_hat_BD: the reconstructions, ``(B, d_in)``; the gradient flows through these.
        temperature: divides the cosine similarities; must be > 0.
        projection_DK: the fixed ``(d_in, k)`` projection, or None for exact cosines.
    """
    batch_size = x_BD.shape[0]
    if batch_size < 2:
        raise ValueError(
            f"batch size={batch_size} is invalid for the self-contrastive loss: "
            "it needs at least 2 inputs per batch (the other inputs are the negatives)"
        )
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} is invalid: it must be > 0")
    x_BD = x_BD.detach()
    centre_D = x_BD.mean(dim=0)
    z_BK = embed_for_similarity(x_BD, centre_D, projection_DK)
    z_hat_BK = embed_for_similarity(x_hat_BD, centre_D, projection_DK)
    sim_BB = z_hat_BK @ z_BK.T / temperature
    labels_B = torch.arange(batch_size, device=x_BD.device)
    return F.cross_entropy(sim_BB.float(), labels_B)
