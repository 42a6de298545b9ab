"""Where first letters live in SmolLM2's residual stream: SAEBench's ground-truth probe per layer.

SAEBench's absorption metric is only as sharp as its ground-truth first-letter probe: a
letter is scored only when the probe's F1 exceeds ``min_GT_probe_f1`` (0.6), and a weak
probe direction blurs every cosine the metric takes against it. This benchmark trains that
probe exactly as the eval does (SAEBench's ``create_dataset_probe_training`` on the same
seeded vocabulary and split, ``train_linear_probe_for_task`` with ``load_or_train_probe``'s
settings, F1 on the test words with logits > 0 as ``k_sparse_probing.build_metrics_df``
computes ``f1_probe``) at several layers, from ONE forward pass per prompt that keeps every
requested layer's ``hook_resid_post``; and it times a forward that stops after each layer
(what the eval and SAE training pay to reach it).

Run (SmolLM2, offline; ~10-40 min on 2 shared CPU cores at 100 words per letter)::

    OMP_NUM_THREADS=1 python -m benchmarks.layer_table --layers 3 6 9 12 15 18 21 24 \
        --words-per-letter 100 --out benchmarks/results/layer_table

Writes ``{out}/layers_wpl{N}.json`` (per layer: per-letter F1, mean, letters passing,
forward seconds) and ``{out}/README.md`` (every JSON in the folder, one table each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_bench.evals.absorption.probing import (
    create_dataset_probe_training,
    train_linear_probe_for_task,
)
from sae_bench.evals.absorption.prompting import first_letter_formatter
from sae_bench.evals.absorption.vocab import LETTERS, get_alpha_tokens
from sklearn import metrics
from transformer_lens import HookedTransformer

from benchmarks.results_readme import ResultsReadme, minutes, write_results_readme
from orthosae_plugin.evals.saebench_fixes import seed_everything, select_words
from orthosae_plugin.saving import write_file_atomically

NEAR_BEST_F1 = 0.02
"""Mean-F1 difference read as a tie. An estimate, not measured: at 100 words per letter each
letter's F1 rests on ~20 test words (one word moves it by ~0.03-0.05), and the mean over 26
letters of one seed is uncertain by roughly 0.01-0.02."""

# load_or_train_probe -> train_and_save_probes defaults (common.py:272-282)
PROBE_BATCH_SIZE = 64
PROBE_EPOCHS = 50
PROBE_LR = 1e-2


def probe_dataset(model: HookedTransformer, words_per_letter: int | None, seed: int,
                  config: AbsorptionEvalConfig):
    """SAEBench's probe prompts and 80/20 split, drawn as the eval draws them (same words,
    same seed, same order of random draws)."""
    vocab = select_words(get_alpha_tokens(model.tokenizer), words_per_letter, seed)  # type: ignore[arg-type]
    seed_everything(seed)
    return create_dataset_probe_training(
        vocab=vocab, formatter=first_letter_formatter(), num_prompts_per_token=1,
        base_template=config.prompt_template)


@torch.no_grad()
def layer_activations(model: HookedTransformer, prompts: list[str], layers: list[int],
                      position: int, batch_size: int = 32) -> dict[int, np.ndarray]:
    """``blocks.{L}.hook_resid_post`` at `position` for every prompt and layer, from one
    forward per batch that stops after the deepest layer. {layer: (n_prompts, d_model)}."""
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    out = {layer: np.zeros((len(prompts), model.cfg.d_model), dtype=np.float32)
           for layer in layers}
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        _, cache = model.run_with_cache(batch, names_filter=hooks,
                                        stop_at_layer=max(layers) + 1)
        for layer, hook in zip(layers, hooks):
            out[layer][start:start + len(batch)] = cache[hook][:, position, :].float().numpy()
    return out


def probe_f1_per_letter(train_df: pd.DataFrame, test_df: pd.DataFrame, train_ND: np.ndarray,
                        test_ND: np.ndarray, seed: int) -> dict[str, float]:
    """Train SAEBench's 26-way probe on one layer and score it on the test words."""
    seed_everything(seed)
    probe, _ = train_linear_probe_for_task(
        train_df=train_df, test_df=test_df, device=torch.device("cpu"),
        train_activations=train_ND, test_activations=test_ND, batch_size=PROBE_BATCH_SIZE,
        num_epochs=PROBE_EPOCHS, lr=PROBE_LR)
    with torch.no_grad():
        logits_NL = probe(torch.from_numpy(test_ND)).float().numpy()
    answers = test_df["answer_class"].to_numpy()
    return {letter: float(metrics.f1_score(answers == i, logits_NL[:, i] > 0.0))
            for i, letter in enumerate(LETTERS)}


