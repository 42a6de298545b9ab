"""Speed, memory and approximation benchmarks of ``ortho_contrastive``.

    python -m benchmarks.speed                       # CPU sizes, a few minutes
    python -m benchmarks.speed --threads 1           # steadier ratios on a shared CPU
    python -m benchmarks.speed --device cuda         # GPU sizes (Gemma-2-2B widths)

Writes ``results.json``, ``results.md`` and PNG plots under
``benchmarks/results/speed/<preset>/`` and prints the targets met or missed:

1. one training step of ``ortho_contrastive`` vs SAELens ``standard`` (``benchmarks.step``);
2. the contrastive term, projected vs exact (``benchmarks.contrastive_cost``);
3. the orthogonality term against ``d_sae`` (``benchmarks.ortho_scaling``);
4. the 'close_pairs' orthogonality mode (timed inside 1 and 3) against 'exact' along a
   training run (``benchmarks.close_pairs_fidelity``);
5. the projection's approximation quality against ``k`` (``benchmarks.approximation``; on
   CPU whatever the device: it is small);
6. the training step along the whole threshold anneal, defaults vs ``standard`` at the
   start, middle and end and averaged over the run (``benchmarks.whole_run``);
7. peak memory of the orthogonality term in every mode against ``d_sae``
   (``benchmarks.ortho_memory``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks import (
    approximation,
    close_pairs_fidelity,
    contrastive_cost,
    ortho_memory,
    ortho_scaling,
    report,
    step,
    whole_run,
)
from benchmarks.measure import memory_measure_note
from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.saving import write_file_atomically

SECTIONS = ("step", "contrastive", "ortho", "fidelity", "approximation", "whole_run", "memory")
RESULTS_ROOT = Path(__file__).parent / "results" / "speed"


@dataclass
class Preset:
    """Sizes and repeat counts of one benchmark run."""

    step_shapes: list[step.StepShape]
    """Training-step shapes (section 1)."""
    contrastive_batches: list[int]
    """Batch sizes of section 2."""
    ortho_sizes: dict[str, list[int]]
    """d_sae values per section-3 variant (quadratic ones are capped on CPU)."""
    ortho_chunk_size: int
    """Chunk size of the 'chunked' variant in section 3."""
    fidelity_shape: step.StepShape
    """SAE and batch of the section-4 training runs."""
    fidelity_steps: int
    """Training steps of each section-4 run (the threshold anneals over all of them)."""
    listed_shares: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.05])
    """Shares of pairs listed for the extra 'close_pairs' step rows."""
    contrastive_d_ins: list[int] = field(default_factory=lambda: [768, 2304])
    """Input widths of section 2."""
    contrastive_ks: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    """Projection dims of section 2."""
    ortho_d_in: int = 2304
    """Input width of section 3 (Gemma-2-2B)."""
    ablation_ks: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512])
    """Projection dims of section 5."""
    ablation_seeds: int = 5
    """Projection seeds per k in section 5."""
    ablation_batch: int = 512
    """Batch of section 5."""
    ablation_gaussian_d_in: int = 768
    """Width of the Gaussian data in section 5."""
    ablation_sae_steps: int = 300
    """Training steps of the toy SAE that reconstructs the toy-model activations."""
    step_repeats: int = 9
    """Timed repeats in section 1."""
    repeats: int = 3
    """Timed repeats in sections 2 and 3."""
    warmup: int = 1
    """Untimed rounds before timing."""
    block_size: int = 1024
    """Blockwise ortho / scan block size."""
    whole_run: list[whole_run.WholeRunShape] = field(default_factory=list)
    """Shapes of section 6."""
    memory_sizes: dict[str, list[int]] = field(default_factory=dict)
    """d_sae values per section-7 mode (at ortho_d_in)."""
    fidelity_offsets: list[float] = field(default_factory=lambda: [0.0, 0.5])
    """Data offsets of the section-4 runs (one run each)."""
    notes: list[str] = field(default_factory=list)
    """Where sizes were capped, and why."""


def _powers(lo: int, hi: int) -> list[int]:
    return [2**p for p in range(lo.bit_length() - 1, hi.bit_length())]


PRESETS = {
    "cpu": Preset(
        step_shapes=[step.StepShape(d_in=512, d_sae=4096, batch=2048)],
        contrastive_batches=[1024, 4096],
        ortho_sizes={
            ortho_scaling.DENSE: _powers(1024, 4096),
            ortho_scaling.EXACT: _powers(1024, 4096),
            ortho_scaling.SCAN: _powers(1024, 4096),
            ortho_scaling.CHUNKED: _powers(1024, 16384),
            ortho_scaling.PAIRS: _powers(1024, 65536),
        },
        ortho_chunk_size=1024,
        fidelity_shape=step.StepShape(d_in=128, d_sae=1024, batch=512),
        fidelity_steps=1000,
        whole_run=[
            whole_run.WholeRunShape(step.StepShape(d_in=512, d_sae=4096, batch=2048),
                                    phases=(0.0, 0.25, 0.5, 0.75, 1.0), steps=8, warmup=2),
            whole_run.WholeRunShape(step.StepShape(d_in=2304, d_sae=8192, batch=4096),
                                    phases=(0.0, 0.5, 1.0), steps=4, warmup=1, compare=False),
        ],
        memory_sizes={
            ortho_memory.LIST: _powers(1024, 65536),
            ortho_memory.CHUNKED: _powers(1024, 65536),
            ortho_memory.SCAN: _powers(1024, 16384),
            ortho_memory.OVERFULL: _powers(1024, 16384),
            ortho_memory.EXACT: _powers(1024, 16384),
        },
        notes=[
            "Section 2 on CPU: batch 8192 left out (exact at d_in=2304 would take ~1 min per call).",
            "Section 3 on CPU: dense naive, exact blockwise and the scan stop at d_sae=4096 (they grow as "
            "d_sae^2: 8192 would take ~15 s per call, 65536 ~15 min); chunked stops at 16384 and uses "
            "chunks of 1024 (not 4096) so that its linear regime starts inside the range.",
        ],
    ),
    "gpu": Preset(
        step_shapes=[step.StepShape(d_in=2304, d_sae=16384, batch=4096), step.StepShape(d_in=2304, d_sae=65536, batch=4096)],
        contrastive_batches=[1024, 4096, 8192],
        ortho_sizes={
            ortho_scaling.DENSE: _powers(1024, 16384),
            ortho_scaling.EXACT: _powers(1024, 65536),
            ortho_scaling.SCAN: _powers(1024, 65536),
            ortho_scaling.CHUNKED: _powers(1024, 65536),
            ortho_scaling.PAIRS: _powers(1024, 65536),
        },
        ortho_chunk_size=4096,
        fidelity_shape=step.StepShape(d_in=2304, d_sae=16384, batch=4096),
        fidelity_steps=500,
        whole_run=[
            whole_run.WholeRunShape(step.StepShape(d_in=2304, d_sae=16384, batch=4096),
                                    phases=(0.0, 0.25, 0.5, 0.75, 1.0), steps=8, warmup=2),
            whole_run.WholeRunShape(step.StepShape(d_in=2304, d_sae=65536, batch=4096),
                                    phases=(0.0, 0.25, 0.5, 0.75, 1.0), steps=8, warmup=2),
        ],
        memory_sizes={name: _powers(1024, 65536) for name in (ortho_memory.LIST, ortho_memory.CHUNKED, ortho_memory.SCAN,
                                                              ortho_memory.OVERFULL, ortho_memory.EXACT)},
        step_repeats=10,
        repeats=10,
        warmup=2,
        notes=["Section 3 on GPU: dense naive stops at d_sae=16384 (its (n, n) temporaries take ~25 GB at 32768 "
               "and ~100 GB at 65536)."],
    ),
    "cpu-quick": Preset(
        # Sections 4, 6 and 7 cut to under two CPU-minutes each, for a machine whose heavy-job
        # queue is busy: the cpu preset's shape at 3 points of the anneal, memory with the
        # quadratic-time modes capped at 8192, one 400-step fidelity run.
        step_shapes=[step.StepShape(d_in=512, d_sae=4096, batch=2048)],
        contrastive_batches=[1024],
        ortho_sizes={},
        ortho_chunk_size=1024,
        fidelity_shape=step.StepShape(d_in=128, d_sae=1024, batch=512),
        fidelity_steps=400,
        fidelity_offsets=[0.5],
        whole_run=[whole_run.WholeRunShape(step.StepShape(d_in=512, d_sae=4096, batch=2048),
                                           phases=(0.0, 0.5, 1.0), steps=8, warmup=2, compare=False)],
        memory_sizes={
            ortho_memory.LIST: _powers(1024, 65536),
            ortho_memory.CHUNKED: _powers(1024, 65536),
            ortho_memory.SCAN: _powers(1024, 8192),
            ortho_memory.OVERFULL: _powers(1024, 8192),
            ortho_memory.EXACT: _powers(1024, 8192),
        },
        notes=["cpu-quick: sections 4, 6, 7 cut to under two CPU-minutes each (3 anneal points, d_in=512 shape "
               "only; exact, scan and over-full memory to d_sae=8192; one 400-step fidelity run)."],
    ),
    "smoke": Preset(
        step_shapes=[step.StepShape(d_in=32, d_sae=128, batch=64)],
        contrastive_batches=[16],
        listed_shares=[0.05],
        contrastive_d_ins=[24],
        contrastive_ks=[4, 8],
        ortho_d_in=16,
        ortho_sizes={name: [64, 128] for name in (ortho_scaling.DENSE, ortho_scaling.EXACT, ortho_scaling.SCAN,
                                                   ortho_scaling.CHUNKED, ortho_scaling.PAIRS)},
        ortho_chunk_size=32,
        fidelity_shape=step.StepShape(d_in=16, d_sae=64, batch=32),
        fidelity_steps=6,
        whole_run=[whole_run.WholeRunShape(step.StepShape(d_in=16, d_sae=64, batch=32), phases=(0.0, 1.0), steps=2, warmup=1)],
        memory_sizes={name: [64, 128] for name in (ortho_memory.LIST, ortho_memory.CHUNKED, ortho_memory.SCAN,
                                                   ortho_memory.OVERFULL, ortho_memory.EXACT)},
        ablation_ks=[4, 8],
        ablation_seeds=2,
        ablation_batch=32,
        ablation_gaussian_d_in=24,
        ablation_sae_steps=3,
        step_repeats=1,
        repeats=1,
        warmup=0,
        block_size=32,
        notes=["Smoke sizes: checks that the code runs, the numbers mean nothing."],
    ),
}

TARGET_STEP_SHAPES = {(512, 4096, 2048), (2304, 16384, 4096)}
CONTRASTIVE_TARGET = {"batch": 4096, "d_in": 2304, "k": 128}


def default_step_row(group: dict[str, Any]) -> dict[str, Any]:
    """The row of the ortho_contrastive defaults (amortised when the default scans)."""
    mode = OrthoContrastiveTrainingSAEConfig.ortho_mode
    prefix = "ortho close_pairs, amortised" if mode == "close_pairs" else f"ortho {mode}"
    return next(row for row in group["rows"] if row["variant"].startswith(prefix))


def default_whole_run_variant(group: dict[str, Any]) -> str:
    return next(name for name in group["run_average_ratio"] if name.startswith("defaults"))


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue target that this run measured: what was measured, and whether it is met."""
    found = []
    for group in results.get("step", []):
        shape = group["shape"]
        key = (shape["d_in"], shape["d_sae"], shape["batch"])
        row = default_step_row(group)
        ratio = row["ratio_to_standard"]
        found.append(
            {
                "target": f"training step with the ortho term (ortho_mode={OrthoContrastiveTrainingSAEConfig.ortho_mode}, "
                f"every step) vs standard at d_in={key[0]}, d_sae={key[1]}, batch={key[2]}: ratio <= 1.15"
                + ("" if key in TARGET_STEP_SHAPES else " (no target at this shape; reported)"),
                "measured": f"{ratio['median_s']:.3f} [{ratio['q25_s']:.3f}, {ratio['q75_s']:.3f}] ({row['variant']})",
                "met": ratio["median_s"] <= 1.15,
            }
        )
    for group in results.get("contrastive", []):
        if (group["batch"], group["d_in"]) != (CONTRASTIVE_TARGET["batch"], CONTRASTIVE_TARGET["d_in"]):
            continue
        row = next((r for r in group["rows"] if r["k"] == CONTRASTIVE_TARGET["k"]), None)
        if row is None:
            continue
        where = "batch=4096, d_in=2304, k=128"
        found.append({"target": f"contrastive term at {where}: >= 8x faster than exact",
                      "measured": f"{row['speedup_vs_exact']['median_s']:.1f}x", "met": row["speedup_vs_exact"]["median_s"] >= 8})
        found.append({"target": f"contrastive term at {where}: >= 10x less kept for backward than exact",
                      "measured": f"{row['saved_bytes_ratio_exact_over_this']:.1f}x "
                      f"({row['saved_for_backward_bytes'] / 2**20:.1f} vs "
                      f"{row['saved_for_backward_bytes'] * row['saved_bytes_ratio_exact_over_this'] / 2**20:.1f} MiB)",
                      "met": row["saved_bytes_ratio_exact_over_this"] >= 10})
    for group in results.get("whole_run", []):
        shape = group["shape"]
        where = f"d_in={shape['d_in']}, d_sae={shape['d_sae']}, batch={shape['batch']}"
        name = default_whole_run_variant(group)
        average = group["run_average_ratio"][name]
        phase_ratios = [next(r for r in p["rows"] if r["variant"] == name)["ratio_to_standard"] for p in group["phases"]]
        found.append({"target": f"whole run, defaults vs standard at {where}: average ratio <= 1.10",
                      "measured": f"{average:.3f} (phases {', '.join(f'{r:.2f}' for r in phase_ratios)})",
                      "met": average <= 1.10})
        found.append({"target": f"whole run, defaults vs standard at {where}: every phase <= 1.25",
                      "measured": f"max {max(phase_ratios):.3f}", "met": max(phase_ratios) <= 1.25})
    if "memory" in results:
        for variant, fit in results["memory"]["exponents"].items():
            if fit["peak_bytes"] is None:
                continue
            found.append({"target": f"{variant}: peak memory of the ortho term linear in d_sae (fitted exponent <= 1.2)",
                          "measured": f"{fit['peak_bytes']:.2f} over d_sae {fit['d_sae_range']} "
                          f"(with the list and scan rows held: {fit['peak_plus_held_bytes']:.2f})",
                          "met": fit["peak_bytes"] <= 1.2 and fit["peak_plus_held_bytes"] <= 1.2})
    if "ortho" in results:
        fits = results["ortho"]["exponents"]
        for variant, key, what in [(ortho_scaling.EXACT, "peak_bytes", "peak memory"), (ortho_scaling.CHUNKED, "time", "time")]:
            fit = fits.get(variant)
            if fit and fit[key] is not None:
                found.append({"target": f"{variant}: {what} grows linearly in d_sae (fitted exponent <= 1.2)",
                              "measured": f"{fit[key]:.2f} over d_sae {fit['d_sae_range']}", "met": fit[key] <= 1.2})
    return found


