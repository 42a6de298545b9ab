"""Where SAEs on SmolLM2 stop improving: each arm trained at doubling token budgets.

Every (arm, budget) is its own run of ``benchmarks.real_model`` (its own learning-rate
schedule, threshold anneal and warm-up, sized to that budget), at one sparsity setting
per arm (``--quick``'s middle setting unless ``--setting`` names another), scored with the
same evals as the real-model table: held-out L0, explained variance, CE-loss recovered,
dead latents, SAEBench absorption and the alarm's verdict. Every run reads the same
shuffled stream of ``--cache-tokens`` cached activations; a budget above it replays the
stream (the table says how many passes).

The plateau of an arm is the first budget after which explained variance rises by less
than ``--plateau-ev`` (0.01) per doubling.

Run (resumable: each finished run is saved at once and skipped on restart)::

    python -m benchmarks.plateau --arms standard batchtopk "oc relu: both" \\
        --budgets 262144 524288 1048576 2097152 --batch-size 1024 --cache-tokens 524288
    python -m benchmarks.plateau --from-runs      # re-tabulate, train nothing

Writes, under ``--out`` (default ``benchmarks/results/real_model/plateau``):
``runs/<tokens>/<arm>__<setting>.json`` (one per run, as ``benchmarks.real_model`` saves
them), ``results.json``, ``README.md`` (the table) and one plot per metric against tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import real_model
from benchmarks.real_model import QUICK_INDEX, BenchConfig, RunResult
from benchmarks.results_readme import ResultsReadme, minutes, write_results_readme
from benchmarks.sweep import Arm, lr_note
from orthosae_plugin.saving import write_file_atomically

DEFAULT_OUT = real_model.DEFAULT_OUT / "plateau"
DEFAULT_BUDGETS = (262_144, 524_288, 1_048_576, 2_097_152)
CURVES = (
    ("explained_variance", "explained variance (held out)", 3),
    ("l0", "L0", 1),
    ("dead_latents", "dead latents (share)", 3),
    ("ce_loss_recovered", "CE-loss recovered", 3),
    ("absorption", "SAEBench mean absorption fraction", 3),
)
"""(metric, axis label, digits): one plot each against tokens, and the table's columns."""


def setting_of(arm: Arm, settings: dict[str, float]) -> float:
    return settings.get(arm.name, arm.sparsity_values[QUICK_INDEX])


def runs_dir(out: Path, tokens: int) -> Path:
    return out / "runs" / f"{tokens}"


def run_budgets(base: BenchConfig, arms: Sequence[Arm], settings: dict[str, float],
                budgets: Sequence[int], out: Path, work_dir: Path,
                make_source: Callable[[BenchConfig], Any], data: str,
                on_run: Callable[[], None] = lambda: None,
                log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
                ) -> dict[int, list[RunResult]]:
    """Every (budget, arm) run, trained or loaded from disk; the model and SAEBench's
    forwards are shared by all of them."""
    sources: dict[int, Any] = {}

    def shared_source(bench: BenchConfig) -> Any:
        if bench.layer not in sources:
            sources[bench.layer] = make_source(bench)
        return sources[bench.layer]

    memo: dict[Any, Any] = {}
    results = {}
    for tokens in budgets:
        bench = replace(base, training_tokens=tokens)
        budget_arms = [replace(arm, sparsity_values=(setting_of(arm, settings),)) for arm in arms]
        results[tokens] = real_model.run_grid(
            bench, budget_arms, False, runs_dir(out, tokens), work_dir, shared_source,
            on_run=lambda _: on_run(), log=log, data=data, forward_memo=memo)
    return results


def plateau_budget(curve: list[tuple[int, float]], min_gain: float) -> int | None:
    """The first budget after which EV rises by less than ``min_gain`` on the next
    doubling; None when every measured doubling still gains more."""
    for (tokens, ev), (_, next_ev) in zip(curve, curve[1:]):
        if next_ev - ev < min_gain:
            return tokens
    return None


