"""Section 7: peak memory of the orthogonality term in every mode, against ``d_sae``.

One call per size (forward + backward, or the scan): what a training step allocates for
the term above what it holds already (the decoder, and in 'close_pairs' the list and the
unit rows of its scan, whose bytes are reported beside). The modes, as a run meets them:

- 'close_pairs, list in use': the movement check (:func:`drift_bound`) and the penalty
  over the list; the planted decoder of section 3 (8 listed partners per latent).
- 'close_pairs, scan': the blockwise scan that builds that list, with the default caps.
- 'close_pairs, over-full -> exact': late in the anneal, on a random decoder with the
  threshold at 0: the scan gives up at its cap and the one-pass exact term runs.
- 'exact (one pass)' and 'chunked'.

The quadratic-time modes (scan, exact) are capped on CPU (``d_sae^2 d_in`` multiply-adds:
minutes per call past 16,384 at ``d_in = 2304``); the GPU preset runs all of them to 65,536.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.measure import log_log_slope, peak_allocated_bytes
from benchmarks.ortho_scaling import MARGIN, TAU, planted_decoder, planted_pairs
from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.orthogonality import (
    close_pair_scan,
    drift_bound,
    max_listed_pairs,
    ortho_penalty_chunked,
    ortho_penalty_exact,
    ortho_penalty_pairs,
)

LIST, SCAN, OVERFULL, EXACT, CHUNKED = (
    "close_pairs, list in use", "close_pairs, scan", "close_pairs, over-full -> exact", "exact (one pass)", "chunked",
)


def _max_pairs(n: int) -> int:
    """The training class's cap on the list, at the config's defaults."""
    cfg = OrthoContrastiveTrainingSAEConfig
    return max_listed_pairs(n, cfg.ortho_max_pair_fraction, cfg.ortho_max_pairs_per_latent)


def run(
    d_in: int,
    sizes: dict[str, list[int]],
    chunk_size: int,
    block_size: int,
    device: str,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    rows = []
    for n in sorted({n for ns in sizes.values() for n in ns}):
        progress(f"ortho memory d_sae={n} d_in={d_in}")
        D_nd = planted_decoder(n, d_in, device).requires_grad_(True)
        D_scan_nd = D_nd.detach().clone()
        pairs_P2 = planted_pairs(n, device)
        generator = torch.Generator().manual_seed(0)

        def list_step() -> None:
            drift_bound(D_nd.detach(), D_scan_nd)
            ortho_penalty_pairs(D_nd, TAU, pairs_P2).backward()

        def overfull_step() -> None:
            assert close_pair_scan(D_nd.detach(), 0.0, block_size, max_pairs=_max_pairs(n)) is None
            ortho_penalty_exact(D_nd, TAU, block_size).backward()

        calls: dict[str, Callable[[], object]] = {
            LIST: list_step,
            SCAN: lambda: close_pair_scan(D_nd.detach(), TAU - MARGIN, block_size, max_pairs=_max_pairs(n)),
            OVERFULL: overfull_step,
            EXACT: lambda: ortho_penalty_exact(D_nd, TAU, block_size).backward(),
            CHUNKED: lambda: ortho_penalty_chunked(D_nd, TAU, chunk_size, generator, block_size).backward(),
        }
        for name, call in tqdm(calls.items(), desc="memory", leave=False):
            if n not in sizes.get(name, []):
                continue
            D_nd.grad = None
            rows.append({
                "variant": name,
                "d_sae": n,
                "peak_bytes": peak_allocated_bytes(call, device),
                "held_bytes": (D_scan_nd.nbytes + pairs_P2.nbytes) if name == LIST else 0,
            })
        del D_nd, D_scan_nd, pairs_P2
    exponents = {}
    for name in sizes:
        mine = [r for r in rows if r["variant"] == name]
        ns = [r["d_sae"] for r in mine]
        exponents[name] = {
            "peak_bytes": log_log_slope(ns, [r["peak_bytes"] for r in mine]),
            "peak_plus_held_bytes": log_log_slope(ns, [r["peak_bytes"] + r["held_bytes"] for r in mine]),
            "d_sae_range": [min(ns), max(ns)] if ns else None,
        }
    return {"d_in": d_in, "block_size": block_size, "chunk_size": chunk_size, "max_pairs_per_latent":
            OrthoContrastiveTrainingSAEConfig.ortho_max_pairs_per_latent, "rows": rows, "exponents": exponents}
