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

Real model (``--smollm2 SAE_FOLDER ...``): SmolLM2-135M-Instruct (issue 9), 100 words per
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

from orthosae_plugin.evals.absorption import run_absorption_eval
from orthosae_plugin.evals.alarm import get_alarm
from orthosae_plugin.evals.planted import build_planted_model, build_reference_sae


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
                        "train a standard SAE on it as issue 9 did (d_sae 2304, l1 5, lr 1e-3, "
                        "batch 1024, 600k tokens = 585 steps; no activation "
                        "normalisation), and add it to --smollm2")
    parser.add_argument("--probes-from", type=Path, default=None,
                        help="an absorption output folder whose probes/ cache to reuse")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.smollm2_train is not None:
        args.smollm2 = [*(args.smollm2 or []), *train_smollm2(args.out / "smollm2_train",
                                                               args.smollm2_train)]
    if args.smollm2 is not None:
        return smollm2_evidence(args.out, args.smollm2, args.probes_from, args.only)
    planted = build_planted_model()
    config = AbsorptionEvalConfig()
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
            "eval_seconds": round(time.perf_counter() - start, 1)}
        e = evidence[name]
        print(f"{name:>12}: absorption {e['mean_absorption']:.3f} {e['verdict']}: "
              f"{e['reasons']}", flush=True)
        evidence_path.parent.mkdir(parents=True, exist_ok=True)
        evidence_path.write_text(json.dumps(evidence, indent=1, default=str))
    return 0


def summarise(output) -> dict:  # noqa: ANN001
    """What evidence.json keeps of one eval."""
    alarm = get_alarm(output)
    mean = output.eval_result_metrics.mean
    measured = alarm.measured
    shares = [v for v in measured["per_letter_aligned_projection_share"].values()]
    cosines = list(measured["per_letter_main_latent_cos"].values())
    k1 = [f1 for _, f1 in measured["per_letter_probe_f1"].values()]
    return {
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


def train_smollm2(out: Path, activations: Path, tokens: int = 600_000,
                  checkpoints: tuple[int, ...] = ()) -> list[Path]:
    """Issue 9's `standard` SAE on SmolLM2 layer 15 through SAELens's runner, with SAELens
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
        evidence_path.parent.mkdir(parents=True, exist_ok=True)
        evidence_path.write_text(json.dumps(evidence, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