def summary(results: dict[int, list[RunResult]], base: BenchConfig, min_gain: float) -> dict[str, Any]:
    arms: dict[str, dict[str, Any]] = {}
    for tokens, runs in sorted(results.items()):
        for run in runs:
            bench = replace(base, training_tokens=tokens)
            arm = arms.setdefault(run.arm, {"setting": f"{run.sparsity_field}={run.sparsity:g}", "budgets": []})
            arm["budgets"].append({
                "tokens": tokens, "steps": bench.steps, "epochs": round(bench.epochs, 3),
                **{m: run.metrics[m] for m, _, _ in CURVES}, "train_seconds": run.metrics["train_seconds"],
                "eval_seconds": run.eval_seconds, "trusted": bool(run.alarm["trustworthy"]),
                "alarm_reasons": run.alarm.get("reasons", []),
                "random_alignment_level": run.alarm.get("random_alignment_level"),
                "letters": run.absorption_letters,
            })
    for arm in arms.values():
        curve = [(b["tokens"], b["explained_variance"]) for b in arm["budgets"]]
        arm["plateau_tokens"] = plateau_budget(curve, min_gain)
    return arms


def table(arms: dict[str, Any], min_gain: float) -> str:
    lines = []
    for name, arm in arms.items():
        plateau = arm["plateau_tokens"]
        lines += [f"### {name} ({arm['setting']})", "",
                  f"Plateau (EV gain < {min_gain:g} per doubling): "
                  + (f"**{plateau:,} tokens**" if plateau else
                     f"not reached by {arm['budgets'][-1]['tokens']:,} tokens"), "",
                  "| tokens | steps | passes | " + " | ".join(label.split(" (")[0] for _, label, _ in CURVES)
                  + " | alarm | train s |",
                  "|---" * (len(CURVES) + 5) + "|"]
        previous = None
        for b in arm["budgets"]:
            ev = f"{b['explained_variance']:.3f}"
            if previous is not None:
                ev += f" ({b['explained_variance'] - previous:+.3f})"
            previous = b["explained_variance"]
            cells = [ev] + [f"{b[m]:.{d}f}" for m, _, d in CURVES[1:]]
            alarm = "trusted" if b["trusted"] else "flagged: " + "; ".join(map(short_reason, b["alarm_reasons"]))
            lines.append(f"| {b['tokens']:,} | {b['steps']} | {b['epochs']:.2g} | " + " | ".join(cells)
                         + f" | {alarm} | {b['train_seconds']:.0f} |")
        lines += ["", *why_flagged(arm["budgets"][-1])]
    return "\n".join(lines)


def short_reason(reason: str) -> str:
    """An alarm reason without its list of letters (the per-letter table shows them)."""
    return reason.split("): ")[0] + ")" if "): " in reason else reason


def why_flagged(budget: dict[str, Any]) -> list[str]:
    """Per letter, what the alarm saw in a flagged run (none for a trusted one)."""
    letters = {k: v for k, v in sorted(budget["letters"].items()) if "k1_probe_f1" in v}
    if budget["trusted"] or not letters:
        return []
    level = budget.get("random_alignment_level")
    lines = [f"Flagged at {budget['tokens']:,} tokens; per letter, what the alarm saw (best-aligned latent: the "
             "closest decoder to the letter's probe among the latents SAEBench ranks"
             + (f"; chance level {level:.2f}" if level is not None else "") + "):", "",
             "| letter | ground-truth probe F1 | best single-latent F1 | best-aligned latent cos | aligned share "
             "| absorption |", "|---|---|---|---|---|---|"]
    for letter, v in letters.items():
        absorption = v.get("absorption")
        lines.append(f"| {letter} | {v['gt_probe_f1']:.2f} | {v['k1_probe_f1']:.2f} | {v['best_latent_cos']:.2f} | "
                     f"{v['aligned_share']:.2f} | {'-' if absorption is None else f'{absorption:.3f}'} |")
    return [*lines, ""]


