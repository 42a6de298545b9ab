"""The absorption eval's own noise: one SAE, several eval seeds (``run_absorption_eval_seeds``).

Every seeded part of the eval (vocabulary subsample, SAEBench's 80/20 split and in-context
examples, ground-truth and k-sparse probe training) is drawn again per seed; the SAE and
the model stay fixed. The spread says how large a difference between two SAEs must be
before this eval resolves it.

* ``--planted``: the planted first-letter model (offline, seconds per eval), reference SAEs
  with 0 / 30 / 60 / 90 % absorption (``--absorbed``), SAEBench's full (1,149-word)
  vocabulary.
* ``--smollm2``: SmolLM2-135M-Instruct at layer 15, one `standard` SAE (trained here on
  cached activations unless ``--sae`` names a saved one), 100 words per letter.

Run::

    OMP_NUM_THREADS=1 python -m benchmarks.eval_noise --planted --seeds 5
    OMP_NUM_THREADS=1 python -m benchmarks.eval_noise --smollm2 --seeds 3 --tokens 204800

Writes ``{out}/{planted,smollm2}.json`` (``smollm2-{folder}.json`` for ``--sae``; per SAE: :class:`EvalSpread`, wall time) and
``{out}/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_lens import SAE

from benchmarks.results_readme import ResultsReadme, minutes, write_results_readme
from orthosae_plugin.evals.absorption import run_absorption_eval_seeds
from orthosae_plugin.evals.absorption_report import EvalSpread, format_spread
from orthosae_plugin.evals.planted import build_planted_model, build_reference_sae
from orthosae_plugin.saving import write_file_atomically

METRICS = ("mean_absorption_fraction_score", "mean_full_absorption_score",
           "mean_num_split_features", "n_letters_scored")


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores (load average "
            f"{os.getloadavg()[0]:.1f} at the start), {torch.get_num_threads()} torch thread(s)")


def planted_noise(out: Path, n_seeds: int, absorbed: list[int],
                  config: AbsorptionEvalConfig) -> dict:
    planted = build_planted_model()
    results = {}
    for k in absorbed:
        start = time.perf_counter()
        spread = run_absorption_eval_seeds(
            build_reference_sae(planted, k), planted.model, out / "work" / "planted",
            config, n_seeds=n_seeds, sae_name=f"planted_{k}", show_progress=False)
        results[f"planted_{k}"] = {"spread": asdict(spread),
                                   "wall_seconds": round(time.perf_counter() - start, 1)}
        print(format_spread(spread), flush=True)
    return results


def smollm2_noise(out: Path, n_seeds: int, sae_path: Path | None, tokens: int,
                  words_per_letter: int) -> dict:
    """One SmolLM2 SAE's spread: ``sae_path`` (a saved SAE, named by its folder) or, without
    it, a `standard` SAE trained here on ``tokens`` cached activations of layer 15."""
    from benchmarks.alarm_evidence import train_smollm2
    from orthosae_plugin.smollm2.activations import cached_activations
    from orthosae_plugin.smollm2.model import load_smollm2

    start = time.perf_counter()
    trained_here = sae_path is None
    if trained_here:
        activations = cached_activations("blocks.15.hook_resid_post", n_tokens=tokens)
        sae_path = train_smollm2(out / "work" / "smollm2_train", activations, tokens=tokens)[-1]
    train_seconds = time.perf_counter() - start
    name = "smollm2_standard" if trained_here else sae_path.name
    sae = SAE.load_from_disk(sae_path)
    model = load_smollm2()
    start = time.perf_counter()
    spread = run_absorption_eval_seeds(
        sae, model, out / "work" / ("smollm2" if trained_here else name), AbsorptionEvalConfig(),
        n_seeds=n_seeds, sae_name=name, show_progress=False, words_per_letter=words_per_letter)
    print(format_spread(spread), flush=True)
    row = {"spread": asdict(spread), "wall_seconds": round(time.perf_counter() - start, 1),
           "sae": str(sae_path), "architecture": sae.cfg.architecture(), "d_sae": sae.cfg.d_sae,
           "hook_name": sae.cfg.metadata.hook_name, "words_per_letter": words_per_letter}
    if trained_here:
        row |= {"training_tokens": tokens, "train_seconds": round(train_seconds, 1)}
    return {name: row}


def describe(name: str, row: dict) -> str:
    """What a SmolLM2 row's SAE is: trained by this benchmark, or loaded from a folder."""
    if "training_tokens" in row:
        return (f"`{name}`: SAELens `standard` (d_sae 2304, l1 5, lr 1e-3, batch 1024) trained "
                f"here on {row['training_tokens']:,} tokens of layer 15 in {row['train_seconds']:.0f} s "
                f"(caching its activations included), scored at {row['words_per_letter']} words per letter.")
    return (f"`{name}`: a saved `{row['architecture']}` SAE (d_sae {row['d_sae']}, "
            f"`{row['hook_name']}`) loaded from its folder, scored at {row['words_per_letter']} "
            "words per letter.")


