"""Section 1: one full training step of ``ortho_contrastive`` against SAELens ``standard``.

A step is what SAELens's trainer does per batch: ``training_forward_pass``, ``backward``,
gradient-norm clipping, an Adam step and ``zero_grad`` (its firing-frequency bookkeeping,
the same for every architecture, is left out). Coefficients are at their final values
(after the contrastive warm-up), and logging steps (which add a full pass over the
decoder pairs for the diagnostics) are not measured.

Every ``ortho_contrastive`` row computes the ortho term at every step
(``ortho_lazy_every=1``): this section prices one step that has it; section 6
(``benchmarks.whole_run``) prices the defaults, lazy steps included, along a run.
'close_pairs' costs differ between the step that scans and the steps that reuse the
list; both are timed (the reuse rows hold the weights still, Adam at lr 0, so that the
list is not rescanned) and the row ``close_pairs (amortised)`` is
``(scan step + (rescan_every - 1) reuse steps) / rescan_every``, a guide only: along a
run the movement check decides when to rescan (sections 4 and 6). Its list length depends
on the decoder: a fresh SAE at the start of the anneal has no pair near the threshold, so
further rows pin the threshold where a chosen share of the pairs is listed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE, TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from tqdm import tqdm

from benchmarks.measure import Timing, peak_allocated_bytes, time_interleaved
from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig

ANNEAL_STEPS = 10_000
"""Anneal horizon given to the SAEs (the runner would fill it); step 1 has tau ~ 0.3."""
MEASURED_STEP = 1
"""The schedule step every timed call runs at: not a multiple of rescan_every, so a
'close_pairs' list scanned at this step is reused by the next calls."""


@dataclass
class StepShape:
    """One benchmarked training-step shape."""

    d_in: int
    """Input width."""
    d_sae: int
    """Dictionary size."""
    batch: int
    """Tokens per training batch."""


@dataclass
class StepVariant:
    """A training SAE set up for timing, with the coefficients its step uses."""

    name: str
    """Row label."""
    sae: TrainingSAE[Any]
    """The SAE, with its optimizer state created by the warm-up."""
    coefficients: dict[str, float]
    """Coefficients passed in TrainStepInput (the final values)."""
    force_scan: bool = False
    """'close_pairs' only: drop the list before each call, so every call scans."""
    pin_clock: bool = True
    """Put the schedule clock back to ``MEASURED_STEP`` before each call (False: it
    advances as in training)."""
    lr: float = 3e-4
    """Adam's learning rate. 0 holds the weights still (the same work per step), so that
    a 'close_pairs' list is reused by every call: rows that move enough make the list
    rescan, which section 6 (whole run) measures where it happens."""
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=self.lr)

    def step(self, x_BD: torch.Tensor) -> None:
        if isinstance(self.sae, OrthoContrastiveTrainingSAE):
            if self.pin_clock:
                with torch.no_grad():
                    self.sae.n_steps_trained.fill_(MEASURED_STEP)
            if self.force_scan:
                self.sae.forget_close_pairs()
        out = self.sae.training_forward_pass(
            TrainStepInput(
                sae_in=x_BD,
                coefficients=self.coefficients,
                dead_neuron_mask=None,
                n_training_steps=MEASURED_STEP,
                is_logging_step=False,
            )
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def listed_share(self) -> float | None:
        """'close_pairs': share of the d_sae (d_sae - 1) ordered pairs in the list."""
        sae = self.sae
        if not isinstance(sae, OrthoContrastiveTrainingSAE) or int(sae.ortho_scan_step) < 0:
            return None  # not 'close_pairs', or the ortho term is off
        if sae.ortho_close_pairs is None:
            return float("nan")  # over-full: the exact term was computed instead
        n = sae.cfg.d_sae
        return sae.ortho_close_pairs.shape[0] / (n * (n - 1))


def threshold_for_listed_share(sae: OrthoContrastiveTrainingSAE, share: float) -> float:
    """The |cos| above which ``share`` of the decoder's pairs lie (from a row sample)."""
    D_nd = sae.unit_decoder().detach()
    n = D_nd.shape[0]
    rows = min(n, max(1, 2**22 // n))
    abs_C = (D_nd[:rows] @ D_nd.T).abs()
    diagonal_r = torch.arange(rows, device=D_nd.device)
    abs_C[diagonal_r, diagonal_r] = -1.0  # self-pairs never count
    values, _ = abs_C.flatten().sort()
    n_pairs = rows * (n - 1)
    return values[rows + int((1.0 - share) * (n_pairs - 1))].item()


def bf16_timed_on(device: str) -> bool:
    """bf16 products are a GPU option (most CPUs run them slower than float32): timed on CUDA."""
    return torch.device(device).type == "cuda"


def build_variants(
    shape: StepShape, device: str, listed_shares: list[float], seed: int = 0
) -> list[StepVariant]:
    """SAELens ``standard`` and the ``ortho_contrastive`` variants, same initial weights."""

    def ours(**kwargs: Any) -> OrthoContrastiveTrainingSAE:
        torch.manual_seed(seed)
        # Every timed step computes the ortho term (lazy regularization would skip it at
        # MEASURED_STEP); section 6 (benchmarks.whole_run) times the defaults over a run.
        kwargs.setdefault("ortho_lazy_every", 1)
        cfg = OrthoContrastiveTrainingSAEConfig(
            d_in=shape.d_in, d_sae=shape.d_sae, device=device, ortho_anneal_steps=ANNEAL_STEPS, **kwargs
        )
        return OrthoContrastiveTrainingSAE(cfg)

    def coefficients(sae: OrthoContrastiveTrainingSAE) -> dict[str, float]:
        cfg = sae.cfg
        return {"l1": cfg.l1_coefficient, "ortho": cfg.ortho_coefficient, "contrastive": cfg.contrastive_coefficient}

    torch.manual_seed(seed)
    standard = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=shape.d_in, d_sae=shape.d_sae, device=device))
    variants = [StepVariant("standard (SAELens)", standard, {"l1": standard.cfg.l1_coefficient})]
    for name, kwargs in [
        ("SS-COSAE: exact similarities + exact ortho", {"projection_dim": None, "ortho_mode": "exact"}),
        ("contrastive only (ortho_coefficient=0)", {"ortho_coefficient": 0.0}),
        ("ortho exact", {"ortho_mode": "exact"}),
        ("ortho chunked", {"ortho_mode": "chunked"}),
        ("ortho close_pairs, reuse step", {"ortho_mode": "close_pairs"}),
        *([("ortho exact, bf16 products", {"ortho_mode": "exact", "ortho_matmul_dtype": "bfloat16"})]
          if bf16_timed_on(device) else []),
    ]:
        sae = ours(**kwargs)
        variants.append(StepVariant(name, sae, coefficients(sae), lr=0.0 if "reuse" in name else 3e-4))
    scan = ours(ortho_mode="close_pairs")
    variants.append(StepVariant("ortho close_pairs, scan step", scan, coefficients(scan), force_scan=True))
    for share in listed_shares:
        probe = ours(ortho_mode="close_pairs")
        tau = threshold_for_listed_share(probe, share) + probe.cfg.ortho_margin
        tau = min(tau, 1.0)
        sae = ours(ortho_mode="close_pairs", ortho_threshold_start=tau, ortho_threshold_end=tau, ortho_max_pair_fraction=1.0)
        variants.append(StepVariant(f"ortho close_pairs, reuse step, {share:.1%} of pairs listed", sae, coefficients(sae), lr=0.0))
    return variants


