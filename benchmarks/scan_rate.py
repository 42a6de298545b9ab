"""Scans and recomputed steps of 'close_pairs' per 1,000 steps along the synthetic-absorption
training runs (issue 12): SAELens's trainer, the benchmark's synthetic hierarchy and
settings (d_in 96, d_sae 128, batch 256, Adam at lr 3e-3, 1,171 steps, the threshold
annealed over the run), every l1_coefficient of its sweep, with and without lazy
regularization.

    python -m benchmarks.scan_rate [--seeds 1] [--out benchmarks/results/speed/cpu/scan_rate.json]

A scan counts every try, including those that found the list over-full (then retried every
``ortho_rescan_every`` steps while the exact term is computed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sae_lens.synthetic import SyntheticModel

from benchmarks import synthetic_absorption as sa

DEFAULT_OUT = Path(__file__).parent / "results" / "speed" / "cpu" / "scan_rate.json"


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scan_rate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    bench = sa.BenchmarkConfig()
    model = SyntheticModel(bench.model_config())
    rows = []
    for seed in range(args.seeds):
        stream = sa.training_stream(model, bench.steps * bench.batch_size, seed)
        for lazy in (1, 4):
            for l1 in sa.L1_SWEEP:
                arm = sa.Arm("close_pairs", sa.OC, "l1_coefficient", sa.L1_SWEEP,
                             {"ortho_mode": "close_pairs", "ortho_lazy_every": lazy})
                started = time.perf_counter()
                with sa._quiet_saelens_progress():
                    sae = sa.train(arm, l1, seed, bench, model, stream)
                row = {
                    "seed": seed, "ortho_lazy_every": lazy, "l1_coefficient": l1, "steps": bench.steps,
                    "ortho_steps": -(-bench.steps // lazy), "scans": sae.ortho_scans,
                    "recomputed_steps": sae.ortho_recomputed_steps,
                    "scans_per_1000_steps": 1000 * sae.ortho_scans / bench.steps,
                    "recomputed_per_1000_steps": 1000 * sae.ortho_recomputed_steps / bench.steps,
                    "seconds": time.perf_counter() - started,
                }
                print(row, flush=True)
                rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m benchmarks.scan_rate " + " ".join(argv or []),
                                    "lr": bench.lr, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
