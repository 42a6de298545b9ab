"""Evidence for the absorption alarm's rules (orthosae_plugin/evals/alarm.py), on the planted
first-letter model: SAEs whose verdict is known in advance, evaluated with the CLI's
settings (SAEBench's default config), and the numbers each rule reads.

Cases:

* ``planted_{k}``: hand-built reference SAEs (``build_reference_sae``) with k of 10 groups
  absorbing the letter, k in 0, 3, 6, 9: planted absorption 0 .. 0.9. Must be trusted,
  and measured at the planted share of the scored words.
* ``steps_{n}``: ``ortho_contrastive`` trained through SAELens's runner as
  ``examples/absorption_eval.py`` trains it (d_sae 256, 256 tokens per step), for n in
  0, 4, 50, 300, 1200 steps (0: SAELens's initialisation, saved untrained). The short ones
  must be flagged.
* ``random_{d_sae}``: random dictionaries (unit Gaussian decoder rows, encoder = decoder
  transposed, zero bias) of d_sae 256 and 1211 (the reference SAEs' width). Flagged.

Run::

    OMP_NUM_THREADS=1 python -m benchmarks.alarm_evidence --out runs/alarm_evidence

Real model (``--smollm2 SAE_FOLDER ...``): SmolLM2-135M-Instruct, 100 words per
letter, the given saved SAEs plus an untrained SAE and a random dictionary of the first
one's shape; ``--probes-from DIR`` copies an existing ``probes/`` cache (the ground-truth
probe costs minutes of forward passes on a CPU).

Writes ``{out}/evidence.json`` (per case: verdict, reasons, and per letter the numbers the
rules read) and prints one line per case.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from unittest import mock
from pathlib import Path

import torch
from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.sae_trainer import SAETrainer

from orthosae_plugin.evals.absorption import load_output, result_path, run_absorption_eval
from orthosae_plugin.evals.alarm import AlarmThresholds, get_alarm
from orthosae_plugin.evals.planted import build_planted_model, build_reference_sae
from orthosae_plugin.saving import write_file_atomically


def random_dictionary(d_in: int, d_sae: int, model_name: str, hook_name: str,
                      seed: int = 0) -> StandardSAE:
    """A `standard` SAE whose latents are random unit directions (encoder = decoder^T)."""
    generator = torch.Generator().manual_seed(seed)
    metadata = SAEMetadata(model_name=model_name, hook_name=hook_name)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=metadata))
    dec_SD = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=generator), dim=1)
    with torch.no_grad():
        sae.W_dec.copy_(dec_SD)
        sae.W_enc.copy_(dec_SD.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _example_module():
    path = Path(__file__).parents[1] / "examples" / "absorption_eval.py"
    spec = importlib.util.spec_from_file_location("absorption_example", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def trained_run(out: Path, steps: int, checkpoints: list[int], d_sae: int = 256) -> dict[int, Path]:
    """Train as the example does for `steps` steps, saving SAELens training checkpoints
    after each step count in `checkpoints`; returns {steps: SAE folder}, the final save
    included. Step 0 is SAELens's initialisation of a `standard` SAE, saved untrained."""
    batch = 256
    original_init = SAETrainer.__init__

    def init_with_checkpoints(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        original_init(self, *args, **kwargs)
        # SAELens saves when n_training_samples > threshold (sae_trainer.py:538-544)
        self.checkpoint_thresholds = [n * batch - 1 for n in sorted(checkpoints) if n > 0]

    with mock.patch.object(SAETrainer, "__init__", init_with_checkpoints):
        example = _example_module()
        real_config = example.tiny_runner_config
        example.tiny_runner_config = lambda *a, **k: real_config(
            *a, **k, checkpoint_path=str(out / "checkpoints"), n_checkpoints=len(checkpoints))
        final, _ = example.train_on_planted(out, steps, batch_size=batch, d_sae=d_sae)
    saved = {steps: final}
    # SAELens appends a unique id to checkpoint_path (config.py:361, and the runner again)
    for state in (out / "checkpoints").rglob("trainer_state.pt"):
        saved[int(state.parent.name) // batch] = state.parent
    planted = build_planted_model()
    metadata = SAEMetadata(model_name=planted.config.model_name, hook_name=planted.hook_name)
    metadata.training_steps = 0
    torch.manual_seed(0)
    StandardSAE(StandardSAEConfig(d_in=planted.config.d_model, d_sae=d_sae,
                                  metadata=metadata)).save_model(out / "init")
    saved[0] = out / "init"
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/alarm_evidence"))
    parser.add_argument("--steps", type=int, nargs="*", default=[0, 4, 50, 300, 1200])
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    parser.add_argument("--smollm2", type=Path, nargs="*", default=None,
                        help="saved SAEs on SmolLM2 to evaluate (instead of the planted cases)")
    parser.add_argument("--smollm2-train", type=Path, default=None,
                        help="a SmolLM2 activation cache (orthosae_plugin.smollm2.activations): first "
                        "train a standard SAE on it as the earlier 600k-token runs did (d_sae 2304, l1 5, lr 1e-3, "
                        "batch 1024, 600k tokens = 585 steps; no activation "
                        "normalisation), and add it to --smollm2")
    parser.add_argument("--probes-from", type=Path, default=None,
                        help="an absorption output folder whose probes/ cache to reuse")
    parser.add_argument("--geometries", nargs="*", default=None, choices=list(GEOMETRIES),
                        help="planted geometries to calibrate on (instead of the default "
                        "model's cases)")
    parser.add_argument("--table", type=Path, default=None,
                        help="only write FOLDER/README.md from the evidence JSONs in FOLDER")
    parser.add_argument("--rescore", action="store_true",
                        help="with --geometries: re-score the saved eval artifacts with the "
                        "current rules (no SAEBench rerun)")
    parser.add_argument("--fast", action="store_true",
                        help="FAST_CONFIG instead of SAEBench's default config")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.table is not None:
        write_evidence_readme(args.table)
        return 0
    if args.geometries is not None and args.rescore:
        return rescore_geometries(args.out, args.geometries or list(GEOMETRIES))
    if args.geometries is not None:
        return geometry_evidence(args.out, args.geometries or list(GEOMETRIES), args.only,
                                 FAST_CONFIG if args.fast else AbsorptionEvalConfig())
    if args.smollm2_train is not None:
        args.smollm2 = [*(args.smollm2 or []), *train_smollm2(args.out / "smollm2_train",
                                                               args.smollm2_train)]
    if args.smollm2 is not None:
        return smollm2_evidence(args.out, args.smollm2, args.probes_from, args.only)
    planted = build_planted_model()
    config = FAST_CONFIG if args.fast else AbsorptionEvalConfig()
    cases: dict[str, SAE | Path] = {}
    for k in (0, 3, 6, 9):
        cases[f"planted_{k}"] = build_reference_sae(planted, k)
    for d_sae in (256, 1211):
        cases[f"random_{d_sae}"] = random_dictionary(
            planted.config.d_model, d_sae, planted.config.model_name, planted.hook_name)
    if args.only is None or any(name.startswith("steps_") for name in args.only):
        for steps, folder in sorted(trained_run(args.out / "train", max(args.steps),
                                                args.steps[1:-1]).items()):
            cases[f"steps_{steps}"] = folder

    evidence_path = args.out / "evidence.json"
    evidence = json.loads(evidence_path.read_text()) if evidence_path.exists() else {}
    for name, sae in cases.items():
        if args.only is not None and name not in args.only:
            continue
        start = time.perf_counter()
        output = run_absorption_eval(sae, planted.model, args.out / "absorption", config,
                                     sae_name=name, show_progress=False)
        evidence[name] = summarise(output) | {
            "eval_seconds": round(time.perf_counter() - start, 1),
            "max_k_value": config.max_k_value,
            "k_sparse_probe_num_epochs": config.k_sparse_probe_num_epochs}
        e = evidence[name]
        print(f"{name:>12}: absorption {e['mean_absorption']:.3f} {e['verdict']}: "
              f"{e['reasons']}", flush=True)
        write_file_atomically(evidence_path, json.dumps(evidence, indent=1, default=str))
    return 0


def summarise(output) -> dict:  # noqa: ANN001
    """What evidence.json keeps of one eval."""
    alarm = get_alarm(output)
    mean = output.eval_result_metrics.mean
    measured = alarm.measured
    shares = [v for v in measured["per_letter_aligned_projection_share"].values()]
    cosines = list(measured["per_letter_main_latent_cos"].values())
    k1 = [f1 for _, f1 in measured["per_letter_probe_f1"].values()]
    cfg = output.sae_cfg_dict or {}
    return {
        "d_model": cfg.get("d_in"),
        "d_sae": cfg.get("d_sae"),
        "mean_absorption": mean.mean_absorption_fraction_score,
        "mean_full_absorption": mean.mean_full_absorption_score,
        "verdict": alarm.verdict,
        "reasons": alarm.reasons,
        "notes": alarm.notes,
        "aligned_share_mean_min": [sum(shares) / len(shares), min(shares)],
        "main_latent_cos_mean_min": [sum(cosines) / len(cosines), min(cosines)],
        "k1_f1_mean": sum(k1) / len(k1),
        "measured": measured,
    }


# Planted geometries for the alarm's calibration: width, and the letter's strength against
# the group and token parts. With 20 groups the reference SAEs absorb 0/30/60/85 % (0, 6,
# 12, 17 groups); their width is 26 + 20 + 1149 words = 1195 latents: 18.7x d_model at 64,
# 9.3x at 128, 4.7x at 256, 2.1x at 576.
GEOMETRIES: dict[str, dict[str, float]] = {
    "d64": dict(d_model=64),
    "d128_weak_letter": dict(d_model=128, letter_norm=0.5),
    "d256_strong_letter": dict(d_model=256, letter_norm=2.0),
    "d576_strong_token": dict(d_model=576, token_norm=2.0),
}
ABSORBED_OF_20 = (0, 6, 12, 17)


def geometry_cases(name: str) -> tuple[object, dict[str, SAE]]:
    """The planted model of geometry `name` and its cases: reference SAEs at 0/30/60/85 %
    absorption, a random dictionary and an untrained SAELens `standard` SAE of the same
    width."""
    from orthosae_plugin.evals.planted import PlantedModelConfig

    planted = build_planted_model(PlantedModelConfig(n_groups=20, **GEOMETRIES[name]))
    cases: dict[str, SAE] = {f"{name}_planted_{k}": build_reference_sae(planted, k)
                             for k in ABSORBED_OF_20}
    d_model, d_sae = planted.config.d_model, cases[f"{name}_planted_0"].cfg.d_sae
    cases[f"{name}_random"] = random_dictionary(d_model, d_sae, planted.config.model_name,
                                                planted.hook_name)
    torch.manual_seed(0)
    cases[f"{name}_untrained"] = StandardSAE(StandardSAEConfig(
        d_in=d_model, d_sae=d_sae, metadata=SAEMetadata(
            model_name=planted.config.model_name, hook_name=planted.hook_name)))
    return planted, cases


FAST_CONFIG = AbsorptionEvalConfig(max_k_value=3, k_sparse_probe_num_epochs=20)
"""``--fast``: fewer k-sparse probes (k <= 3) and epochs than SAEBench's default. For the
letter-latent rule this is the conservative side: its latents are the top k of one L1
probe, so a letter aligned among 3 is aligned among 10, and a random dictionary's chance
of an aligned latent is bounded for any k (the random level is for the best of d_sae)."""


def geometry_evidence(out: Path, names: list[str], only: list[str] | None,
                      config: AbsorptionEvalConfig) -> int:
    """Evaluate every geometry's cases; per case the per-letter table the alarm reads, the
    planted share of the scored words, and the aligned share at the single-direction level."""
    from orthosae_plugin.evals.alarm import single_direction_level

    evidence_path = out / "evidence_geometries.json"
    evidence = json.loads(evidence_path.read_text()) if evidence_path.exists() else {}
    for geometry in names:
        planted, cases = geometry_cases(geometry)
        for name, sae in cases.items():
            if only is not None and name not in only:
                continue
            start = time.perf_counter()
            target = out / "absorption" / geometry
            output = run_absorption_eval(sae, planted.model, target, config,
                                         sae_name=name, show_progress=False)
            e = summarise(output) | {"eval_seconds": round(time.perf_counter() - start, 1),
                                     "max_k_value": config.max_k_value,
                                     "k_sparse_probe_num_epochs": config.k_sparse_probe_num_epochs,
                                     "geometry": geometry, "d_model": planted.config.d_model,
                                     "d_sae": sae.cfg.d_sae}
            if "_planted_" in name:
                k = int(name.rsplit("_", 1)[1])
                e["planted_share_of_scored_words"] = scored_planted_share(
                    planted, k, target, name)
                e["planted_share_all_words"] = planted.planted_absorption_rate(k)
            level = single_direction_level(planted.config.d_model,
                                           AlarmThresholds().alignment_p_value)
            e["aligned_share_single_level"] = aligned_share_at(sae, planted.model, target,
                                                               level)
            evidence[name] = e
            print(f"{name}: absorption {e['mean_absorption']:.3f} (planted "
                  f"{e.get('planted_share_of_scored_words', float('nan')):.3f}), "
                  f"{e['verdict']}: {e['reasons']} ({e['eval_seconds']} s)", flush=True)
            write_file_atomically(evidence_path, json.dumps(evidence, indent=1, default=str))
    return 0


def reassess(target: Path, name: str, sae: SAE, model) -> dict:  # noqa: ANN001
    """The alarm on an eval's saved artifacts (SAEBench's k-sparse probing JSON and raw
    absorption parquet, the ground-truth probe and its test words), without rerunning
    SAEBench: the per-letter table and the aligned shares are rebuilt exactly as
    ``run_absorption_eval`` builds them, so a change of the rules is re-scored in seconds."""
    import copy
    import math

    import pandas as pd
    from sae_bench.evals.absorption.main import _aggregate_results_df

    from orthosae_plugin.evals.alarm import SaeProvenance, assess_result, single_direction_level
    from orthosae_plugin.evals.letters import per_letter_table
    from orthosae_plugin.evals.saebench_fixes import fold_decoder_norms

    output = load_output(result_path(target, name))
    config = output.eval_config
    metrics_df = pd.read_json(target / f"{name}_custom_sae_k_sparse_probing.json")
    raw_df = pd.read_parquet(target / "artifacts" / "feature_absorption" / name
                             / f"layer_0_{name}.parquet")
    table = per_letter_table(metrics_df, _aggregate_results_df(raw_df), config)
    sae = copy.deepcopy(sae)
    deviation, folded, fold_error = fold_decoder_norms(sae)
    level = single_direction_level(sae.cfg.d_in, AlarmThresholds().alignment_p_value)
    shares = aligned_share_at(sae, model, target, level)
    table = table.assign(aligned_projection_share=table["letter"].map(shares))
    recorded = get_alarm(output).measured
    provenance = SaeProvenance(sae.cfg.d_in, sae.cfg.d_sae, recorded["training_steps"],
                               recorded["training_steps_source"], deviation, folded,
                               fold_error, sae.cfg.metadata.model_name)
    alarm = assess_result(table, provenance, config, model.cfg.model_name)
    scored = table.dropna(subset=["mean_absorption_fraction"])
    mean = output.eval_result_metrics.mean
    return {
        "d_model": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
        "mean_absorption": mean.mean_absorption_fraction_score,
        "mean_full_absorption": mean.mean_full_absorption_score,
        "verdict": alarm.verdict, "reasons": alarm.reasons, "notes": alarm.notes,
        "aligned_share_mean_min": [float(scored["aligned_projection_share"].mean()),
                                   float(scored["aligned_projection_share"].min())],
        "main_latent_cos_mean_min": [float(table["k1_decoder_probe_cos"].mean()),
                                     float(table["k1_decoder_probe_cos"].min())],
        "k1_f1_mean": float(table["k1_probe_f1"].mean()),
        "max_k_value": config.max_k_value,
        "k_sparse_probe_num_epochs": config.k_sparse_probe_num_epochs,
        "rescored_from_saved_artifacts": True,
        "measured": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in alarm.measured.items()},
    }


def rescore_geometries(out: Path, names: list[str]) -> int:
    """``--rescore``: the alarm on every geometry case whose eval artifacts are saved under
    ``{out}/absorption/{geometry}`` (see :func:`reassess`); writes
    ``{out}/evidence_{geometry}.json``."""
    for geometry in names:
        planted, cases = geometry_cases(geometry)
        target = out / "absorption" / geometry
        evidence = {}
        for name, sae in cases.items():
            if not result_path(target, name).exists():
                continue
            e = reassess(target, name, sae, planted.model) | {"geometry": geometry}
            if "_planted_" in name:
                k = int(name.rsplit("_", 1)[1])
                e["planted_share_of_scored_words"] = scored_planted_share(planted, k, target, name)
                e["planted_share_all_words"] = planted.planted_absorption_rate(k)
            evidence[name] = e
            print(f"{name}: absorption {e['mean_absorption']:.3f} (planted "
                  f"{e.get('planted_share_of_scored_words', float('nan')):.3f}), share "
                  f"{e['aligned_share_mean_min']}, {e['verdict']}: {e['reasons']}", flush=True)
        write_file_atomically(out / f"evidence_{geometry}.json", json.dumps(evidence, indent=1, default=str))
    return 0


def _probe_dir(target: Path, model_name: str) -> Path:
    (layer_dir,) = (target / "probes").glob(f"*/{model_name}/layer_0")
    return layer_dir


def scored_planted_share(planted, absorbed: int, target: Path, name: str) -> float:  # noqa: ANN001
    """The planted absorption share of the test words SAEBench scored, by letter as SAEBench
    averages (the words whose probe is right: ``num_probe_true_positives`` of each letter
    come from the test split); here approximated by all test words of the scored letters."""
    import pandas as pd

    output = load_output(result_path(target, name))
    scored = {d.first_letter for d in output.eval_result_details}
    test = pd.read_csv(_probe_dir(target, planted.config.model_name) / "test_df.csv",
                       keep_default_na=False)
    vocab = planted.model.tokenizer.get_vocab()
    ids = torch.tensor([vocab[str(t).strip()] for t in test["token"]
                        if str(t).strip()[0] in scored])
    return planted.planted_absorption_rate(absorbed, ids)


def aligned_share_at(sae: SAE, model, target: Path, level: float) -> dict[str, float]:  # noqa: ANN001
    """letter_projection_carried at another alignment level, on the eval's probe and test words."""
    from sae_bench.evals.absorption.common import load_probe, load_probe_data_split

    from orthosae_plugin.evals.letters import letter_projection_carried

    probes_dir = _probe_dir(target, model.cfg.model_name).parents[1]
    probe = load_probe(model.cfg.model_name, 0, probes_dir, torch.float32, "cpu")
    acts, words = load_probe_data_split(model, 0, "test", probes_dir, torch.float32, "cpu")
    sae = sae if isinstance(sae, SAE) else SAE.load_from_disk(sae)
    return letter_projection_carried(sae, probe.weights.detach(), acts,
                                     [label for _, label in words], level)


def write_evidence_readme(folder: Path) -> Path:
    from benchmarks.results_readme import ResultsReadme, write_results_readme

    return write_results_readme(folder, ResultsReadme(
        title="The absorption alarm's evidence",
        measures="SAEs whose verdict is known in advance, evaluated by `run_absorption_eval`, "
        "and the numbers each alarm rule reads. Planted first-letter models of four "
        "geometries (`GEOMETRIES`: d_model 64-576, letter weaker / equal / stronger than the "
        "token part, 20 groups): hand-built reference SAEs absorbing 0-85 % of each letter's "
        "words (must be trusted and measured at the planted share), a random dictionary and "
        "an untrained SAE of the same width (must be flagged); and the default planted "
        "model with `ortho_contrastive` checkpoints (`steps_N`). "
        "Per case: SAEBench's mean absorption (in brackets the planted share of the scored "
        "letters' test words), the aligned share of each letter's projection (mean / "
        "lowest letter), the best-aligned ranked latent's cosine with the probe (mean / "
        "lowest letter; the random level in brackets), the k=1 latent's cosine, and the "
        "verdict with the rules that fired.",
        provenance=[("command", "`python -m benchmarks.alarm_evidence --fast` (default "
                     "geometry) and `--fast --geometries NAME` (one process per geometry), "
                     "`--fast --geometries NAME --rescore` (the current rules on the saved "
                     "eval artifacts), then `--table benchmarks/results/alarm_evidence`"),
                    ("machine", "2 shared CPU cores, 1 torch thread per process"),
                    ("wall time", "eval seconds per case in the JSON files (`eval_seconds`)")],
        table=evidence_table(folder),
        caveats=["`--fast`: SAEBench's k-sparse probes up to k = 3 with 20 epochs (its "
                 "default: 10 and 50). The letter-latent rule is then conservative: a letter "
                 "aligned among 3 ranked latents is aligned among 10.",
                 "`evidence_default.json`: the default planted model (10 groups, d_model "
                 "128) with reference SAEs at 0-90 %, random dictionaries of 256 and 1211 "
                 "latents, and `ortho_contrastive` trained as `examples/absorption_eval.py` "
                 "trains it, saved after 0, 4, 50, 300 and 1200 steps (warm-up 1000).",
                 "`planted.json` and `smollm2.json`: measured with SAEBench's default config "
                 "before the letter rules changed (their reasons name the old k=1 rule; "
                 "they hold no best-ranked-latent cosines), so they are not in the table.",
                 "d_model 576: its random and untrained cases were not measured (time)."],
        files=[(p.name, "per case: verdict, reasons, notes and per letter every number the "
                "rules read") for p in sorted(folder.glob("*.json"))],
        docs="absorption-eval.md"))


RULE_NAMES = {"carried by no latent aligned": "aligned share",
              "no latent among the": "letter latents",
              "have a main latent whose": "main latent (old k=1 rule)",
              "before its run's warm-ups ended": "warm-up unfinished",
              "steps (from": "training steps",
              "exactly 0 absorption": "zero pattern",
              "pass the ground-truth probe": "probe"}


def rule_name(reason: str) -> str:
    """A short name for the alarm rule behind `reason`."""
    return next((name for key, name in RULE_NAMES.items() if key in reason), reason[:40])


def evidence_table(folder: Path) -> str:
    """Every evidence JSON in `folder` as one markdown table (what each rule read)."""
    lines = ["| case | d_model x d_sae | absorption (planted) | aligned share | best ranked latent "
             "cos (level) | k=1 cos | verdict |", "|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("evidence*.json")):
        for name, e in json.loads(path.read_text()).items():
            m = e["measured"]
            best = [v for v in m.get("per_letter_best_latent_cos", {}).values()]
            share = e["aligned_share_mean_min"]
            planted = e.get("planted_share_of_scored_words")
            fired = ", ".join(rule_name(r) for r in e["reasons"]) or "-"
            shape = f"{e['d_model']} x {e['d_sae']}" if "d_model" in e else "-"
            lines.append(
                f"| {name} | {shape} | {e['mean_absorption']:.3f}"
                + (f" ({planted:.3f})" if planted is not None else "")
                + f" | {share[0]:.2f} / {share[1]:.2f} | "
                + (f"{sum(best) / len(best):.2f} / {min(best):.2f}" if best else "-")
                + f" ({m['random_alignment_level']:.2f}) | "
                + f"{e['main_latent_cos_mean_min'][0]:.2f} / {e['main_latent_cos_mean_min'][1]:.2f}"
                + f" | {e['verdict']}: {fired} |")
    return "\n".join(lines) + "\n"


def train_smollm2(out: Path, activations: Path, tokens: int = 600_000,
                  checkpoints: tuple[int, ...] = ()) -> list[Path]:
    """The earlier runs' `standard` SAE on SmolLM2 layer 15 through SAELens's runner, with SAELens
    training checkpoints after `checkpoints` steps; returns [checkpoints..., final]."""
    from sae_lens import StandardTrainingSAEConfig

    from orthosae_plugin.smollm2.activations import smollm2_runner_config, smollm2_training_runner

    batch = 1024
    final = out / "final"
    if not (final / "cfg.json").exists():
        original_init = SAETrainer.__init__

        def init_with_checkpoints(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            original_init(self, *args, **kwargs)
            self.checkpoint_thresholds = [n * batch - 1 for n in checkpoints]

        cfg = smollm2_runner_config(
            # no activation normalisation: a checkpoint would be in the scaled space
            # (SAELens folds the scaling factor into the weights only at the end)
            StandardTrainingSAEConfig(d_in=576, d_sae=2304, l1_coefficient=5.0),
            activations, tokens, train_batch_size_tokens=batch, lr=1e-3,
            output_path=str(final),
            checkpoint_path=str(out / "checkpoints") if checkpoints else None,
            n_checkpoints=len(checkpoints))
        with mock.patch.object(SAETrainer, "__init__", init_with_checkpoints):
            smollm2_training_runner(cfg).run()
    saved = sorted((out / "checkpoints").rglob("trainer_state.pt") if checkpoints else [],
                   key=lambda state: int(state.parent.name))
    return [state.parent for state in saved] + [final]


def smollm2_evidence(out: Path, sae_paths: list[Path], probes_from: Path | None,
                     only: list[str] | None = None) -> int:
    """The alarm on real SAEs: SmolLM2 layer-15 SAEs, an untrained one, a random one."""
    import shutil

    from orthosae_plugin.smollm2.model import load_smollm2

    model = load_smollm2()
    target = out / "smollm2_absorption"
    if probes_from is not None and not (target / "probes").exists():
        shutil.copytree(probes_from / "probes", target / "probes")
    first = SAE.load_from_disk(sae_paths[0])
    d_in, d_sae, hook = first.cfg.d_in, first.cfg.d_sae, first.cfg.metadata.hook_name
    cases: dict[str, SAE | Path] = {f"{p.parent.name}-{p.name}": p for p in sae_paths}
    torch.manual_seed(0)
    untrained = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(
        model_name=model.cfg.model_name, hook_name=hook)))
    cases["untrained"] = untrained
    cases["random"] = random_dictionary(d_in, d_sae, model.cfg.model_name, hook)
    evidence_path = out / "evidence_smollm2.json"
    evidence = json.loads(evidence_path.read_text()) if evidence_path.exists() else {}
    for name, sae in cases.items():
        if only is not None and name not in only:
            continue
        start = time.perf_counter()
        output = run_absorption_eval(sae, model, target, AbsorptionEvalConfig(),
                                     sae_name=name, show_progress=False, words_per_letter=100)
        evidence[name] = summarise(output) | {
            "eval_seconds": round(time.perf_counter() - start, 1)}
        e = evidence[name]
        print(f"{name}: absorption {e['mean_absorption']:.3f}, aligned share "
              f"{e['aligned_share_mean_min']}, cos {e['main_latent_cos_mean_min']}, k1 "
              f"{e['k1_f1_mean']:.2f}, {e['verdict']}: {e['reasons']} "
              f"({e['eval_seconds']} s)", flush=True)
        write_file_atomically(evidence_path, json.dumps(evidence, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
