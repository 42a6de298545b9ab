"""Thresholded decoder orthogonality (DESIGN.md §1.1).

With ``D`` the decoder with unit-norm rows, ``C = D D^T`` and a threshold ``tau``:

    L_orth = mean_{i != j} relu(|C_ij| - tau)^2

Only pairs whose |cosine| exceeds ``tau`` are penalised. ``C`` is ``(n, n)``: 17 GB in
fp32 at ``n = 65536``, so nothing here ever materialises it whole.

- :func:`ortho_penalty_exact`: all pairs, block by block, with a custom backward that
  recomputes each block, so that memory is ``O(block_size * n)`` in the forward AND the
  backward pass.
- :func:`ortho_penalty_chunked`: OrtSAE-style (arXiv 2509.22033). A random permutation
  of the latents is cut into chunks and only pairs inside a chunk count. Normalised by
  the number of in-chunk pairs, its expectation over permutations equals the exact mean.
- :func:`decoder_pair_stats`: the max |cos| and the share of pairs above ``tau``, for
  logging.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

ORTHO_MODES = ("exact", "chunked")


def ortho_threshold(step: int, start: float, end: float, horizon: int) -> float:
    """Cosine-annealed threshold: ``start`` at step 0, ``end`` at ``horizon`` and after.

    ``tau(t) = end + 0.5 (start - end) (1 + cos(pi min(t, T) / T))``.
    """
    if horizon < 1:
        raise ValueError(f"horizon={horizon} is invalid: the anneal horizon must be >= 1 step")
    progress = min(max(step, 0), horizon) / horizon
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def _block_cosines(D_nd: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of ``C = D D^T`` with the self-pairs (i == j) set to 0."""
    C_bn = D_nd[start:stop] @ D_nd.T
    rows = torch.arange(stop - start, device=D_nd.device)
    C_bn[rows, rows + start] = 0.0
    return C_bn


class _ThresholdedCosineSquaredSum(torch.autograd.Function):
    """``sum_{i != j} relu(|C_ij| - tau)^2`` over all ordered pairs, blockwise.

    Forward keeps only ``D``; backward recomputes each block of ``C`` and uses
    ``dS/dD = 2 G D`` with ``G_ij = 2 sign(C_ij) relu(|C_ij| - tau)`` (``G`` is symmetric).
    """

    @staticmethod
    def forward(ctx, D_nd: torch.Tensor, tau: float, block_size: int) -> torch.Tensor:  # type: ignore[override]
        n = D_nd.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=D_nd.device)
        for start in range(0, n, block_size):
            C_bn = _block_cosines(D_nd, start, min(start + block_size, n))
            total += F.relu(C_bn.abs() - tau).float().pow(2).sum()
        ctx.save_for_backward(D_nd)
        ctx.tau = tau
        ctx.block_size = block_size
        return total.to(D_nd.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (D_nd,) = ctx.saved_tensors
        n = D_nd.shape[0]
        grad_nd = torch.empty_like(D_nd)
        for start in range(0, n, ctx.block_size):
            stop = min(start + ctx.block_size, n)
            C_bn = _block_cosines(D_nd, start, stop)
            G_bn = 2.0 * torch.sign(C_bn) * F.relu(C_bn.abs() - ctx.tau)
            grad_nd[start:stop] = 2.0 * (G_bn @ D_nd)
        return grad_nd * grad_out.to(D_nd.dtype), None, None


def thresholded_cosine_squared_sum(
    D_nd: torch.Tensor, tau: float, block_size: int
) -> torch.Tensor:
    """``sum_{i != j} relu(|D_i . D_j| - tau)^2`` in ``O(block_size * n)`` memory."""
    return _ThresholdedCosineSquaredSum.apply(D_nd, float(tau), int(block_size))  # type: ignore[no-any-return]


def ortho_penalty_exact(D_nd: torch.Tensor, tau: float, block_size: int = 1024) -> torch.Tensor:
    """``mean_{i != j} relu(|C_ij| - tau)^2`` over all ``n (n - 1)`` ordered pairs.

    Args:
        D_nd: decoder directions with unit-norm rows, ``(n, d_in)``.
        tau: threshold in ``[0, 1]``.
        block_size: rows of ``C`` computed at a time; changes memory, not the result.
    """
    n = D_nd.shape[0]
    if n < 2:
        return D_nd.sum() * 0.0
    return thresholded_cosine_squared_sum(D_nd, tau, block_size) / (n * (n - 1))


def ortho_penalty_chunked(
    D_nd: torch.Tensor,
    tau: float,
    chunk_size: int,
    generator: torch.Generator,
    block_size: int = 1024,
) -> torch.Tensor:
    """The penalty over pairs inside random chunks of at most ``chunk_size`` latents.

    Divided by the number of in-chunk ordered pairs, which is fixed by ``n`` and
    ``chunk_size``, so its expectation over permutations is the exact mean, and with a
    single chunk (``chunk_size >= n``) it IS the exact mean.
    """
    n = D_nd.shape[0]
    perm = torch.randperm(n, generator=generator, device=generator.device).to(D_nd.device)
    total = D_nd.sum() * 0.0
    n_pairs = 0
    for chunk in perm.split(chunk_size):
        c = chunk.numel()
        if c < 2:
            continue
        total = total + thresholded_cosine_squared_sum(D_nd[chunk], tau, block_size)
        n_pairs += c * (c - 1)
    return total / max(n_pairs, 1)


@torch.no_grad()
def decoder_pair_stats(
    D_nd: torch.Tensor, tau: float, block_size: int = 1024
) -> tuple[float, float]:
    """``(max_{i != j} |C_ij|, share of ordered pairs i != j with |C_ij| > tau)``."""
    n = D_nd.shape[0]
    if n < 2:
        return 0.0, 0.0
    max_abs = torch.zeros((), device=D_nd.device)
    n_above = torch.zeros((), dtype=torch.long, device=D_nd.device)
    for start in range(0, n, block_size):
        abs_C_bn = _block_cosines(D_nd, start, min(start + block_size, n)).abs()
        max_abs = torch.maximum(max_abs, abs_C_bn.max().float())
        n_above += (abs_C_bn > tau).sum()
    return max_abs.item(), n_above.item() / (n * (n - 1))
