"""``orthosae-absorption``: the absorption eval on a saved SAE, from the command line.

The library it runs is :mod:`orthosae_plugin.evals.absorption_eval`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

from orthosae_plugin.evals.absorption_eval import (
    AbsorptionEvalError,
    result_path,
    run_absorption_eval,
    run_absorption_eval_seeds,
)
from orthosae_plugin.evals.absorption_report import (
    format_spread,
    format_summary,
    load_output,
)
from orthosae_plugin.evals.alarm import AlarmThresholds, get_alarm
from orthosae_plugin.evals.models import load_model, one_line
from orthosae_plugin.evals.planted import PLANTED_MODEL_NAME


def check_output_dir(path: str | Path) -> None:
    """Raise ValueError (naming the path and the problem) unless `path` is a folder this
    process can write into, or one it can create. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path}: is a file, not a folder; allowed: a folder (created "
                         "if missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {path}: cannot be created, {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        where = "folder" if existing == path else f"folder {existing} (to create it)"
        raise ValueError(f"--out {path}: cannot write into the {where}: "
                         f"{error.strerror or error}") from error


def main(argv: list[str] | None = None) -> int:
    """``orthosae-absorption``: run the eval on a saved SAE and print a summary.

    Exit status: 0 done; 1 the SAE could not be evaluated; 2 the result is untrustworthy
    (with ``--eval-seeds``: under any seed) and ``--strict`` was given.
    """
    defaults, default_thresholds = AbsorptionEvalConfig(), AlarmThresholds()
    parser = argparse.ArgumentParser(
        prog="orthosae-absorption",
        description="SAEBench first-letter absorption eval on a saved SAELens SAE, offline "
        "when the model is available locally, with an alarm for untrustworthy results.",
        epilog="exit status: 0 done; 1 the SAE could not be evaluated; 2 the result is "
        "untrustworthy and --strict was given",
    )
    parser.add_argument("--sae", required=True, help="folder of a saved SAELens SAE (cfg.json)")
    parser.add_argument("--model", required=True,
                        help=f"TransformerLens model name, or {PLANTED_MODEL_NAME!r} for the "
                        "offline planted model")
    parser.add_argument("--out", required=True, help="output folder; every file goes here")
    parser.add_argument("--name", default=None, help="SAE name in the result files "
                        "(default: the SAE folder's name)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default: SAEBench's for the model, else float32)")
    parser.add_argument("--llm-batch-size", type=int, default=defaults.llm_batch_size,
                        help=f"prompts per model forward pass (default {defaults.llm_batch_size})")
    parser.add_argument("--max-k-value", type=int, default=defaults.max_k_value,
                        help="largest k of SAEBench's k-sparse probes (feature splitting)")
    parser.add_argument("--seed", type=int, default=defaults.random_seed,
                        help="the eval seed: every random draw of the eval (vocabulary "
                        "subsample, probe split, in-context examples, probe training) comes "
                        f"from it; recorded in the result (default {defaults.random_seed})")
    parser.add_argument("--eval-seeds", type=int, default=1,
                        help="repeat the eval with this many eval seeds (--seed, --seed + 1, "
                        "...) and print the mean and spread of every metric: the "
                        "measurement's own noise on this SAE (default 1)")
    parser.add_argument("--words-per-letter", type=int, default=None,
                        help="probe a seeded subsample of at most this many words per first "
                        "letter (100 is enough for SmolLM2's 49k vocabulary; default: "
                        "SAEBench's full vocabulary)")
    parser.add_argument("--training-steps", type=int, default=None,
                        help="override the SAE's recorded training steps for the alarm")
    parser.add_argument("--min-training-steps", type=int,
                        default=default_thresholds.min_training_steps,
                        help="alarm below this many steps actually trained (the checkpoint's "
                        "clock, else the SAE's metadata; default "
                        f"{default_thresholds.min_training_steps})")
    parser.add_argument("--min-k1-probe-f1", type=float,
                        default=default_thresholds.min_k1_probe_f1,
                        help="note (not an alarm: heavy absorption lowers it) when most "
                        "letters' best single latent has a lower F1 "
                        f"(default {default_thresholds.min_k1_probe_f1})")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 2 when the result is untrustworthy")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    config = replace(defaults, random_seed=args.seed, llm_batch_size=args.llm_batch_size,
                     max_k_value=args.max_k_value)
    thresholds = replace(default_thresholds, min_training_steps=args.min_training_steps,
                         min_k1_probe_f1=args.min_k1_probe_f1)
    if args.eval_seeds < 1:
        parser.error(f"--eval-seeds {args.eval_seeds}; allowed: an integer >= 1")
    try:
        check_output_dir(args.out)
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        common = dict(sae_name=args.name, training_steps=args.training_steps,
                      thresholds=thresholds, device=args.device,
                      show_progress=not args.quiet, words_per_letter=args.words_per_letter)
        if args.eval_seeds > 1:
            spread = run_absorption_eval_seeds(args.sae, model, args.out, config,
                                               n_seeds=args.eval_seeds, **common)
            output = load_output(spread.result_files[0])
        else:
            spread = None
            output = run_absorption_eval(args.sae, model, args.out, config, **common)
    except (ValueError, AbsorptionEvalError) as error:
        print(f"orthosae-absorption: cannot evaluate: {one_line(error)}", file=sys.stderr)
        return 1
    except OSError as error:  # e.g. the output folder filled up or became read-only
        where = f"{error.filename}: " if error.filename else ""
        print(f"orthosae-absorption: cannot evaluate: {where}{one_line(error.strerror or error)}",
              file=sys.stderr)
        return 1
    print(format_summary(output, result_path(args.out, output.sae_lens_release_id)))
    if spread is not None:
        print(format_spread(spread))
    untrustworthy = (not get_alarm(output).trustworthy if spread is None
                     else "untrustworthy" in spread.verdicts)
    if args.strict and untrustworthy:
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