def machine(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="sizes (default: cpu on CPU, gpu on CUDA)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, help="timed repeats for every section (default: the preset's)")
    parser.add_argument("--warmup", type=int, help="untimed warm-up rounds (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/speed/<preset>)")
    parser.add_argument("--whole-run-d-in", type=int, help="section 6: only the shapes of this d_in")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other sections of the results.json already in --out (each section "
                        "keeps the command and time of the run that measured it)")
    args = parser.parse_args(argv)

    device = str(torch.device(args.device))
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    preset_name = args.preset or ("gpu" if torch.device(device).type == "cuda" else "cpu")
    preset = PRESETS[preset_name]
    if args.repeats is not None:
        preset = replace(preset, repeats=args.repeats, step_repeats=args.repeats)
    if args.warmup is not None:
        preset = replace(preset, warmup=args.warmup)
    if args.whole_run_d_in is not None:
        preset = replace(preset, whole_run=[w for w in preset.whole_run if w.shape.d_in == args.whole_run_d_in])
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections {args.sections}: unknown {unknown}; allowed are {', '.join(SECTIONS)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_dir = args.out or RESULTS_ROOT / preset_name
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results: dict[str, Any] = {}
    bar = tqdm(sections, desc="benchmarks", file=sys.stderr)
    say = bar.write
    for section in bar:
        if section == "step":
            results["step"] = step.run(preset.step_shapes, device, preset.step_repeats, preset.warmup, preset.listed_shares, say)
        elif section == "contrastive":
            results["contrastive"] = contrastive_cost.run(
                preset.contrastive_batches, preset.contrastive_d_ins, preset.contrastive_ks, device, preset.repeats, preset.warmup, say
            )
        elif section == "ortho":
            results["ortho"] = ortho_scaling.run(
                preset.ortho_d_in, preset.ortho_sizes, preset.ortho_chunk_size, preset.block_size, device, preset.repeats, preset.warmup, say
            )
        elif section == "fidelity":
            shape = preset.fidelity_shape
            results["fidelity"] = close_pairs_fidelity.run(
                shape.d_in, shape.d_sae, shape.batch, preset.fidelity_steps, preset.fidelity_offsets, device, say
            )
        elif section == "memory":
            results["memory"] = ortho_memory.run(
                preset.ortho_d_in, preset.memory_sizes, preset.ortho_chunk_size, preset.block_size, device, say
            )
        elif section == "whole_run":
            results["whole_run"] = whole_run.run(preset.whole_run, device, say)
        elif section == "approximation":
            results["approximation"] = approximation.run(
                preset.ablation_ks, preset.ablation_seeds, preset.ablation_batch, preset.ablation_gaussian_d_in, preset.ablation_sae_steps, say
            )
    previous: dict[str, Any] = {}
    if args.merge and (out_dir / "results.json").exists():
        previous = json.loads((out_dir / "results.json").read_text())
    results["meta"] = {
        "command": "python -m benchmarks.speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": preset_name,
        "sizes": asdict(preset),
        "device": device,
        "machine": machine(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "step_repeats": preset.step_repeats,
        "repeats": preset.repeats,
        "warmup": preset.warmup,
        "memory_note": memory_measure_note(device),
        "default_ortho_mode": OrthoContrastiveTrainingSAEConfig.ortho_mode,
        "seconds": time.perf_counter() - started,
        "sections": sections,
    }
    section_meta = {
        **previous.get("section_meta", {s: previous["meta"] for s in SECTIONS if s in previous}),
        **{s: results["meta"] for s in sections},
    }
    if "whole_run" in results and "whole_run" in previous:  # keep the shapes not rerun
        rerun = [group["shape"] for group in results["whole_run"]]
        kept = [group for group in previous["whole_run"] if group["shape"] not in rerun]
        results["whole_run"] = sorted(kept + results["whole_run"], key=lambda g: (g["shape"]["d_in"], g["shape"]["d_sae"]))
    results = {**{s: previous[s] for s in SECTIONS if s in previous and s not in sections}, **results}
    results["section_meta"] = {s: section_meta[s] for s in SECTIONS if s in results}
    results["targets"] = targets(results)

    write_file_atomically(out_dir / "results.json", json.dumps(results, indent=1, default=str))
    pngs = report.plots(results, out_dir)
    report.write_report(results, out_dir)  # results.md and README.md
    print(f"\nResults in {out_dir}: results.json, results.md, {', '.join(p.name for p in pngs)}")
    print(f"{results['meta']['machine']}, {results['meta']['threads']} thread(s), {results['meta']['seconds']:.0f} s")
    for target in results["targets"]:
        print(f"  [{'met' if target['met'] else 'MISSED'}] {target['target']}: {target['measured']}")
    for note in preset.notes:
        print(f"  note: {note}")
    return results


if __name__ == "__main__":
    main()
