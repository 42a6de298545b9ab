"""Thresholded decoder orthogonality: the kernels (pure functions of the decoder rows).

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
- :func:`close_pair_scan` and :func:`ortho_penalty_pairs`: the exact penalty at a cost
  proportional to the number of close pairs. The penalty is zero on every pair with
  ``|C_ij| <= tau``, so a blockwise scan lists the pairs above a threshold ``L < tau``;
  between scans, only the listed pairs are computed (a sampled dense-dense product and a
  sparse product, ``O(P * d_in)`` for ``P`` listed pairs).
- :func:`drift_bound`: why the list stays exact. For unit rows,
  ``|a'.b' - a.b| = |(a' - a).b' + a.(b' - b)| <= ||a' - a|| + ||b' - b||``, so no pair
  left out of a scan at ``L`` can exceed ``L + m_1 + m_2``, with ``m_1 >= m_2`` the two
  largest row movements since the scan. While ``m_1 + m_2 < tau - L`` the listed pairs
  are all the pairs that contribute, and the list's loss IS the exact loss.
- :func:`matryoshka_ortho_penalty`: the exact penalty over the pairs within one prefix
  level of a Matryoshka dictionary, or across two.
- :func:`decoder_pair_stats`: the max |cos| and the share of pairs above ``tau``, for
  logging.

``matmul_dtype`` (exact, chunked and the scan): the cosine and gradient products in a
lower precision (``torch.bfloat16``: several times faster on GPUs with bf16 tensor cores,
slower on most CPUs), accumulated and thresholded in float32. A bf16 cosine of two unit
rows is within :func:`matmul_rounding_bound` (3 units of bf16 roundoff, 0.0117) of the
float32 one when the products accumulate in float32 (:func:`float32_accumulation` makes
sure of it on CUDA), so the scan lowers its threshold by that much and the list stays
provably complete; the penalty and its gradient become approximations (their measured error is in
``benchmarks/results/speed``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
from torch.nn import functional as F

ORTHO_MATMUL_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
"""``ortho_matmul_dtype`` values: None = the decoder's own (at least float32) precision."""


def matmul_rounding_bound(matmul_dtype: torch.dtype | None) -> float:
    """How far a cosine of two unit rows computed in ``matmul_dtype`` can be from the exact
    one: 2u for rounding both rows (Cauchy-Schwarz) plus u for rounding the result, with u
    the dtype's unit roundoff (``finfo.eps / 2``); 0 for None (full precision)."""
    if matmul_dtype is None:
        return 0.0
    return 3.0 * torch.finfo(matmul_dtype).eps / 2


@contextlib.contextmanager
def float32_accumulation(matmul_dtype: torch.dtype | None) -> Iterator[None]:
    """While it runs, CUDA bf16 products accumulate in float32, so that
    :func:`matmul_rounding_bound` holds: PyTorch's default lets cuBLAS round split-K partial
    sums to bf16 (``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction``).
    The flag is put back afterwards. Nothing changes for ``matmul_dtype=None``."""
    if matmul_dtype is None:
        yield
        return
    flags = torch.backends.cuda.matmul
    before = flags.allow_bf16_reduced_precision_reduction
    flags.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        flags.allow_bf16_reduced_precision_reduction = before


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


def _upper_blocks(D_nd: torch.Tensor, block_size: int, D_mm: torch.Tensor | None = None):
    """``(start, stop, C_bm)`` for each row block: rows ``start:stop`` of ``C`` against the
    columns ``j >= start``, with the diagonal block's lower triangle and diagonal set to 0,
    so that every unordered pair ``i < j`` appears exactly once. ``D_mm``: the rows in the
    products' dtype (``C_bm`` is returned in ``D_nd``'s)."""
    n = D_nd.shape[0]
    D_mm = D_nd if D_mm is None else D_mm
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        C_bm = (D_mm[start:stop] @ D_mm[start:].T).to(D_nd.dtype)  # (b, n - start)
        C_bm[:, : stop - start].triu_(diagonal=1)
        yield start, stop, C_bm


