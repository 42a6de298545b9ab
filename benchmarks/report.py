"""Markdown tables and PNG plots from the results of ``benchmarks.speed``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.results_readme import ResultsReadme, write_results_readme  # noqa: E402
from orthosae_plugin.saving import write_file_atomically  # noqa: E402


def _mb(n_bytes: float | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**20:,.1f}"


def _t(timing: dict[str, float]) -> str:
    return f"{timing['median_s']:.4g} [{timing['q25_s']:.3g}, {timing['q75_s']:.3g}]"


def _x(timing: dict[str, float]) -> str:
    return f"{timing['median_s']:.3f} [{timing['q25_s']:.3f}, {timing['q75_s']:.3f}]"


def _share(share: float | None) -> str:
    if share is None:
        return "-"
    return "over-full (exact)" if share != share else f"{share:.3%}"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    out = [
        "# Speed, memory and approximation benchmarks",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s); device `{meta['device']}`; "
        f"total {meta['seconds']:.0f} s.  ",
        f"Times: median [25th, 75th percentile] of {meta['step_repeats']} (section 1) or {meta['repeats']} (other "
        f"sections) interleaved repeats after {meta['warmup']} warm-up round(s); "
        "ratios are per-repeat ratios of interleaved runs, summarised the same way.  ",
        f"Peak memory: {meta['memory_note']}. Saved for backward: bytes of the distinct storages autograd "
        "keeps between forward and backward, other than the inputs'.  ",
        f"Default `ortho_mode`: `{meta['default_ortho_mode']}`.",
        "",
        *[f"- Section `{name}`: `{m['command']}`, {m['seconds']:.0f} s in that run ({m['machine']}, {m['threads']} thread(s))."
          for name, m in results.get("section_meta", {}).items()],
        "",
        *[f"- {note}" for note in meta["sizes"]["notes"]],
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for target in results["targets"]:
        out.append(f"| {target['target']} | {target['measured']} | {'yes' if target['met'] else 'NO'} |")

    if "step" in results:
        out += ["", "## 1. Training step: ortho_contrastive vs SAELens standard", ""]
        for group in results["step"]:
            shape = group["shape"]
            out += [
                f"`d_in={shape['d_in']}, d_sae={shape['d_sae']}, batch={shape['batch']}`",
                "",
                "| variant | step time (s) | ratio to standard | peak memory (MiB) | close pairs listed |",
                "|---|---|---|---|---|",
            ]
            for row in group["rows"]:
                out.append(
                    f"| {row['variant']} | {_t(row['time'])} | {_x(row['ratio_to_standard'])} | "
                    f"{_mb(row['peak_bytes'])} | {_share(row['listed_share'])} |"
                )
            out.append("")

    if "contrastive" in results:
        out += [
            "",
            "## 2. Contrastive term: projected vs exact similarities (forward + backward)",
            "",
            "| batch | d_in | variant | time (s) | speed-up vs exact | saved for backward (MiB) | exact / this | peak (MiB) | exact / this |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for group in results["contrastive"]:
            for row in group["rows"]:
                out.append(
                    f"| {group['batch']} | {group['d_in']} | {row['variant']} | {_t(row['time'])} | "
                    f"{_x(row['speedup_vs_exact'])} | {_mb(row['saved_for_backward_bytes'])} | "
                    f"{row['saved_bytes_ratio_exact_over_this']:.1f} | {_mb(row['peak_bytes'])} | "
                    f"{row['peak_ratio_exact_over_this']:.1f} |"
                )

    if "ortho" in results:
        ortho = results["ortho"]
        out += [
            "",
            f"## 3. Orthogonality term vs d_sae (d_in={ortho['d_in']}, forward + backward; the scan has no backward)",
            "",
            f"Planted decoder: groups of {ortho['group']} latents sharing a direction; tau={ortho['tau']}, "
            f"margin={ortho['margin']}; chunk size {ortho['chunk_size']}.",
            "",
            "| variant | d_sae | time (s) | peak (MiB) | saved for backward (MiB) | listed pairs |",
            "|---|---|---|---|---|---|",
        ]
        for row in ortho["rows"]:
            out.append(
                f"| {row['variant']} | {row['d_sae']} | {_t(row['time'])} | {_mb(row['peak_bytes'])} | "
                f"{_mb(row['saved_for_backward_bytes'])} | {row['listed_pairs'] if row['listed_pairs'] is not None else '-'} |"
            )
        out += ["", "Fitted growth exponents (slope of log cost against log d_sae; the theory: 2 for dense, "
                "blockwise and the scan, 1 for chunked and for a list of a fixed number of pairs per latent):", "",
                "| variant | d_sae range | time exponent | time exponent, 3 largest sizes | peak-memory exponent |",
                "|---|---|---|---|---|"]
        for name, fit in ortho["exponents"].items():
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            out.append(f"| {name} | {fit['d_sae_range']} | {fmt(fit['time'])} | {fmt(fit['time_largest_3'])} | "
                       f"{fmt(fit['peak_bytes'])} |")

    if "fidelity" in results:
        fid = results["fidelity"]
        out += [
            "",
            f"## 4. close_pairs vs exact along a training run (d_in={fid['d_in']}, d_sae={fid['d_sae']}, "
            f"batch={fid['batch']}, {fid['steps']} steps, threshold annealed 0.3 -> 0.05 over the run)",
            "",
            "| data | scans (per 1,000 steps) | recomputed steps (per 1,000) | ortho steps on the list | "
            "ortho steps over-full (exact) | median relative error | max relative error | "
            "steps with error > 1e-3 (first) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, one in fid["runs"].items():
            summary = one["summary"]
            fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
            out.append(
                f"| synthetic, {name} | {summary['scans']} ({summary.get('scans_per_1000_steps', 0):.0f}) | "
                f"{summary.get('recomputed_steps', '-')} ({summary.get('recomputed_per_1000_steps', 0):.0f}) | "
                f"{summary['steps_on_the_list']} | "
                f"{summary['steps_fell_back_to_exact']} | {fmt(summary['median_relative_error'])} | "
                f"{fmt(summary['max_relative_error'])} | {summary['steps_with_relative_error_above_1e-3']} "
                f"({summary['first_such_step']}) |"
            )

    if "whole_run" in results:
        out += [
            "",
            "## 6. Whole run: the training step along the default anneal (clock advancing, interleaved with standard)",
            "",
            "Ratio = summed step time / SAELens `standard`'s over the timed steps of each phase; run average = "
            "trapezoid mean over the phases. Scans and recomputed steps are those inside the timed window.",
        ]
        for group in results["whole_run"]:
            shape = group["shape"]
            out += [
                "",
                f"`d_in={shape['d_in']}, d_sae={shape['d_sae']}, batch={shape['batch']}`: "
                f"{group['steps_per_phase']} timed steps per phase after {group['warmup_per_phase']} untimed, "
                f"anneal of {group['anneal_steps']} steps",
                "",
                "| variant | " + " | ".join(f"phase {p['phase']:.2f} (tau {p['rows'][1]['tau']:.3f})" for p in group["phases"])
                + " | run average |",
                "|---|" + "---|" * (len(group["phases"]) + 1),
            ]
            names = [r["variant"] for r in group["phases"][0]["rows"][1:]]
            for name in names:
                cells = []
                for p in group["phases"]:
                    row = next(r for r in p["rows"] if r["variant"] == name)
                    how = "list" if row.get("on_the_list") else ("exact" if "close_pairs" in name or "defaults" in name else "")
                    if how == "exact" and row.get("overfull_chunks", 1) > 1:
                        how = f"{row['overfull_chunks']} chunks"
                    extra = f"{how}, {row['scans']} scans, {row['recomputed_steps']} recomputed" if how else ""
                    if "bf16_value_rel_error" in row:
                        extra += (f"; bf16 error: value {row['bf16_value_rel_error']:.1e}, "
                                  f"gradient {row['bf16_grad_rel_error']:.1e}")
                    if "chunk_value_rms_rel_error" in row:
                        extra += (f"; estimate's rms error: value {row['chunk_value_rms_rel_error']:.2f}, "
                                  f"gradient {row['chunk_grad_rms_rel_error']:.2f}")
                    cells.append(f"{row['ratio_to_standard']:.2f}" + (f" ({extra})" if extra else ""))
                out.append(f"| {name} | " + " | ".join(cells) + f" | **{group['run_average_ratio'][name]:.2f}** |")
            std = [p["rows"][0]["seconds_per_step"] for p in group["phases"]]
            out.append(f"| standard, s/step | " + " | ".join(f"{t:.3f}" for t in std) + " | |")

    if "memory" in results:
        mem = results["memory"]
        out += [
            "",
            f"## 7. Peak memory of the orthogonality term per mode vs d_sae (d_in={mem['d_in']}, one call each)",
            "",
            "Peak = allocated during the call above its start. Held = what 'close_pairs' keeps between steps "
            "(the list and the unit rows of its scan).",
            "",
            "| mode | d_sae | peak (MiB) | held (MiB) |",
            "|---|---|---|---|",
        ]
        for row in mem["rows"]:
            out.append(f"| {row['variant']} | {row['d_sae']} | {_mb(row['peak_bytes'])} | {_mb(row['held_bytes'])} |")
        out += ["", "| mode | d_sae range | peak exponent | peak + held exponent |", "|---|---|---|---|"]
        for name, fit in mem["exponents"].items():
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            out.append(f"| {name} | {fit['d_sae_range']} | {fmt(fit['peak_bytes'])} | {fmt(fit['peak_plus_held_bytes'])} |")

    if "approximation" in results:
        approx = results["approximation"]
        out += [
            "",
            f"## 5. Approximation quality of the projection (batch {approx['batch']}, "
            f"{approx['seeds']} projection seeds, temperature {approx['temperature']})",
            "",
            "| data | k | cos error mean | cos error std | predicted std | InfoNCE gap (proj - exact) | grad cosine |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, data in approx["data"].items():
            for row in data["rows"]:
                out.append(
                    f"| {name} (d_in={data['d_in']}) | {row['k']} | {row['cos_error_mean']:+.4f} | "
                    f"{row['cos_error_std']:.4f} | {row['predicted_cos_error_std']:.4f} | "
                    f"{row['loss_gap']:+.4f} ± {row['loss_gap_spread']:.4f} | "
                    f"{row['grad_cosine']:.3f} ± {row['grad_cosine_spread']:.3f} |"
                )
    return "\n".join(out) + "\n"


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the PNGs; return their paths."""
    written = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    for i, group in enumerate(results.get("step", [])):
        rows = group["rows"]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
        med = [r["ratio_to_standard"]["median_s"] for r in rows]
        err = [[m - r["ratio_to_standard"]["q25_s"] for m, r in zip(med, rows)],
               [r["ratio_to_standard"]["q75_s"] - m for m, r in zip(med, rows)]]
        ax.barh([r["variant"] for r in rows], med, xerr=err, color="tab:blue")
        ax.axvline(1.15, color="tab:red", linestyle="--", label="target 1.15")
        ax.invert_yaxis()
        ax.set_xlabel("training-step time / SAELens standard")
        shape = group["shape"]
        ax.set_title(f"d_in={shape['d_in']}, d_sae={shape['d_sae']}, batch={shape['batch']}")
        ax.legend()
        save(fig, f"step_ratio_{i}.png")

    if "contrastive" in results:
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
        for group in results["contrastive"]:
            rows = [r for r in group["rows"] if r["k"] is not None]
            exact = next(r for r in group["rows"] if r["variant"] == "exact")
            label = f"B={group['batch']}, d_in={group['d_in']}"
            line = ax_t.plot([r["k"] for r in rows], [r["time"]["median_s"] for r in rows], "o-", label=label)[0]
            ax_t.axhline(exact["time"]["median_s"], color=line.get_color(), linestyle="--")
            ax_m.plot([r["k"] for r in rows], [r["saved_for_backward_bytes"] / 2**20 for r in rows], "o-", color=line.get_color(), label=label)
            ax_m.axhline(exact["saved_for_backward_bytes"] / 2**20, color=line.get_color(), linestyle="--")
        for ax, ylabel in [(ax_t, "forward + backward (s)"), (ax_m, "saved for backward (MiB)")]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("projection dim k (dashed: exact)")
            ax.set_ylabel(ylabel)
        ax_t.legend(fontsize=7)
        save(fig, "contrastive_cost.png")

    if "ortho" in results:
        ortho = results["ortho"]
        for key, ylabel, name in [("time", "forward + backward (s)", "ortho_time.png"), ("peak_bytes", "peak memory (MiB)", "ortho_memory.png")]:
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            for variant, fit in ortho["exponents"].items():
                rows = [r for r in ortho["rows"] if r["variant"] == variant]
                ys = [r["time"]["median_s"] if key == "time" else r["peak_bytes"] / 2**20 for r in rows]
                slope = fit["time" if key == "time" else "peak_bytes"]
                ax.plot([r["d_sae"] for r in rows], ys, "o-", label=f"{variant} (slope {slope:.2f})" if slope is not None else variant)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"d_sae (d_in={ortho['d_in']})")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
            save(fig, name)

    if "fidelity" in results:
        fig, (ax_share, ax_err) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
        for name, one in results["fidelity"]["runs"].items():
            steps = [r["step"] for r in one["rows"]]
            share = [r["listed_share"] if r["listed_share"] is not None else float("nan") for r in one["rows"]]
            line = ax_share.plot(steps, share, label=f"{name}: listed share (gap: over-full, exact)")[0]
            ax_err.plot(steps, [max(r["relative_error"], 1e-12) for r in one["rows"]], color=line.get_color(), label=name)
        ax_share.axhline(results["fidelity"]["runs"][name]["max_pair_fraction"], color="grey", linestyle=":",
                         label="ortho_max_pair_fraction")
        ax_share.set_ylabel("share of pairs listed")
        ax_share.legend(fontsize=7)
        ax_err.set_yscale("log")
        ax_err.set_ylabel("|close_pairs - exact| / exact")
        ax_err.set_xlabel("training step")
        ax_err.legend(fontsize=7)
        save(fig, "close_pairs_fidelity.png")

    if "approximation" in results:
        data = results["approximation"]["data"]
        for key, ylabel, name in [
            ("cos_error_std", "std of projected - exact cosine", "ablation_cos_error.png"),
            ("loss_gap", "InfoNCE(projected) - InfoNCE(exact)", "ablation_infonce_gap.png"),
            ("grad_cosine", "cos(grad projected, grad exact) wrt x_hat", "ablation_grad_cosine.png"),
        ]:
            fig, ax = plt.subplots(figsize=(6, 4))
            for label, d in data.items():
                rows = d["rows"]
                ks = [r["k"] for r in rows]
                line = ax.errorbar(ks, [r[key] for r in rows], yerr=[r[key + "_spread"] for r in rows], marker="o",
                                   capsize=3, label=f"{label} (d_in={d['d_in']})")
                if key == "cos_error_std":
                    ax.plot(ks, [r["predicted_cos_error_std"] for r in rows], "--", color=line[0].get_color(),
                            label=f"{label}: sqrt(mean((1-rho^2)^2)/k)")
                if key == "cos_error_std":
                    ax.set_yscale("log")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("projection dim k")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
            save(fig, name)
    return written