@torch.no_grad()
def forward_seconds(model: HookedTransformer, prompts: list[str], layer: int,
                    repeats: int = 3) -> float:
    """Median seconds of a forward over `prompts` that stops after block `layer`."""
    tokens = model.to_tokens(prompts)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(tokens, stop_at_layer=layer + 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: HookedTransformer, layers: list[int], words_per_letter: int | None,
            seed: int, config: AbsorptionEvalConfig, log=print) -> dict:
    start = time.perf_counter()
    train_ds, test_ds = probe_dataset(model, words_per_letter, seed, config)
    frames = {}
    for name, ds in (("train", train_ds), ("test", test_ds)):
        frames[name] = pd.DataFrame({"answer_class": [c for _, c in ds],
                                     "prompt": [p.base for p, _ in ds]})
    n_tokens = sum(len(model.to_tokens(p.base, prepend_bos=False)[0]) for p, _ in train_ds[:50])
    log(f"{len(train_ds)} train / {len(test_ds)} test prompts (~{n_tokens / 50:.0f} tokens each)")
    acts = {name: layer_activations(model, list(frames[name]["prompt"]), layers,
                                    config.prompt_token_pos) for name in frames}
    forward_total = time.perf_counter() - start
    log(f"activations at layers {layers} in {forward_total:.0f} s")
    sample = [p.base for p, _ in train_ds[:32]]
    rows = {}
    for layer in layers:
        f1 = probe_f1_per_letter(frames["train"], frames["test"], acts["train"][layer],
                                 acts["test"][layer], seed)
        values = list(f1.values())
        rows[layer] = {
            "mean_f1": statistics.mean(values),
            "min_f1": min(values),
            "letters_passing": sum(v > config.min_GT_probe_f1 for v in values),
            "forward_seconds_32_prompts": forward_seconds(model, sample, layer),
            "per_letter_f1": f1,
        }
        log(f"layer {layer}: mean F1 {rows[layer]['mean_f1']:.3f}, "
            f"{rows[layer]['letters_passing']}/26 > {config.min_GT_probe_f1}, forward "
            f"{rows[layer]['forward_seconds_32_prompts']:.2f} s / 32 prompts")
    return {
        "model": model.cfg.model_name, "words_per_letter": words_per_letter, "seed": seed,
        "n_train_prompts": len(train_ds), "n_test_prompts": len(test_ds),
        "prompt_token_pos": config.prompt_token_pos, "min_GT_probe_f1": config.min_GT_probe_f1,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "wall_seconds": round(time.perf_counter() - start, 1), "layers": rows,
    }


def markdown(results: list[dict]) -> str:
    lines = []
    for result in results:
        wpl = result["words_per_letter"]
        vocab = "full vocabulary" if wpl is None else f"{wpl} words per letter"
        lines += [f"## {vocab}, seed {result['seed']} ({result['n_train_prompts']} train / "
                  f"{result['n_test_prompts']} test words; {minutes(result['wall_seconds'])} on "
                  f"{result['machine']})", "",
                  "| layer | mean F1 | min F1 | letters passing | forward (s / 32 prompts) |",
                  "|---|---|---|---|---|"]
        for layer, row in sorted(result["layers"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {layer} | {row['mean_f1']:.3f} | {row['min_f1']:.3f} | "
                         f"{row['letters_passing']}/26 | {row['forward_seconds_32_prompts']:.2f} |")
        rows = result["layers"]
        best = max(rows, key=lambda layer: rows[layer]["mean_f1"])
        close = sorted((int(layer) for layer in rows
                        if rows[best]["mean_f1"] - rows[layer]["mean_f1"] <= NEAR_BEST_F1), key=int)
        lines += ["", f"Best mean F1: layer {best} ({rows[best]['mean_f1']:.3f}); within {NEAR_BEST_F1} of it: "
                  f"layers {', '.join(map(str, close))}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9, 12, 15, 18, 21, 24])
    parser.add_argument("--words-per-letter", type=int, default=100,
                        help="0: SAEBench's full alphabetic vocabulary")
    parser.add_argument("--seed", type=int, default=AbsorptionEvalConfig().random_seed)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/layer_table"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    from orthosae_plugin.smollm2.model import load_smollm2

    model = load_smollm2()
    config = AbsorptionEvalConfig()
    wpl = args.words_per_letter or None
    result = measure(model, sorted(args.layers), wpl, args.seed, config,
                     log=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    result["command"] = shlex.join(["python", "-m", "benchmarks.layer_table",
                                    *(sys.argv[1:] if argv is None else argv)])
    result["machine"] += f", load average {load_at_start:.1f} at the start (2 CPU cores)"
    write_file_atomically(args.out / f"layers_wpl{wpl or 'all'}.json", json.dumps(result, indent=1))
    write_readme(args.out)
    print(markdown([result]))
    return 0


def write_readme(out: Path) -> Path:
    """The folder's README from every ``layers_wpl*.json`` in it."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("layers_wpl*.json"))]
    command = "; ".join(f"`{r.get('command', 'python -m benchmarks.layer_table')}`" for r in results)
    return write_results_readme(out, ResultsReadme(
        title="SAEBench's first-letter probe per layer (SmolLM2-135M-Instruct)",
        measures="SAEBench's ground-truth first-letter probe, trained as the absorption eval "
        "trains it (same seeded words, split, prompts and settings), on the residual stream "
        "after each layer, from one forward pass per prompt; and the cost of a forward that "
        "stops after each layer. The absorption metric scores only letters whose probe F1 "
        "exceeds 0.6, and measures every latent against the probe's direction.",
        provenance=[("command", command),
                    ("machine", "; ".join(sorted({r['machine'] for r in results}))),
                    ("wall time", ", ".join(minutes(r["wall_seconds"]) for r in results))],
        table=markdown(results),
        caveats=["F1: on the test words (20 % of the probed words), logits > 0 as SAEBench's "
                 "k-sparse probing computes `f1_probe`; one seed.",
                 "forward: median of 3 forwards over 32 probe prompts on a shared 2-core CPU; "
                 "read it as relative cost between layers; under load it is noisy (a forward's "
                 "arithmetic grows in proportion to the layer index)."],
        files=[(p.name, "per layer: per-letter F1, mean, letters passing, forward seconds")
               for p in sorted(out.glob("layers_wpl*.json"))],
        docs="absorption-eval.md",
        regenerate=None))


if __name__ == "__main__":
    raise SystemExit(main())
