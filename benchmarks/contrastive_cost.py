"""Section 2: the self-contrastive loss, projected (``k``) against exact similarities.

Each measurement is one forward + backward of ``self_contrastive_loss`` with a
reconstruction that requires grad. 'exact' is the same function with
``projection_DK=None`` (the SS-COSAE baseline). For reference, 'exact, S kept' is the
textbook version through ``F.cross_entropy``, which keeps the ``(B, B)`` similarity
matrix for backward instead of recomputing it (faster, ``O(B^2)`` memory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from benchmarks.measure import Timing, peak_allocated_bytes, saved_for_backward_bytes, time_interleaved
from orthosae_plugin.contrastive import embed_for_similarity, make_projection, self_contrastive_loss

TEMPERATURE = 0.1
EXACT = "exact"
EXACT_S_KEPT = "exact, S kept"


def contrastive_loss_keeping_s(x_BD: torch.Tensor, x_hat_BD: torch.Tensor, temperature: float) -> torch.Tensor:
    """Exact-similarity InfoNCE through ``F.cross_entropy`` (autograd keeps ``(B, B)``)."""
    centre_D = x_BD.mean(dim=0)
    z_BD = embed_for_similarity(x_BD, centre_D, None)
    z_hat_BD = embed_for_similarity(x_hat_BD, centre_D, None)
    sim_BB = z_hat_BD @ z_BD.T / temperature
    return F.cross_entropy(sim_BB, torch.arange(x_BD.shape[0], device=x_BD.device))


def run(
    batches: list[int],
    d_ins: list[int],
    ks: list[int],
    device: str,
    repeats: int,
    warmup: int,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """One group of rows per (batch, d_in): every k, exact and exact with S kept."""
    groups = []
    for batch in batches:
        for d_in in d_ins:
            progress(f"contrastive loss batch={batch} d_in={d_in}")
            g = torch.Generator().manual_seed(0)
            x_BD = (torch.randn(batch, d_in, generator=g) + 1.0).to(device)
            x_hat_BD = (x_BD + 0.3 * torch.randn(batch, d_in, generator=g).to(device)).requires_grad_(True)
            projections = {k: make_projection(d_in, k, seed=0, device=device) for k in ks}
            losses: dict[str, Callable[[], torch.Tensor]] = {
                f"k={k}": (lambda P=P: self_contrastive_loss(x_BD, x_hat_BD, TEMPERATURE, P))
                for k, P in projections.items()
            }
            losses[EXACT] = lambda: self_contrastive_loss(x_BD, x_hat_BD, TEMPERATURE, None)
            losses[EXACT_S_KEPT] = lambda: contrastive_loss_keeping_s(x_BD, x_hat_BD, TEMPERATURE)

            def forward_backward(loss: Callable[[], torch.Tensor]) -> None:
                loss().backward()
                x_hat_BD.grad = None

            calls = {name: (lambda loss=loss: forward_backward(loss)) for name, loss in losses.items()}
            seconds = time_interleaved(calls, device, repeats=repeats, warmup=warmup)
            inputs = [x_BD, x_hat_BD, *projections.values()]
            rows = []
            for name, loss in losses.items():
                saved = saved_for_backward_bytes(loss, inputs)
                x_hat_BD.grad = None
                rows.append(
                    {
                        "variant": name,
                        "k": int(name[2:]) if name.startswith("k=") else None,
                        "time": Timing.of(seconds[name]).as_dict(),
                        "speedup_vs_exact": Timing.ratio(seconds[EXACT], seconds[name]).as_dict(),
                        "saved_for_backward_bytes": saved,
                        "peak_bytes": peak_allocated_bytes(calls[name], device),
                    }
                )
            exact_row = next(r for r in rows if r["variant"] == EXACT)
            for row in rows:
                row["saved_bytes_ratio_exact_over_this"] = exact_row["saved_for_backward_bytes"] / max(row["saved_for_backward_bytes"], 1)
                row["peak_ratio_exact_over_this"] = exact_row["peak_bytes"] / max(row["peak_bytes"], 1)
            groups.append({"batch": batch, "d_in": d_in, "rows": rows})
    return groups