def plot_curves(arms: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric, label, _ in CURVES:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (name, arm) in enumerate(arms.items()):
            tokens = [b["tokens"] for b in arm["budgets"]]
            ax.plot(tokens, [b[metric] for b in arm["budgets"]], marker="os^vDP*X"[i % 8],
                    linestyle="--" if name.startswith("oc") else "-", label=f"{name} ({arm['setting']})")
            flagged = [(b["tokens"], b[metric]) for b in arm["budgets"] if not b["trusted"]]
            if flagged:
                ax.scatter(*zip(*flagged), s=90, facecolors="none", edgecolors="red")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training tokens (log 2); red rings: absorption alarm flagged the run")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{metric}_vs_tokens.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(results: dict[int, list[RunResult]], base: BenchConfig, arms: Sequence[Arm], out: Path,
                  meta: dict[str, Any], min_gain: float) -> dict[str, Path]:
    curves = summary(results, base, min_gain)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json"}
    write_file_atomically(paths["json"], json.dumps({"benchmark": asdict(base), "meta": meta,
                                                     "plateau_ev_gain": min_gain, "arms": curves}, indent=1))
    for path in plot_curves(curves, out):
        paths[path.stem] = path
    n_runs = sum(len(r) for r in results.values())
    paths["readme"] = write_results_readme(out, ResultsReadme(
        title="Training budget: where SAEs on SmolLM2 stop improving",
        measures=(
            "Each arm at one sparsity setting, trained at doubling token budgets; each budget is its own "
            "run with its own schedule (learning-rate decay over the last "
            f"{base.lr_decay_fraction:.0%} of its steps; `ortho_contrastive`'s threshold anneals over its "
            "steps). Metrics as in the real-model table: SAELens's L0, explained variance and CE-loss "
            "recovered on held-out text, dead latents as SAELens's trainer counts them, SAEBench's "
            "first-letter absorption with the package's alarm."),
        provenance=[
            ("Command", f"`{meta['command']}`" + (f" (re-tabulated with `{meta['retabulated_with']}`)"
                                                  if meta.get("retabulated_with") else "")),
            ("Machine", meta["machine"]),
            ("Wall time", f"{minutes(meta['wall_seconds'])} for the last invocation; {n_runs} runs, training "
             f"+ evals summed {minutes(sum(r.metrics['train_seconds'] + r.eval_seconds for rs in results.values() for r in rs))}"),
            ("Model and data", meta.get("source", "")),
            ("Every run", f"d_sae {base.d_sae}, batch {base.batch_size}, {lr_note(base.lr, arms)}, seed "
             f"{base.seed}, one stream of {base.cache_tokens or 'budget'} cached tokens (replayed above it), "
             f"absorption at {base.words_per_letter or 'all'} words per letter, eval seed 42"),
        ],
        table=table(curves, min_gain),
        caveats=[
            "One training seed and one eval seed per point: differences in absorption smaller than the "
            "eval's own spread (`benchmarks/results/eval_noise/`) are not resolved.",
            "Budgets above the cache replay the same activations; the passes column says how often.",
            "A flagged run's absorption is plotted (red ring) but is not to be quoted.",
            *meta.get("notes", []),
        ],
        files=[("runs/<tokens>/*.json", "one run each, as `benchmarks.real_model` saves them"),
               ("results.json", "the curves and each arm's plateau"),
               *[(f"{m}_vs_tokens.png", f"{label} against tokens") for m, label, _ in CURVES]],
        docs="real-model.md",
        regenerate="python -m benchmarks.plateau --from-runs --out <this folder> (with the same settings)",
    ))
    return paths


def load_results(out: Path, base: BenchConfig, arms: Sequence[Arm], settings: dict[str, float],
                 budgets: Sequence[int]) -> dict[int, list[RunResult]]:
    results = {}
    for tokens in budgets:
        bench = replace(base, training_tokens=tokens)
        runs = []
        for arm in arms:
            value = setting_of(arm, settings)
            if run := real_model.saved_run(real_model.run_path(runs_dir(out, tokens), arm, value), arm, value, bench):
                runs.append(run)
        if runs:
            results[tokens] = runs
    return results


