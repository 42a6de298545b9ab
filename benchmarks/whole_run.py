"""Section 6: the training step's cost along the whole threshold anneal.

A 'close_pairs' list is cheap while few pairs are near the threshold, at the start of the
anneal; at its end (tau -> 0.05) many pairs are, the list overflows and the exact term is
computed. So one step at one threshold says little about a run. This section places the
schedule clock at several points of the default anneal (``PHASES``, a share of
``ANNEAL_STEPS``) and, at each, trains ``warmup`` untimed steps (the list is scanned as in
a run; the movement check's estimate of how fast the rows move is kept, as in a run) and then ``steps`` timed ones, each ``ortho_contrastive`` variant interleaved with
SAELens ``standard`` on the same batch, with the clock advancing as in training, so
scans, rescans, fallbacks and lazy steps fall where a run has them.

Reported per phase: the ratio of summed step times to ``standard``'s, the scans and
recomputed steps inside the timed window, and whether the list was in use. The run's
average is the trapezoid mean of the phase ratios over the anneal (the phases are equally
spaced in steps). The decoder is SAELens's initialisation moved by these few steps, not a
trained one: its |cos| spread (~1/sqrt(d_in)) is the one a trained decoder must end under.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.measure import synchronize
from benchmarks.step import StepShape, StepVariant, bf16_timed_on
from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.orthogonality import ortho_penalty_exact
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

ANNEAL_STEPS = 10_000
"""Anneal horizon of the SAEs (a run's total steps)."""
BF16 = "defaults + ortho_matmul_dtype=bfloat16"
"""The defaults with bf16 products (timed on CUDA only), and its error against float32."""


@dataclass
class WholeRunShape:
    """One shape of the whole-run section."""

    shape: StepShape
    """SAE and batch."""
    phases: tuple[float, ...]
    """Points of the anneal (0 = start, 1 = end) at which steps are timed."""
    steps: int
    """Timed steps per phase and variant (a multiple of the default lazy period)."""
    warmup: int
    """Untimed steps per phase before timing."""
    compare: bool = True
    """Also time the defaults without lazy regularization and 'exact' every step."""


ALTERNATIVES = [
    (f"close_pairs, lazy 4, {'exact when over-full' if s == 1 else f'over-full chunks {s}'}",
     {"ortho_lazy_every": 4, "ortho_overfull_chunks": s})
    for s in (1, 2, 4)
]
"""The cheaper designs weighed for the defaults, timed at every shape (the one equal
to the defaults is left out)."""


def defaults_name() -> str:
    d = OrthoContrastiveTrainingSAEConfig
    return (f"defaults (close_pairs, ortho_lazy_every={d.ortho_lazy_every}, "
            f"ortho_overfull_chunks={d.ortho_overfull_chunks})")


def variants(shape: StepShape, device: str, compare: bool = True, seed: int = 0) -> list[StepVariant]:
    """SAELens ``standard``, the defaults, the ALTERNATIVES, and (``compare``) the defaults
    with bf16 products (on CUDA), with the term on every step, and 'exact' every step."""
    torch.manual_seed(seed)
    standard = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=shape.d_in, d_sae=shape.d_sae, device=device))
    out = [StepVariant("standard (SAELens)", standard, {"l1": standard.cfg.l1_coefficient}, pin_clock=False)]
    defaults = OrthoContrastiveTrainingSAEConfig
    compared = [
        (BF16, {"ortho_matmul_dtype": "bfloat16"}),
        ("close_pairs, every step, exact when over-full", {"ortho_lazy_every": 1, "ortho_overfull_chunks": 1}),
        ("exact, every step", {"ortho_mode": "exact", "ortho_lazy_every": 1, "ortho_overfull_chunks": 1}),
    ]
    for name, kwargs in [(defaults_name(), {}), *ALTERNATIVES, *(compared if compare else [])]:
        if name == BF16 and not bf16_timed_on(device):
            continue
        if kwargs and all(getattr(defaults, key) == value for key, value in kwargs.items()):
            continue  # the same as the defaults
        torch.manual_seed(seed)
        cfg = OrthoContrastiveTrainingSAEConfig(
            d_in=shape.d_in, d_sae=shape.d_sae, device=device, ortho_anneal_steps=ANNEAL_STEPS, **kwargs
        )
        sae = OrthoContrastiveTrainingSAE(cfg)
        coefficients = {"l1": cfg.l1_coefficient, "ortho": cfg.ortho_coefficient, "contrastive": cfg.contrastive_coefficient}
        out.append(StepVariant(name, sae, coefficients, pin_clock=False))
    return out