def markdown(sections: dict[str, dict]) -> str:
    lines = []
    for section, data in sections.items():
        config = data["meta"].get("config", {})
        lines += [f"## {section} (`{data['meta']['command']}`; {data['meta']['machine']}; "
                  f"{minutes(data['meta']['wall_seconds'])}; max k {config.get('max_k_value')}, "
                  f"{config.get('k_sparse_probe_num_epochs')} k-sparse epochs)",
                  "", "| SAE | seeds | verdicts | " + " | ".join(
                      f"{m} mean ± sd [min, max]" for m in METRICS) + " | wall (s) |",
                  "|---" * (4 + len(METRICS)) + "|"]
        for name, row in data["results"].items():
            spread = EvalSpread.from_dict(row["spread"])
            cells = [f"{spread.metrics[m].mean:.4f} ± {spread.metrics[m].std:.4f} "
                     f"[{spread.metrics[m].min:.4f}, {spread.metrics[m].max:.4f}]" for m in METRICS]
            verdicts = ", ".join(f"{spread.verdicts.count(v)} {v}" for v in sorted(set(spread.verdicts)))
            if spread.failed_seeds:
                verdicts += f"; seeds {sorted(spread.failed_seeds)}: nothing to score"
            lines.append(f"| {name} | {', '.join(map(str, spread.seeds))} | {verdicts} | "
                         + " | ".join(cells) + f" | {row['wall_seconds']:.0f} |")
        lines += ["", *[describe(name, row) for name, row in data["results"].items()
                        if "words_per_letter" in row]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planted", action="store_true")
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--seeds", type=int, default=3, help="eval seeds (42, 43, ...)")
    parser.add_argument("--sae", type=Path, default=None,
                        help="a saved SmolLM2 layer-15 SAE (its own section, named by its folder)")
    parser.add_argument("--tokens", type=int, default=204_800,
                        help="training tokens of the SmolLM2 SAE trained here")
    parser.add_argument("--words-per-letter", type=int, default=100)
    parser.add_argument("--absorbed", type=int, nargs="+", default=[0, 3, 6, 9],
                        help="planted: reference SAEs with these many of 10 groups absorbed")
    parser.add_argument("--fast", action="store_true",
                        help="SAEBench's k-sparse probes up to k = 3, 20 epochs (default: "
                        "its config, 10 and 50)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_noise"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python -m benchmarks.eval_noise " + " ".join(argv if argv is not None else
                                                             os.sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    smollm2_section = "smollm2" if args.sae is None else f"smollm2-{args.sae.name}"
    for section, enabled in (("planted", args.planted), (smollm2_section, args.smollm2)):
        if not enabled:
            continue
        meta = {"command": command.strip(), "machine": machine()}
        start = time.perf_counter()
        config = (AbsorptionEvalConfig(max_k_value=3, k_sparse_probe_num_epochs=20)
                  if args.fast else AbsorptionEvalConfig())
        meta["config"] = {"max_k_value": config.max_k_value,
                          "k_sparse_probe_num_epochs": config.k_sparse_probe_num_epochs}
        results = (planted_noise(args.out, args.seeds, args.absorbed, config)
                   if section == "planted" else
                   smollm2_noise(args.out, args.seeds, args.sae, args.tokens,
                                 args.words_per_letter))
        meta["wall_seconds"] = round(time.perf_counter() - start, 1)
        write_file_atomically(args.out / f"{section}.json",
                              json.dumps({"meta": meta, "results": results}, indent=1))
    write_readme(args.out)
    return 0


def write_readme(out: Path) -> Path:
    """The folder's README from every section's JSON in it."""
    sections = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    return write_results_readme(out, ResultsReadme(
        title="The absorption eval's own noise (eval seeds)",
        measures="One SAE and one model per row; only the eval seed changes (vocabulary "
        "subsample, SAEBench's 80/20 split and in-context examples, ground-truth and "
        "k-sparse probe training). The spread is what the eval alone adds to a difference "
        "between two SAEs.",
        provenance=[(name, f"`{data['meta']['command']}` on {data['meta']['machine']}, "
                     f"{minutes(data['meta']['wall_seconds'])}") for name, data in sections.items()],
        table=markdown(sections),
        caveats=["sd: sample standard deviation over the seeds; with 3-5 seeds it is itself "
                 "uncertain by roughly +-40 %.",
                 "The `smollm2` section's SAE is a short run (200 steps; see its line): the alarm "
                 "flags it at every seed, so its absorption is not a result to quote. What the row gives is the "
                 "eval's own spread on a fixed SAE; a better-trained SAE's may differ.",
                 "SAEBench's full vocabulary (47,078 words on SmolLM2, ~4.1M prompt tokens of "
                 "forward passes per eval seed) is not measured on this CPU."],
        files=[(f"{name}.json", "per SAE: every metric per seed, mean, sd, min, max, "
                "verdicts, result files") for name in sections],
        docs="absorption-eval.md"))


if __name__ == "__main__":
    raise SystemExit(main())