def run(
    shapes: list[StepShape],
    device: str,
    repeats: int,
    warmup: int,
    listed_shares: list[float],
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Time and memory of a training step, per shape; rows of results."""
    results = []
    for shape in shapes:
        progress(f"training step d_in={shape.d_in} d_sae={shape.d_sae} batch={shape.batch}")
        variants = build_variants(shape, device, listed_shares)
        x_BD = torch.randn(shape.batch, shape.d_in, generator=torch.Generator().manual_seed(1)).to(device) + 1.0
        calls = {v.name: (lambda v=v: v.step(x_BD)) for v in variants}
        seconds = time_interleaved(calls, device, repeats=repeats, warmup=warmup)
        base = variants[0].name
        rows = []
        for v in tqdm(variants, desc="peak memory", leave=False):
            rows.append(
                {
                    "variant": v.name,
                    "time": Timing.of(seconds[v.name]).as_dict(),
                    "ratio_to_standard": Timing.ratio(seconds[v.name], seconds[base]).as_dict(),
                    "peak_bytes": peak_allocated_bytes(lambda v=v: v.step(x_BD), device),
                    "listed_share": v.listed_share(),
                }
            )
        rows.append(_amortised(rows, variants))
        results.append({"shape": vars(shape), "rows": rows})
    return results


def _amortised(rows: list[dict[str, Any]], variants: list[StepVariant]) -> dict[str, Any]:
    """The close_pairs step averaged over one rescan period, from its two timed kinds."""
    by_name = {row["variant"]: row for row in rows}
    reuse, scan = by_name["ortho close_pairs, reuse step"], by_name["ortho close_pairs, scan step"]
    every = next(v.sae.cfg.ortho_rescan_every for v in variants if v.force_scan)

    def mix(key: str) -> dict[str, float | int]:  # quartiles mixed linearly: a guide only
        return {
            field: (scan[key][field] + (every - 1) * reuse[key][field]) / every if field != "n" else reuse[key][field]
            for field in reuse[key]
        }

    return {
        "variant": f"ortho close_pairs, amortised over rescan_every={every}",
        "time": mix("time"),
        "ratio_to_standard": mix("ratio_to_standard"),
        "peak_bytes": max(reuse["peak_bytes"], scan["peak_bytes"]),
        "listed_share": reuse["listed_share"],
    }