def _phase_start(phase: float, steps: int, warmup: int) -> int:
    return max(0, min(round(phase * ANNEAL_STEPS), ANNEAL_STEPS - steps - warmup))


def run(
    shapes: list[WholeRunShape], device: str, progress: Callable[[str], None] = lambda _: None
) -> list[dict[str, Any]]:
    results = []
    for spec in shapes:
        shape = spec.shape
        progress(f"whole run d_in={shape.d_in} d_sae={shape.d_sae} batch={shape.batch}, phases {spec.phases}")
        all_variants = variants(shape, device, spec.compare)
        base = all_variants[0]
        g = torch.Generator().manual_seed(1)
        batches = [torch.randn(shape.batch, shape.d_in, generator=g).to(device) + 1.0 for _ in range(2)]
        # A run-in before the first phase, so that the first movement check has run (a
        # fresh SAE does not know how fast its rows move; its first check after the first
        # scan fails and recomputes that step, once per run).
        for v in all_variants:
            if isinstance(v.sae, OrthoContrastiveTrainingSAE):
                with torch.no_grad():
                    v.sae.n_steps_trained.fill_(_phase_start(spec.phases[0], spec.steps, spec.warmup))
        for i in range(OrthoContrastiveTrainingSAEConfig.ortho_lazy_every + 1):
            for v in all_variants:
                v.step(batches[i % 2])
        phases = []
        for phase in spec.phases:
            start = _phase_start(phase, spec.steps, spec.warmup)
            for v in all_variants:
                if isinstance(v.sae, OrthoContrastiveTrainingSAE):
                    v.sae.forget_close_pairs()
                    with torch.no_grad():
                        v.sae.n_steps_trained.fill_(start)
            for i in range(spec.warmup):
                for v in all_variants:
                    v.step(batches[i % 2])
            counters = {v.name: (getattr(v.sae, "ortho_scans", 0), getattr(v.sae, "ortho_recomputed_steps", 0))
                        for v in all_variants}
            seconds: dict[str, list[float]] = {v.name: [] for v in all_variants}
            for i in range(spec.steps):
                shift = i % len(all_variants)
                for v in all_variants[shift:] + all_variants[:shift]:
                    synchronize(device)
                    t0 = time.perf_counter()
                    v.step(batches[i % 2])
                    synchronize(device)
                    seconds[v.name].append(time.perf_counter() - t0)
            rows = []
            for v in all_variants:
                sae = v.sae
                row: dict[str, Any] = {
                    "variant": v.name,
                    "seconds_per_step": sum(seconds[v.name]) / spec.steps,
                    "ratio_to_standard": sum(seconds[v.name]) / sum(seconds[base.name]),
                }
                if isinstance(sae, OrthoContrastiveTrainingSAE):
                    scans0, recomputed0 = counters[v.name]
                    n = sae.cfg.d_sae
                    row.update(
                        scans=sae.ortho_scans - scans0,
                        recomputed_steps=sae.ortho_recomputed_steps - recomputed0,
                        tau=sae.ortho_threshold_at(start + spec.warmup),
                        listed_share=None if sae.ortho_close_pairs is None else sae.ortho_close_pairs.shape[0] / (n * (n - 1)),
                        on_the_list=sae.cfg.ortho_mode == "close_pairs" and sae.ortho_close_pairs is not None,
                        overfull_chunks=sae.cfg.ortho_overfull_chunks,
                    )
                    if sae.cfg.ortho_matmul_dtype != "float32":
                        row.update(bf16_error(sae, row["tau"]))
                    if sae.cfg.ortho_overfull_chunks > 1 and not row["on_the_list"]:
                        row.update(chunk_estimate_error(sae, row["tau"], start + spec.warmup))
                rows.append(row)
            phases.append({"phase": phase, "first_timed_step": start + spec.warmup, "rows": rows})
            progress("  phase {:.2f} (tau {:.3f}): ".format(phase, rows[1]["tau"]) + ", ".join(
                f"{r['variant'].split(' (')[0]} {r['ratio_to_standard']:.2f}" for r in rows[1:]))
        run_average = {}
        for v in all_variants[1:]:
            ratios = [next(r for r in p["rows"] if r["variant"] == v.name)["ratio_to_standard"] for p in phases]
            run_average[v.name] = trapezoid_mean([p["phase"] for p in phases], ratios)
        results.append({
            "shape": vars(shape), "steps_per_phase": spec.steps, "warmup_per_phase": spec.warmup,
            "anneal_steps": ANNEAL_STEPS, "phases": phases, "run_average_ratio": run_average,
        })
    return results


