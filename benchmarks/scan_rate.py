"""Scans and recomputed steps of 'close_pairs' per 1,000 steps along real training runs,
with and without lazy regularization.

    python -m benchmarks.scan_rate [--seeds 1] [--out benchmarks/results/speed/cpu/scan_rate.json]
    python -m benchmarks.scan_rate --source smollm2 [--out .../scan_rate_smollm2.json]

``synthetic`` (default): the synthetic-absorption benchmark's runs (SAELens's trainer, its
synthetic hierarchy and settings: d_in 96, d_sae 128, batch 256, Adam at lr 3e-3, 1,171
steps, the threshold annealed over the run), every l1_coefficient of its sweep.
``smollm2``: the real-model comparison's ``oc relu: both`` arm at l1_coefficient 3
(SmolLM2-135M layer 15, d_in 576, d_sae 2304, 1,024 steps of 200 tokens, lr 1e-3; see
``benchmarks.real_model``), also counting the ortho steps that ran on the list and those
that found it over-full (exact term), and the decoder's share of pairs above the final
threshold at the end.

A scan counts every full scan, including those that found the list over-full (then retried
every ``ortho_rescan_every`` steps while the exact term is computed); ``scans_skipped``
counts the retries that a sample of rows showed to be over-full still, so that no scan ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

from sae_lens.synthetic import SyntheticModel

from benchmarks import synthetic_absorption as sa
from benchmarks.sweep import Arm, quiet_saelens_progress
from orthosae_plugin.saving import write_file_atomically

DEFAULT_OUT = Path(__file__).parent / "results" / "speed" / "cpu" / "scan_rate.json"


def smollm2_rows(tokens: int = 204_800, batch_size: int = 200) -> tuple[list[dict[str, Any]], float]:
    """The real-model runs: one per lazy setting, with the list's use counted per ortho step."""
    from benchmarks import real_model as rm
    from orthosae_plugin import OrthoContrastiveTrainingSAE
    from orthosae_plugin.orthogonality import decoder_pair_stats

    bench = rm.BenchConfig(training_tokens=tokens, batch_size=batch_size)
    source = rm.SmolLM2Source(bench)
    acts_ND, _, _ = rm.training_activations(source, bench)
    original = OrthoContrastiveTrainingSAE._close_pairs_at
    headline = next(arm for arm in rm.ARMS if arm.name == "oc relu: both")  # the comparison's own arm
    rows = []
    for lazy in (1, 4):
        over_full: list[bool] = []

        def counting(self: Any, step: int, D_nd: Any, _over_full: list[bool] = over_full) -> Any:
            pairs = original(self, step, D_nd)
            _over_full.append(pairs is None)
            return pairs

        arm = replace(headline, sae_kwargs={**headline.sae_kwargs, "ortho_lazy_every": lazy})
        started = time.perf_counter()
        with mock.patch.object(OrthoContrastiveTrainingSAE, "_close_pairs_at", counting):
            sae, _, steps = rm.train(arm, 3.0, bench, source, acts_ND)
        end_tau = sae.cfg.ortho_threshold_end
        D_nd = sae.unit_decoder().detach()
        max_cos, share_above = decoder_pair_stats(D_nd, end_tau)
        _, share_within_margin = decoder_pair_stats(D_nd, max(end_tau - sae.cfg.ortho_margin, 0.0))
        row = {
            "source": "smollm2", "ortho_lazy_every": lazy, "l1_coefficient": 3.0, "steps": steps,
            "ortho_steps": len(over_full), "ortho_steps_on_the_list": over_full.count(False),
            "ortho_steps_over_full": over_full.count(True),
            "first_over_full_step": lazy * over_full.index(True) if True in over_full else None,
            "scans": sae.ortho_scans, "scans_skipped": sae.ortho_scans_skipped,
            "recomputed_steps": sae.ortho_recomputed_steps,
            "scans_per_1000_steps": 1000 * sae.ortho_scans / steps,
            "recomputed_per_1000_steps": 1000 * sae.ortho_recomputed_steps / steps,
            "end_decoder_max_abs_cos": max_cos, "end_share_of_pairs_above_tau_end": share_above,
            "end_share_of_pairs_above_tau_end_minus_margin": share_within_margin,
            "seconds": time.perf_counter() - started,
        }
        print(row, flush=True)
        rows.append(row)
    return rows, bench.lr


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scan_rate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--source", choices=("synthetic", "smollm2"), default="synthetic")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"default {DEFAULT_OUT} (smollm2: scan_rate_smollm2.json beside it)")
    args = parser.parse_args(argv)
    out = args.out or (DEFAULT_OUT if args.source == "synthetic" else DEFAULT_OUT.with_name("scan_rate_smollm2.json"))
    command = "python -m benchmarks.scan_rate " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.source == "smollm2":
        rows, lr = smollm2_rows()
        write_file_atomically(out, json.dumps({"command": command.strip(), "lr": lr, "rows": rows}, indent=1))
        return rows
    bench = sa.BenchmarkConfig()
    model = SyntheticModel(bench.model_config())
    rows = []
    for seed in range(args.seeds):
        stream = sa.training_stream(model, bench.steps * bench.batch_size, seed)
        for lazy in (1, 4):
            for l1 in sa.L1_SWEEP:
                arm = Arm("close_pairs", sa.OC, "l1_coefficient", sa.L1_SWEEP,
                          {"ortho_mode": "close_pairs", "ortho_lazy_every": lazy})
                started = time.perf_counter()
                with quiet_saelens_progress():
                    sae = sa.train(arm, l1, seed, bench, model, stream)
                row = {
                    "seed": seed, "ortho_lazy_every": lazy, "l1_coefficient": l1, "steps": bench.steps,
                    "ortho_steps": -(-bench.steps // lazy), "scans": sae.ortho_scans,
                    "scans_skipped": sae.ortho_scans_skipped, "recomputed_steps": sae.ortho_recomputed_steps,
                    "scans_per_1000_steps": 1000 * sae.ortho_scans / bench.steps,
                    "recomputed_per_1000_steps": 1000 * sae.ortho_recomputed_steps / bench.steps,
                    "seconds": time.perf_counter() - started,
                }
                print(row, flush=True)
                rows.append(row)
    write_file_atomically(out, json.dumps({"command": command.strip(), "lr": bench.lr, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
