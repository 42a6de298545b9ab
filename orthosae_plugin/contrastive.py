"""Self-contrastive reconstruction loss through a fixed random projection; the maths in docs/method.md.

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
instead of ``O(B^2 d_in)``, and only ``(B, k)`` tensors are kept for backward: the
InfoNCE is computed block by block of whole rows of ``S``, with its gradient finished in
the same pass, so no ``(B, B)`` tensor outlives a block.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
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
    if projection_DK is None:
        return F.normalize(v_BD - centre_D, dim=-1)
    # (v - c) P = v P - c P: the centring is a (B, k) subtraction instead of a (B, d_in) one.
    return F.normalize(v_BD @ projection_DK - centre_D @ projection_DK, dim=-1)  # (B, k)


class _BlockwiseInfoNCE(torch.autograd.Function):
    """``mean_b [logsumexp_j S_bj - S_bb]`` with ``S = z_hat z^T / temperature``.

    ``z`` (the embedded inputs) is a constant. Each block of rows of ``S`` holds whole
    rows, so the forward pass finishes their softmax there and then, and computes the
    gradient with respect to ``z_hat`` at once: ``dL/dz_hat = (softmax(S) - I) z / (B T)``.
    Only that ``(B, k)`` gradient is kept for backward (nothing is recomputed, and no
    ``(B, B)`` tensor outlives a block). Computed in at least float32.
    """

    @staticmethod
    def forward(ctx, z_hat_BK: torch.Tensor, z_BK: torch.Tensor, temperature: float, block_size: int) -> torch.Tensor:  # type: ignore[override]
        batch_size = z_hat_BK.shape[0]
        acc_dtype = torch.promote_types(z_hat_BK.dtype, torch.float32)
        scaled_z_hat_BK = z_hat_BK / temperature  # dividing (B, k), not each (B, B) block
        want_grad = ctx.needs_input_grad[0]
        grad_z_hat_BK = torch.empty_like(z_hat_BK) if want_grad else None
        total = torch.zeros((), dtype=acc_dtype, device=z_hat_BK.device)
        for start in range(0, batch_size, block_size):
            stop = min(start + block_size, batch_size)
            sim_bB = (scaled_z_hat_BK[start:stop] @ z_BK.T).to(acc_dtype)
            rows_b = torch.arange(stop - start, device=sim_bB.device)
            positive_b = sim_bB[rows_b, rows_b + start]  # the positives, on the diagonal
            max_b = sim_bB.amax(dim=1)
            exp_bB = sim_bB.sub_(max_b[:, None]).exp_()  # in place: four passes over the block
            sum_b = exp_bB.sum(dim=1)
            total += (max_b + sum_b.log() - positive_b).sum()
            if grad_z_hat_BK is not None:  # row i: sum_j softmax_ij z_j - z_i
                weighted_bK = (exp_bB.to(z_BK.dtype) @ z_BK).div_(sum_b[:, None].to(z_BK.dtype))
                grad_z_hat_BK[start:stop] = weighted_bK.sub_(z_BK[start:stop])
        if grad_z_hat_BK is not None:
            ctx.save_for_backward(grad_z_hat_BK.div_(batch_size * temperature))
        return total / batch_size

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (grad_z_hat_BK,) = ctx.saved_tensors
        return grad_z_hat_BK * grad_out.to(grad_z_hat_BK.dtype), None, None, None


def self_contrastive_loss(
    x_BD: torch.Tensor,
    x_hat_BD: torch.Tensor,
    temperature: float,
    projection_DK: torch.Tensor | None = None,
    block_size: int = 1024,
) -> torch.Tensor:
    """InfoNCE of reconstructions against their own inputs, positives on the diagonal.

    Args:
        x_BD: the SAE's inputs, ``(B, d_in)``; treated as constants.
        x_hat_BD: the reconstructions, ``(B, d_in)``; the gradient flows through these.
        temperature: divides the cosine similarities; must be > 0.
        projection_DK: the fixed ``(d_in, k)`` projection, or None for exact cosines.
        block_size: rows of the ``(B, B)`` similarity matrix computed at a time; changes
            memory, not the result.
    """
    batch_size = x_BD.shape[0]
    if batch_size < 2:
        raise ValueError(
            f"batch size={batch_size} is invalid for the self-contrastive loss: "
            "it needs at least 2 inputs per batch (the other inputs are the negatives)"
        )
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} is invalid: it must be > 0")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} is invalid: it must be >= 1")
    x_BD = x_BD.detach()
    centre_D = x_BD.mean(dim=0)
    z_BK = embed_for_similarity(x_BD, centre_D, projection_DK)
    z_hat_BK = embed_for_similarity(x_hat_BD, centre_D, projection_DK)
    return _BlockwiseInfoNCE.apply(z_hat_BK, z_BK, float(temperature), int(block_size))  # type: ignore[no-any-return]