def parse_settings(pairs: Sequence[str]) -> dict[str, float]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.rpartition("=")
        if not sep:
            raise ValueError(f"--setting {pair!r} is invalid: expected ARM=VALUE, e.g. 'standard=5'")
        settings[name] = float(value)
    return settings


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", default=["standard", "batchtopk", "matryoshka_batchtopk",
                                                       "oc relu: both"])
    parser.add_argument("--setting", nargs="*", default=[], metavar="ARM=VALUE",
                        help="sparsity setting of an arm (default: its middle setting)")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS))
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=None, help="default: the real-model preset's")
    parser.add_argument("--layer", type=int, default=None, help="default: the real-model preset's")
    parser.add_argument("--cache-tokens", type=int, default=524_288,
                        help="activations cached; larger budgets replay them (default 524,288)")
    parser.add_argument("--plateau-ev", type=float, default=0.01,
                        help="EV gain per doubling below which the curve has plateaued")
    parser.add_argument("--source", choices=sorted(real_model.SOURCES), default="smollm2")
    parser.add_argument("--preset", choices=sorted(real_model.PRESETS), default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--from-runs", action="store_true", help="tabulate the saved runs; train nothing")
    parser.add_argument("--note", action="append", default=[],
                        help="a fact about the runs for the results page (kept by later invocations)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = sorted(args.budgets)
    if budgets[0] < args.batch_size:
        raise ValueError(f"--budgets {budgets[0]} is invalid: every budget must hold at least one batch "
                         f"of --batch-size {args.batch_size}")
    overrides = {k: v for k, v in (("lr", args.lr), ("layer", args.layer)) if v is not None}
    base = replace(real_model.PRESETS[args.preset], batch_size=args.batch_size,
                   cache_tokens=args.cache_tokens, **overrides)
    arms = real_model.arms_from_args(argparse.Namespace(arms=args.arms))
    settings = parse_settings(args.setting)
    unknown = sorted(set(settings) - {a.name for a in arms})
    if unknown:
        raise ValueError(f"--setting names {unknown}, which are not among --arms {args.arms}")
    work_dir = args.work_dir
    if work_dir is None:
        from orthosae_plugin.smollm2.cache import cache_dir

        work_dir = cache_dir() / "real_model_benchmark" / f"plateau-{args.preset}"
    start = time.perf_counter()
    meta = real_model.invocation_meta("plateau", argv, base.device)

    def make_source(bench: BenchConfig) -> Any:
        source = real_model.SOURCES[args.source](bench)
        meta["source"] = source.description
        return source

    previous = args.out / "results.json"
    if previous.exists():  # what the runs were trained on, when this invocation trains none; notes stand
        saved_meta = json.loads(previous.read_text())["meta"]
        meta["source"] = saved_meta.get("source", "")
        meta["notes"] = saved_meta.get("notes", [])
    notes = [*meta.get("notes", []), *args.note]
    meta["notes"] = notes
    if args.from_runs:
        if previous.exists():
            meta = {**json.loads(previous.read_text())["meta"], "retabulated_with": meta["command"], "notes": notes}
        results = load_results(args.out, base, arms, settings, budgets)
        if not results:
            raise SystemExit(f"no runs with these settings under {args.out / 'runs'}")
        return write_outputs(results, base, arms, args.out, meta, args.plateau_ev)

    def progress() -> None:
        meta["wall_seconds"] = time.perf_counter() - start
        done = load_results(args.out, base, arms, settings, budgets)
        write_outputs(done, base, arms, args.out, meta, args.plateau_ev)

    results = run_budgets(base, arms, settings, budgets, args.out, work_dir, make_source,
                          real_model.data_version(args.source), on_run=progress)
    meta["wall_seconds"] = time.perf_counter() - start
    paths = write_outputs(results, base, arms, args.out, meta, args.plateau_ev)
    print(paths["readme"].read_text())
    return paths


if __name__ == "__main__":
    main()
