"""Section 3: the orthogonality term's forward + backward against ``d_sae``.

Variants: 'dense naive' (the whole ``(n, n)`` matrix through autograd: the reference),
'exact blockwise', 'chunked', the 'close_pairs' penalty over its list, and the
'close_pairs' scan (no backward; a training step pays it once per ``rescan_every``).

The decoder is planted so that the close-pair list has a known size: latents come in
groups of ``GROUP`` that share a direction (|cos| ~ 0.5 inside a group, ~ 1/sqrt(d_in)
across groups), so with ``tau = 0.3`` each latent has ``GROUP - 1`` listed partners and
the list grows linearly in ``d_sae``. (With a fixed share of all pairs listed instead, it
grows as ``d_sae^2``; section 1 times such lists.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.measure import Timing, log_log_slope, peak_allocated_bytes, saved_for_backward_bytes, time_interleaved
from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.orthogonality import (
    close_pair_scan,
    ortho_penalty_chunked,
    ortho_penalty_exact,
    ortho_penalty_pairs,
)

TAU = 0.3
MARGIN = OrthoContrastiveTrainingSAEConfig.ortho_margin
GROUP = 9
DENSE, EXACT, CHUNKED, PAIRS, SCAN = "dense naive", "exact blockwise", "chunked", "close_pairs list", "close_pairs scan"


def dense_naive_ortho_penalty(D_nd: torch.Tensor, tau: float) -> torch.Tensor:
    """``mean_{i != j} relu(|C_ij| - tau)^2`` with the whole ``(n, n)`` matrix (the reference)."""
    n = D_nd.shape[0]
    C_nn = D_nd @ D_nd.T
    excess_nn = torch.relu(C_nn.abs() - tau) * (1.0 - torch.eye(n, device=D_nd.device, dtype=D_nd.dtype))
    return excess_nn.pow(2).sum() / (n * (n - 1))


def planted_decoder(n: int, d_in: int, device: str, seed: int = 0) -> torch.Tensor:
    """Unit rows in groups of ``GROUP`` around shared directions, ``(n, d_in)``."""
    g = torch.Generator().manual_seed(seed)
    base_gd = torch.randn(-(-n // GROUP), d_in, generator=g)
    D_nd = base_gd.repeat_interleave(GROUP, dim=0)[:n] + torch.randn(n, d_in, generator=g)
    return torch.nn.functional.normalize(D_nd, dim=1).to(device)


def planted_pairs(n: int, device: str) -> torch.Tensor:
    """The ordered pairs inside each group of :func:`planted_decoder`, row-sorted, ``(P, 2)``
    (what the scan lists at ``tau - margin`` when ``d_in`` is large enough that groups
    do not meet; built directly, since the scan itself costs ``d_sae^2``)."""
    i_n = torch.arange(n)
    start_n = i_n // GROUP * GROUP
    members_nG = start_n[:, None] + torch.arange(GROUP)
    keep_nG = (members_nG < n) & (members_nG != i_n[:, None])
    pairs_P2 = torch.stack([i_n[:, None].expand_as(members_nG)[keep_nG], members_nG[keep_nG]], dim=1)
    return pairs_P2.int().to(device)


def run(
    d_in: int,
    sizes: dict[str, list[int]],
    chunk_size: int,
    block_size: int,
    device: str,
    repeats: int,
    warmup: int,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """``sizes`` maps each variant to the ``d_sae`` values it is run at."""
    all_n = sorted({n for ns in sizes.values() for n in ns})
    rows = []
    for n in all_n:
        progress(f"ortho term d_sae={n} d_in={d_in}")
        D_nd = planted_decoder(n, d_in, device).requires_grad_(True)
        pairs_P2 = planted_pairs(n, device)
        generator = torch.Generator().manual_seed(0)
        losses: dict[str, Callable[[], torch.Tensor]] = {
            DENSE: lambda: dense_naive_ortho_penalty(D_nd, TAU),
            EXACT: lambda: ortho_penalty_exact(D_nd, TAU, block_size),
            CHUNKED: lambda: ortho_penalty_chunked(D_nd, TAU, chunk_size, generator, block_size),
            PAIRS: lambda: ortho_penalty_pairs(D_nd, TAU, pairs_P2),
        }
        calls: dict[str, Callable[[], object]] = {}
        for name, loss in losses.items():
            if n in sizes.get(name, []):
                calls[name] = lambda loss=loss: loss().backward()
        if n in sizes.get(SCAN, []):
            calls[SCAN] = lambda: close_pair_scan(D_nd.detach(), TAU - MARGIN, block_size)
        seconds = time_interleaved(calls, device, repeats=repeats, warmup=warmup)
        for name, call in tqdm(calls.items(), desc="memory", leave=False):
            D_nd.grad = None
            saved = saved_for_backward_bytes(losses[name], [D_nd]) if name in losses else 0
            D_nd.grad = None
            rows.append(
                {
                    "variant": name,
                    "d_sae": n,
                    "time": Timing.of(seconds[name]).as_dict(),
                    "peak_bytes": peak_allocated_bytes(call, device),
                    "saved_for_backward_bytes": saved,
                    "listed_pairs": pairs_P2.shape[0] if name in (PAIRS, SCAN) else None,
                }
            )
        del D_nd, pairs_P2
    exponents = {}
    for name in sizes:
        mine = [r for r in rows if r["variant"] == name]
        ns = [r["d_sae"] for r in mine]
        times = [r["time"]["median_s"] for r in mine]
        exponents[name] = {
            "time": log_log_slope(ns, times),
            # the largest sizes alone: the asymptotic regime, past cache effects and overheads
            "time_largest_3": log_log_slope(ns[-3:], times[-3:]) if len(ns) > 3 else None,
            "peak_bytes": log_log_slope(ns, [r["peak_bytes"] for r in mine]),
            "d_sae_range": [min(ns), max(ns)] if ns else None,
        }
    return {"d_in": d_in, "chunk_size": chunk_size, "tau": TAU, "margin": MARGIN, "group": GROUP,
            "rows": rows, "exponents": exponents}