def bf16_error(sae: OrthoContrastiveTrainingSAE, tau: float) -> dict[str, float]:
    """The exact term with bf16 products against float32 on ``sae``'s current decoder:
    relative errors of the value and of the gradient."""
    values, grads = [], []
    unit_nd = sae.unit_decoder().detach()
    for dtype in (torch.bfloat16, None):
        D_nd = unit_nd.clone().requires_grad_()
        value = ortho_penalty_exact(D_nd, tau, sae.cfg.ortho_block_size, dtype)
        (grad,) = torch.autograd.grad(value, D_nd)
        values.append(value.item()), grads.append(grad)
    return {
        "bf16_value_rel_error": abs(values[0] - values[1]) / max(abs(values[1]), 1e-30),
        "bf16_grad_rel_error": ((grads[0] - grads[1]).norm() / grads[1].norm().clamp_min(1e-30)).item(),
    }


def chunk_estimate_error(sae: OrthoContrastiveTrainingSAE, tau: float, step: int, draws: int = 8) -> dict[str, float]:
    """The over-full estimate (``ortho_overfull_chunks`` random chunks) against the exact
    term on ``sae``'s current decoder, over ``draws`` permutations (those of steps
    ``step, step + 1, ...``): root-mean-square relative error of the value and of the
    gradient of one draw, and the relative error of their mean over the draws."""
    unit_nd = sae.unit_decoder().detach()

    def value_and_grad(estimate_step: int | None) -> tuple[float, torch.Tensor]:
        D_nd = unit_nd.clone().requires_grad_()
        if estimate_step is None:
            value = ortho_penalty_exact(D_nd, tau, sae.cfg.ortho_block_size, sae.ortho_term.matmul_dtype)
        else:
            value = sae.ortho_overfull_estimate(D_nd, tau, estimate_step)
        (grad,) = torch.autograd.grad(value, D_nd)
        return value.item(), grad

    exact_value, exact_grad = value_and_grad(None)
    value_errors, grad_errors, mean_grad = [], [], torch.zeros_like(exact_grad)
    for i in range(draws):
        value, grad = value_and_grad(step + i)
        value_errors.append((value - exact_value) / max(abs(exact_value), 1e-30))
        grad_errors.append(((grad - exact_grad).norm() / exact_grad.norm().clamp_min(1e-30)).item())
        mean_grad += grad / draws
    return {
        "chunk_value_rms_rel_error": (sum(e * e for e in value_errors) / draws) ** 0.5,
        "chunk_grad_rms_rel_error": (sum(e * e for e in grad_errors) / draws) ** 0.5,
        f"chunk_grad_rel_error_of_mean_of_{draws}": ((mean_grad - exact_grad).norm() / exact_grad.norm().clamp_min(1e-30)).item(),
    }


def trapezoid_mean(xs: list[float], ys: list[float]) -> float:
    """Mean of y over [xs[0], xs[-1]] by the trapezoid rule (a plain mean for one point)."""
    if len(xs) < 2:
        return ys[0]
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / (xs[-1] - xs[0])