class _ThresholdedCosineSquaredSum(torch.autograd.Function):
    """``sum_{i != j} relu(|C_ij| - tau)^2`` over all ordered pairs, blockwise, in one pass.

    ``C`` is symmetric, so each block of the upper triangle is computed once and serves
    both the value (counted twice: ``(i, j)`` and ``(j, i)``) and the gradient
    ``dS/dD = 2 G D`` with ``G_ij = 2 sign(C_ij) relu(|C_ij| - tau)``: a block ``G_IJ``
    adds ``G_IJ D_J`` to rows ``I`` and ``G_IJ^T D_I`` to rows ``J`` (a diagonal block,
    upper triangle only, adds ``(G_II + G_II^T) D_I`` in one product). When a gradient is
    needed it is computed in the forward pass and kept (``(n, d_in)``), so the backward is
    a scaling: ``1.5 n^2 d_in`` multiply-adds in all, against ``3 n^2 d_in`` for a forward
    and a recomputing backward over the whole matrix. Memory ``O(block_size * n + n d_in)``.
    """

    @staticmethod
    def forward(ctx, D_nd: torch.Tensor, tau: float, block_size: int, with_grad: bool,  # type: ignore[override]
                matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=D_nd.device)
        grad_nd = torch.zeros_like(D_nd) if with_grad else None
        D_mm = D_nd if matmul_dtype is None else D_nd.to(matmul_dtype)
        with float32_accumulation(matmul_dtype):
            for start, stop, C_bm in _upper_blocks(D_nd, block_size, D_mm):
                excess_bm = F.relu(C_bm.abs() - tau)
                total += excess_bm.float().pow(2).sum()
                if grad_nd is not None:
                    G_bm = excess_bm.mul_(torch.sign(C_bm)).mul_(2.0).to(D_mm.dtype)  # G on the upper triangle
                    b = stop - start
                    # The diagonal block's two triangles in one product, G_II + G_II^T
                    # (disjoint entries: the sum is exact in any dtype); then the rest.
                    G_bb = G_bm[:, :b]
                    grad_nd[start:stop] += (G_bb + G_bb.T) @ D_mm[start:stop]
                    if stop < D_nd.shape[0]:
                        G_br = G_bm[:, b:]
                        grad_nd[start:stop] += G_br @ D_mm[stop:]
                        grad_nd[stop:] += G_br.T @ D_mm[start:stop]
        ctx.save_for_backward(grad_nd if grad_nd is not None else D_nd.new_zeros(0))
        return (2.0 * total).to(D_nd.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (grad_nd,) = ctx.saved_tensors
        if grad_nd.numel() == 0:
            raise RuntimeError("thresholded_cosine_squared_sum: the forward ran without a gradient")
        return grad_nd * (2.0 * grad_out.to(grad_nd.dtype)), None, None, None, None


def thresholded_cosine_squared_sum(
    D_nd: torch.Tensor, tau: float, block_size: int, matmul_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``sum_{i != j} relu(|D_i . D_j| - tau)^2`` in ``O(block_size * n + n d_in)`` memory."""
    with_grad = torch.is_grad_enabled() and D_nd.requires_grad
    return _ThresholdedCosineSquaredSum.apply(D_nd, float(tau), int(block_size), with_grad, matmul_dtype)  # type: ignore[no-any-return]


def ortho_penalty_exact(
    D_nd: torch.Tensor, tau: float, block_size: int = 1024, matmul_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``mean_{i != j} relu(|C_ij| - tau)^2`` over all ``n (n - 1)`` ordered pairs.

    Args:
        D_nd: decoder directions with unit-norm rows, ``(n, d_in)``.
        tau: threshold in ``[0, 1]``.
        block_size: rows of ``C`` computed at a time; changes memory, not the result.
        matmul_dtype: the products in this dtype (module docstring); None: ``D_nd``'s.
    """
    n = D_nd.shape[0]
    if n < 2:
        return D_nd.sum() * 0.0
    return thresholded_cosine_squared_sum(D_nd, tau, block_size, matmul_dtype) / (n * (n - 1))


def ortho_penalty_chunked(
    D_nd: torch.Tensor,
    tau: float,
    chunk_size: int,
    generator: torch.Generator,
    block_size: int = 1024,
    matmul_dtype: torch.dtype | None = None,
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
    # One gather and one split: their backward passes each touch (n, d_in) once. Indexing
    # D_nd once per chunk would scatter a full (n, d_in) gradient per chunk (O(n^2 / c)).
    for chunk_cd in D_nd[perm].split(chunk_size):
        c = chunk_cd.shape[0]
        if c < 2:
            continue
        total = total + thresholded_cosine_squared_sum(chunk_cd, tau, block_size, matmul_dtype)
        n_pairs += c * (c - 1)
    return total / max(n_pairs, 1)


def matryoshka_ortho_penalty(
    D_nd: torch.Tensor, tau: float, widths: list[int], pairs: str, block_size: int = 1024,
    matmul_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The exact penalty's terms over the pairs within one prefix level
    (``pairs='within_groups'``) or across two levels (``'across_groups'``), divided by
    all ``n (n - 1)`` ordered pairs, like :func:`ortho_penalty_exact`.

    Args:
        D_nd: decoder directions with unit-norm rows, ``(n, d_in)``.
        widths: the nested prefix widths, strictly increasing, the last one ``n``.
    """
    n = D_nd.shape[0]
    if n < 2:
        return D_nd.sum() * 0.0
    within = D_nd.sum() * 0.0
    for start, stop in zip([0, *widths[:-1]], widths):
        if stop - start >= 2:
            within = within + thresholded_cosine_squared_sum(D_nd[start:stop], tau, block_size, matmul_dtype)
    if pairs == "within_groups":
        total = within
    elif pairs == "across_groups":
        total = thresholded_cosine_squared_sum(D_nd, tau, block_size, matmul_dtype) - within
    else:
        raise ValueError(f"pairs={pairs!r} is invalid: allowed are within_groups, across_groups")
    return total / (n * (n - 1))


@torch.no_grad()
def close_pair_scan(
    D_nd: torch.Tensor,
    threshold: float,
    block_size: int = 1024,
    max_pairs: int | None = None,
    matmul_dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """Every ordered pair ``(i, j)``, ``i != j``, with ``|C_ij| > threshold``, blockwise.
    With a ``matmul_dtype``, the cosines are computed in it and the threshold is lowered by
    :func:`matmul_rounding_bound`, so the list still holds every such pair (and a few more).

    Returns an int32 ``(P, 2)`` tensor holding both ``(i, j)`` and ``(j, i)``, sorted by
    ``i`` then ``j`` (the row-major order of a CSR matrix), or None as soon as more than
    ``max_pairs`` ordered pairs are found (so an over-full list is never built). Only
    the upper triangle of ``C`` is computed (``n^2 d_in`` multiply-adds); memory is
    ``O(block_size * n)`` plus the list. A negative threshold is treated as 0: a pair
    with ``C_ij = 0`` cannot contribute to the penalty.
    """
    n = D_nd.shape[0]
    if n > torch.iinfo(torch.int32).max:
        raise ValueError(f"d_sae={n} is invalid for the close-pair list: it must be < 2^31")
    threshold = max(float(threshold) - matmul_rounding_bound(matmul_dtype), 0.0)
    D_mm = D_nd if matmul_dtype is None else D_nd.to(matmul_dtype)
    upper: list[torch.Tensor] = []
    n_found = 0
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        with float32_accumulation(matmul_dtype):
            C_bm = (D_mm[start:stop] @ D_mm[start:].T).to(D_nd.dtype)  # rows start:stop, columns j >= start
        # strictly above the diagonal: local column c > local row r, i.e. j > i
        close_bm = torch.triu(C_bm.abs() > threshold, diagonal=1)
        pairs_U2 = close_bm.nonzero() + start
        n_found += 2 * pairs_U2.shape[0]
        if max_pairs is not None and n_found > max_pairs:
            return None
        upper.append(pairs_U2.int())
    pairs_U2 = torch.cat(upper) if upper else D_nd.new_zeros((0, 2), dtype=torch.int32)
    pairs_P2 = torch.cat([pairs_U2, pairs_U2.flip(1)])
    order_P = torch.argsort(pairs_P2[:, 0].long() * n + pairs_P2[:, 1].long())
    return pairs_P2[order_P]


@torch.no_grad()
def estimated_close_pairs(D_nd: torch.Tensor, threshold: float, sample_rows: int = 64) -> float:
    """An estimate of the number of ordered pairs ``i != j`` with ``|C_ij| > threshold``,
    from ``sample_rows`` evenly spaced rows against all (``sample_rows * n * d_in``
    multiply-adds; one device sync): their count scaled by ``n / sample_rows``. Used to
    skip the scan of a list that is still far over its cap."""
    n = D_nd.shape[0]
    rows = torch.arange(0, n, max(n // sample_rows, 1), device=D_nd.device)
    C_sn = D_nd[rows] @ D_nd.T
    C_sn[torch.arange(len(rows), device=D_nd.device), rows] = 0.0
    return (C_sn.abs() > threshold).sum().item() * n / len(rows)


def max_listed_pairs(n: int, max_pair_fraction: float, max_pairs_per_latent: float) -> int:
    """The most ordered pairs a close-pair list of ``n`` latents may hold: the smaller of
    ``max_pair_fraction`` of all ``n (n - 1)`` and ``max_pairs_per_latent`` per latent
    (the second keeps the list's memory linear in ``n``)."""
    return int(min(max_pair_fraction * n * (n - 1), max_pairs_per_latent * n))


def pair_row_pointers(pairs_P2: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row pointers ``(n + 1,)`` of a row-sorted pair list (a device sync on GPU, where
    ``bincount`` sizes its output on the host: compute it once per list, at the scan)."""
    crow_N1 = torch.zeros(n + 1, dtype=pairs_P2.dtype, device=pairs_P2.device)
    crow_N1[1:] = torch.bincount(pairs_P2[:, 0], minlength=n).cumsum(0)
    return crow_N1


def _pair_csr(pairs_P2: torch.Tensor, crow_N1: torch.Tensor, n: int, values_P: torch.Tensor) -> torch.Tensor:
    """The ``(n, n)`` CSR matrix with ``values_P`` at the row-sorted ``pairs_P2``."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow_N1, pairs_P2[:, 1].contiguous(), values_P, (n, n), check_invariants=False
        )


def _pair_cosines(D_nd: torch.Tensor, pairs_P2: torch.Tensor, crow_N1: torch.Tensor) -> torch.Tensor:
    """``C_ij`` for each listed pair, ``(P,)``: a sampled dense-dense product (SDDMM)."""
    mask_nn = _pair_csr(pairs_P2, crow_N1, D_nd.shape[0], D_nd.new_zeros(pairs_P2.shape[0]))
    return torch.sparse.sampled_addmm(mask_nn, D_nd, D_nd.T, beta=0.0).values()


class _PairThresholdedCosineSquaredSum(torch.autograd.Function):
    """``sum_{(i, j) in pairs} relu(|C_ij| - tau)^2`` for a symmetric, row-sorted list.

    Forward keeps ``D`` and the ``P`` listed cosines; backward is ``2 G D`` with ``G`` the
    sparse matrix of ``2 sign(C_ij) relu(|C_ij| - tau)`` on the listed pairs (symmetric
    because the list holds both ``(i, j)`` and ``(j, i)``). Memory ``O(n * d_in + P)``.
    """

    @staticmethod
    def forward(ctx, D_nd: torch.Tensor, pairs_P2: torch.Tensor, crow_N1: torch.Tensor, tau: float) -> torch.Tensor:  # type: ignore[override]
        C_P = _pair_cosines(D_nd, pairs_P2, crow_N1)
        ctx.save_for_backward(D_nd, pairs_P2, crow_N1, C_P)
        ctx.tau = tau
        acc_dtype = torch.promote_types(C_P.dtype, torch.float32)
        return F.relu(C_P.abs() - tau).to(acc_dtype).pow(2).sum().to(D_nd.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        D_nd, pairs_P2, crow_N1, C_P = ctx.saved_tensors
        G_P = 2.0 * torch.sign(C_P) * F.relu(C_P.abs() - ctx.tau)
        grad_nd = _pair_csr(pairs_P2, crow_N1, D_nd.shape[0], G_P) @ D_nd
        return grad_nd.mul_(2.0 * grad_out.to(D_nd.dtype)), None, None, None


def ortho_penalty_pairs(
    D_nd: torch.Tensor, tau: float, pairs_P2: torch.Tensor, row_pointers: torch.Tensor | None = None
) -> torch.Tensor:
    """The exact penalty's terms over the listed pairs only, divided by ``n (n - 1)``.

    Equals :func:`ortho_penalty_exact` whenever every pair with ``|C_ij| > tau`` is in
    the list (pairs left out then contribute 0 to both).

    Args:
        D_nd: decoder directions with unit-norm rows, ``(n, d_in)``.
        tau: threshold in ``[0, 1]``.
        pairs_P2: ordered pairs as :func:`close_pair_scan` returns them: both ``(i, j)``
            and ``(j, i)``, sorted by ``i`` then ``j``. The gradient relies on that
            symmetry.
        row_pointers: :func:`pair_row_pointers` of the list, if already computed.
    """
    if pairs_P2.ndim != 2 or pairs_P2.shape[1] != 2:
        raise ValueError(
            f"pairs_P2 of shape {tuple(pairs_P2.shape)} is invalid: it must be (P, 2), "
            "as close_pair_scan returns it"
        )
    n = D_nd.shape[0]
    if n < 2 or pairs_P2.shape[0] == 0:
        return D_nd.sum() * 0.0
    # Sparse kernels have no half-precision CPU path; the term is accumulated in fp32.
    D32_nd = D_nd.float() if D_nd.dtype in (torch.float16, torch.bfloat16) else D_nd
    if row_pointers is None:
        row_pointers = pair_row_pointers(pairs_P2, n)
    total = _PairThresholdedCosineSquaredSum.apply(D32_nd, pairs_P2, row_pointers, float(tau))
    return (total / (n * (n - 1))).to(D_nd.dtype)  # type: ignore[union-attr]


@torch.no_grad()
def drift_bound(D_nd: torch.Tensor, D_scan_nd: torch.Tensor) -> torch.Tensor:
    """``m_1 + m_2``, the two largest row movements ``||D_i - D_scan_i||`` (a 0-dim tensor,
    left on the device: reading it is the caller's one sync).

    Bounds how far any pair's cosine can have moved since the scan (module docstring):
    ``|C_ij - C_scan_ij| <= ||D_i - D_scan_i|| + ||D_j - D_scan_j|| <= m_1 + m_2``.
    ``O(n d_in)``.
    """
    moved_n = (D_nd - D_scan_nd).norm(dim=1)
    if moved_n.shape[0] < 2:
        return moved_n.sum()
    return moved_n.topk(2).values.sum()


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