SECTION_SUMMARIES = {
    "step": "one training step (forward, backward, Adam) of `ortho_contrastive` against SAELens `standard`",
    "contrastive": "the contrastive term, projected against exact similarities: time and memory kept for backward",
    "ortho": "the orthogonality term in each mode against `d_sae`",
    "fidelity": "the `close_pairs` loss against `exact` at every step of a training run",
    "approximation": "the projection's approximation quality against `k` (cosine error, InfoNCE gap, gradient cosine)",
    "whole_run": "the training step along the whole threshold anneal, defaults against `standard`, "
                 "averaged over the run from sampled anneal points",
    "memory": "peak memory of the orthogonality term in every mode against `d_sae`",
}
"""What each section of ``benchmarks.speed`` measures, for the folder's README."""

FILE_NOTES = {
    "results.json": "every measurement, with the command, machine and time of the run that made each section",
    "results.md": "every section's tables (the full report)",
    "scan_rate.json": "scans per 1,000 steps along the ground-truth benchmark's runs (`python -m benchmarks.scan_rate`)",
    "scan_rate_smollm2.json": "the same along a SmolLM2 run (`python -m benchmarks.scan_rate --source smollm2`)",
}


def results_readme(results: dict[str, Any]) -> ResultsReadme:
    """The README of a speed results folder, from its ``results.json``."""
    sections = [s for s in SECTION_SUMMARIES if s in results]
    section_meta = results.get("section_meta", {s: results["meta"] for s in sections})
    runs = [(s, section_meta[s]) for s in sections if s in section_meta]
    provenance = [
        (f"Section `{name}`", f"`{m['command']}`, {m['seconds']:.0f} s in that run; {m['machine']}, "
                              f"{m['threads']} torch thread(s), device `{m['device']}`, torch {m['torch']}")
        for name, m in runs
    ]
    provenance.append((
        "Covers",
        "step and term timings on Gaussian activations (mean 1 where a run trains), one seed, medians of "
        "interleaved repeats after a warm-up; the whole run from sampled points of the anneal, interpolated "
        "between them; the projection's quality also on the toy model's activations",
    ))
    rows = ["| target | measured | met |", "|---|---|---|"]
    rows += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |" for t in results.get("targets", [])]
    return ResultsReadme(
        title=f"Speed, memory and approximation: preset `{results['meta']['preset']}`",
        measures="What `python -m benchmarks.speed` measured here:\n\n"
                 + "\n".join(f"- `{s}`: {SECTION_SUMMARIES[s]}" for s in sections),
        provenance=provenance,
        table="The targets, as the benchmark checked them (every section's tables are in `results.md`):\n\n"
              + "\n".join(rows),
        caveats=[
            "Not a timed language-model run: a whole-run figure is an estimate from a few points of the anneal "
            "on synthetic data, with the decoder moved by a few Adam steps there.",
            "Ratios are taken against SAELens `standard` in the same process, interleaved; on a CPU shared with "
            "other jobs they move by a few hundredths between runs.",
            f"Peak memory: {results['meta']['memory_note']}.",
            "Sections merged from different runs (`--merge`) each keep their own command, machine and time, above.",
        ],
        files=[],
        docs="speed.md",
        regenerate="python -m benchmarks.report <this folder>",
    )


def write_report(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``results.md`` and ``README.md`` of ``out_dir`` from ``results`` (no plots)."""
    write_file_atomically(out_dir / "results.md", markdown(results))
    readme = results_readme(results)
    present = sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.name != "README.md")
    readme.files = [(name, FILE_NOTES.get(name, "a plot of `results.md`'s tables" if name.endswith(".png") else "-"))
                    for name in present]
    return [out_dir / "results.md", write_results_readme(out_dir, readme)]


if __name__ == "__main__":
    # Re-render saved results, measuring nothing: python -m benchmarks.report FOLDER...
    # The targets are checked again on the saved measurements (their wording may have changed).
    import json
    import sys

    from benchmarks.speed import targets

    for folder in map(Path, sys.argv[1:]):
        saved = json.loads((folder / "results.json").read_text())
        saved["targets"] = targets(saved)
        write_file_atomically(folder / "results.json", json.dumps(saved, indent=1, default=str))
        print(*write_report(saved, folder))
