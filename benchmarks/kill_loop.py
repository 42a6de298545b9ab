"""``kill -9`` at random moments of checkpoint saves and of inference saves, then count
what a user would find.

    python -m benchmarks.kill_loop [--checkpoint-kills 20] [--inference-kills 20] [--seed 0]
        [--baseline --out benchmarks/results/kill_loop/baseline.json]
    python -m benchmarks.kill_loop --readme benchmarks/results/kill_loop  # rewrite its README

Checkpoints: a child process trains ``ortho_contrastive`` on the toy model through
SAELens's ``LanguageModelSAETrainingRunner`` (d_in 64, d_sae 2048, a checkpoint after
every step, all of them in one folder) and is killed with SIGKILL during its k-th checkpoint
save: k uniformly random among its saves, the moment uniformly random within 1.2 times the
median save time (measured first on one run that is not killed). Then:

- every checkpoint folder is inspected (``orthosae_plugin.checkpoints.checkpoint_problems``,
  then each file loaded as a resume loads it): ``damaged`` counts the folders that fail;
- a second child resumes from the checkpoint with the largest step (what a user picks),
  trains one more step and saves a final checkpoint in the same folder (the next save):
  ``unresumable`` counts the kills after which that resume fails;
- ``temporaries_after_next_save`` counts hidden ``.*.saving-*``/``.*.replaced-*``
  entries left in the folder after that resume's save.

Inference saves: a child calls ``save_inference_model`` in a loop (d_in 64, d_sae 1024),
in turn into a plain folder, a folder holding a user's ``notes.txt``, a symlink
``latest -> v1`` whose folder holds ``notes.txt``, and a plain folder with ``renameat2``
switched off (the two-rename fallback), and is killed at a random moment. Then:
``mixed`` counts paths whose ``cfg.json`` and weights come from different saves,
``user_files_moved`` counts ``notes.txt`` files missing or changed and links replaced,
and, after one more save into the path from a fresh process,
``temporaries_after_next_save`` and ``missing_after_next_save``.

``--baseline`` runs the same loop on the code before these guarantees: SAELens's own
checkpoint save (the plugin's wrapper unwrapped), and the previous ``saving.py`` (read
from git, ``--baseline-ref``) for inference saves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.results_readme import ResultsReadme, minutes, write_results_readme

DEFAULT_OUT = Path(__file__).parent / "results" / "kill_loop" / "results.json"
ROOT = Path(__file__).resolve().parent.parent

CHECKPOINT_STEPS = 60
BATCH = 128
LAYOUTS = ("plain", "user_file", "symlink", "two_renames")
USER_NOTE = "the user's own notes"


# --- children ----------------------------------------------------------------------------


def _child_checkpoints(folder: str, resume: str | None, baseline: bool) -> None:
    from sae_lens import LanguageModelSAETrainingRunner
    from sae_lens.training.sae_trainer import SAETrainer

    from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset

    if baseline:  # SAELens's own save (file by file into the final folder) and resume
        SAETrainer.save_checkpoint = SAETrainer.save_checkpoint.__wrapped__  # type: ignore[attr-defined]
        SAETrainer.load_trainer_state = SAETrainer.load_trainer_state.__wrapped__  # type: ignore[attr-defined]
    real_save = SAETrainer.save_checkpoint

    def announced_save(self: Any, *args: Any, **kwargs: Any) -> None:
        print("saving", flush=True)  # the parent aims its kill at the save that follows
        real_save(self, *args, **kwargs)
        print("saved", flush=True)

    SAETrainer.save_checkpoint = announced_save  # type: ignore[method-assign]
    setup = ToySetup(sae_kwargs={
        "d_sae": 2048, "ortho_anneal_steps": CHECKPOINT_STEPS, "contrastive_warm_up_steps": 0,
        "ortho_coefficient": 5.0,
    })
    if resume is None:
        runner_kwargs: dict[str, Any] = dict(training_tokens=BATCH * CHECKPOINT_STEPS, n_checkpoints=CHECKPOINT_STEPS - 1)
    else:  # one more step from the checkpoint, then a final checkpoint beside it
        samples = max(_step(Path(resume)), BATCH)
        runner_kwargs = dict(training_tokens=samples + BATCH, n_checkpoints=0, save_final_checkpoint=True,
                             resume_from_checkpoint=resume)
    cfg = tiny_runner_config(setup, train_batch_size_tokens=BATCH, checkpoint_path=folder, **runner_kwargs)
    cfg.checkpoint_path = folder  # SAELens appends a run id; every child writes the same folder
    runner = LanguageModelSAETrainingRunner(cfg, override_model=tiny_model(setup), override_dataset=tiny_token_dataset(setup))
    print("start", flush=True)
    runner.run()
    print("done", flush=True)


def _child_inference(path: str, layout: str, baseline_saving: str | None, once: bool) -> None:
    import torch

    import orthosae_plugin.training as training
    from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig, saving

    module = saving
    if baseline_saving is not None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("previous_saving", baseline_saving)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        training.write_folder_atomically = module.write_folder_atomically  # type: ignore[attr-defined]
    if layout == "two_renames":
        module._exchange = lambda a, b: False  # type: ignore[attr-defined]
    sae = OrthoContrastiveTrainingSAE(OrthoContrastiveTrainingSAEConfig(d_in=64, d_sae=1024, ortho_anneal_steps=10))
    print("start", flush=True)
    step = int(time.time() * 1000) % 10**6
    while True:
        step += 1
        sae.n_steps_trained.fill_(step)
        with torch.no_grad():
            sae.b_dec.fill_(float(step))  # a reader can tell which save a weights file is from
        sae.save_inference_model(path)
        if once:
            return


# --- the parent's checks -----------------------------------------------------------------


def _python(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "benchmarks.kill_loop", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _kill_after(process: subprocess.Popen[str], delay: float) -> bool:
    """Wait for the child's "start", sleep ``delay`` s, SIGKILL it; False if it had ended."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "start":
        process.wait()
        raise RuntimeError(f"child failed to start: {process.stderr.read() if process.stderr else ''}")
    time.sleep(delay)
    ended = process.poll() is not None
    if not ended:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return not ended


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def _checkpoint_loads(folder: Path) -> str | None:
    """None if every file a resume reads loads; else what failed."""
    import torch
    from safetensors.torch import load_file

    from orthosae_plugin.checkpoints import checkpoint_problems

    problems = checkpoint_problems(folder)
    if problems:
        return "; ".join(problems)
    try:
        torch.load(folder / "trainer_state.pt", map_location="cpu")
        for name in ("sae_weights.safetensors", "sparsity.safetensors", "activations_store_state.safetensors"):
            load_file(folder / name)
        for name in ("cfg.json", "runner_cfg.json", "activation_scaler.json"):
            json.loads((folder / name).read_text())
    except Exception as error:  # noqa: BLE001 - any failure makes it unresumable
        return f"{type(error).__name__}: {error}"
    return None


def _step(folder: Path) -> int:
    return int(folder.name.rsplit("_", 1)[-1]) if folder.name.rsplit("_", 1)[-1].isdigit() else -1


def calibrate_checkpoint_saves(workdir: Path, baseline: bool = False) -> float:
    """Median seconds of one checkpoint save, from one unkilled run."""
    process = _python(_checkpoint_args(workdir / "calibration", baseline))
    assert process.stdout is not None
    durations, started = [], 0.0
    for line in process.stdout:
        if line.strip() == "saving":
            started = time.perf_counter()
        elif line.strip() == "saved":
            durations.append(time.perf_counter() - started)
    _, stderr = process.communicate()
    if process.returncode != 0 or not durations:
        raise RuntimeError(stderr)
    return sorted(durations)[len(durations) // 2]


def _checkpoint_args(folder: Path, baseline: bool) -> list[str]:
    return ["--child", "checkpoints", "--dir", str(folder)] + (["--baseline"] if baseline else [])


def checkpoint_kill(folder: Path, rng: random.Random, save_seconds: float, baseline: bool = False) -> dict[str, Any]:
    """Kill a training run during its k-th checkpoint save (k and the moment in the save
    uniformly random), inspect the checkpoints, then resume from the newest one."""
    process = _python(_checkpoint_args(folder, baseline))
    assert process.stdout is not None
    target, seen = rng.randint(1, CHECKPOINT_STEPS - 2), 0
    delay = rng.uniform(0.0, 1.2 * save_seconds)
    for line in process.stdout:
        seen += line.strip() == "saving"
        if seen == target:
            break
    time.sleep(delay)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    row: dict[str, Any] = dict(save=target, delay_s=round(delay, 4), killed=killed)
    row["in_flight"] = [name for name in temporaries(folder) if ".saving-" in name or ".replaced-" in name]
    entries = folder.iterdir() if folder.is_dir() else iter(())
    checkpoints = sorted((p for p in entries if p.is_dir() and not p.name.startswith(".")), key=_step)
    row["checkpoints"] = len(checkpoints)
    row["damaged"] = {p.name: problem for p in checkpoints if (problem := _checkpoint_loads(p))}
    if checkpoints:
        newest = checkpoints[-1]
        resume = _python(_checkpoint_args(folder, baseline) + ["--resume", str(newest)])
        _, stderr = resume.communicate()
        row["resume_from"] = newest.name
        row["resumed"] = resume.returncode == 0
        if not row["resumed"]:
            row["resume_error"] = (stderr.strip().splitlines() or [""])[-1][:400]
        row["temporaries_after_next_save"] = temporaries(folder)
    return row


def checkpoint_kills(n: int, rng: random.Random, workdir: Path, baseline: bool = False) -> dict[str, Any]:
    """``n`` kills during checkpoint saves, each followed by a resume (the next save)."""
    save_seconds = calibrate_checkpoint_saves(workdir, baseline)
    rows = [checkpoint_kill(workdir / f"checkpoints-{i}", rng, save_seconds, baseline) for i in range(n)]
    counts = dict(
        kills=sum(row["killed"] for row in rows),
        kills_with_a_save_in_flight=sum(bool(row["in_flight"] or row["damaged"]) for row in rows),
        damaged=sum(len(row["damaged"]) for row in rows),
        unresumable=sum(row.get("resumed") is False for row in rows),
        refused_naming_a_whole_checkpoint=sum("The newest whole checkpoint beside it is" in row.get("resume_error", "") for row in rows),
        temporaries_after_next_save=sum(len(row.get("temporaries_after_next_save", [])) for row in rows),
    )
    return dict(counts=counts, median_save_seconds=round(save_seconds, 4), kills=rows)


def _save_state(path: Path, layout: str, link_target: Path) -> dict[str, Any]:
    """What a reader of ``path`` finds: a whole save, no save, or a mixed one."""
    import torch
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    if layout == "symlink":
        state["link_kept"] = path.is_symlink() and Path(os.path.realpath(path)) == link_target
    notes = (link_target if layout == "symlink" else path) / "notes.txt"
    if layout in ("user_file", "symlink"):
        state["user_file_kept"] = notes.is_file() and notes.read_text() == USER_NOTE
    if not (path / "cfg.json").is_file():
        state["save"] = "none"
        return state
    try:
        steps = json.loads((path / "cfg.json").read_text())["metadata"]["training_steps"]
        b_dec = load_file(path / "sae_weights.safetensors")["b_dec"]
        state["save"] = "whole" if torch.all(b_dec == float(steps)) else "mixed"
    except Exception as error:  # noqa: BLE001
        state["save"] = f"unreadable: {type(error).__name__}"
    return state


def inference_kill(root: Path, layout: str, rng: random.Random, baseline_saving: str | None = None,
                   max_delay: float = 1.5) -> dict[str, Any]:
    """Kill a process that saves in a loop into ``layout`` at a random moment, inspect the
    path, then save once more from a fresh process and inspect again."""
    root.mkdir(parents=True)
    link_target = root / "v1"
    path = root / ("latest" if layout == "symlink" else "sae")
    if layout == "symlink":
        link_target.mkdir()
        path.symlink_to("v1")
    else:
        path.mkdir()
    if layout in ("user_file", "symlink"):
        (link_target if layout == "symlink" else path).joinpath("notes.txt").write_text(USER_NOTE)
    args = ["--child", "inference", "--dir", str(path), "--layout", layout]
    if baseline_saving is not None:
        args += ["--baseline-saving", baseline_saving]
    delay = rng.uniform(0.0, max_delay)
    killed = _kill_after(_python(args), delay)
    after_kill = _save_state(path, layout, link_target.resolve())
    next_save = _python(args + ["--once"])
    _, stderr = next_save.communicate()
    after_next = _save_state(path, layout, link_target.resolve())
    return dict(
        layout=layout, delay_s=round(delay, 3), killed=killed, after_kill=after_kill, after_next_save=after_next,
        temporaries_after_next_save=temporaries(root),
        next_save_error=(stderr.strip().splitlines() or [""])[-1][:300] if next_save.returncode else None,
    )


def inference_kills(n: int, rng: random.Random, workdir: Path, baseline_saving: str | None = None) -> dict[str, Any]:
    """``n`` kills of a process saving in a loop, in turn into each layout."""
    rows = [inference_kill(workdir / f"inference-{i}", LAYOUTS[i % len(LAYOUTS)], rng, baseline_saving) for i in range(n)]
    states = [(row["after_kill"], row["after_next_save"]) for row in rows]
    counts = dict(
        kills=sum(row["killed"] for row in rows),
        mixed=sum(kill["save"] not in ("whole", "none") for kill, _ in states),
        no_save_after_kill=sum(kill["save"] == "none" for kill, _ in states),
        user_files_moved=sum(kill.get("user_file_kept") is False or nxt.get("user_file_kept") is False for kill, nxt in states),
        links_replaced=sum(kill.get("link_kept") is False or nxt.get("link_kept") is False for kill, nxt in states),
        next_save_failed=sum(row["next_save_error"] is not None for row in rows),
        missing_after_next_save=sum(nxt["save"] != "whole" for _, nxt in states),
        temporaries_after_next_save=sum(len(row["temporaries_after_next_save"]) for row in rows),
    )
    return dict(counts=counts, kills=rows)


def results_readme(results: dict[str, Any], baseline: dict[str, Any] | None) -> ResultsReadme:
    """The README of the results folder, from ``results.json`` (and ``baseline.json``)."""
    runs = [("this version", results)] + ([("before (baseline)", baseline)] if baseline else [])
    provenance = [
        (label, f"`{run['command']}`; {run['machine']}; {minutes(run['wall_seconds'])} wall time; seed {run['seed']}")
        for label, run in runs
    ]
    provenance.append((
        "Covers",
        "the toy model (d_in 64) through SAELens's LanguageModelSAETrainingRunner, d_sae 2048, a checkpoint after "
        f"every one of {CHECKPOINT_STEPS} steps, each kill aimed at a random moment of a random checkpoint save; "
        "inference saves of a d_in 64, d_sae 1024 SAE in a loop, killed at a random moment, in turn into a plain "
        "folder, a folder holding a user's file, a symlink to such a folder, and a folder with renameat2 off",
    ))
    ckpt_keys = ["kills", "kills_with_a_save_in_flight", "damaged", "unresumable", "refused_naming_a_whole_checkpoint",
                 "temporaries_after_next_save"]
    inf_keys = ["kills", "mixed", "no_save_after_kill", "user_files_moved", "links_replaced", "next_save_failed",
                "missing_after_next_save", "temporaries_after_next_save"]
    header = "| | " + " | ".join(label for label, _ in runs) + " |\n|---|" + "---|" * len(runs)
    table = ["## Checkpoint saves", "", header]
    table += [f"| {key.replace('_', ' ')} | " + " | ".join(str(run["checkpoints"]["counts"][key]) for _, run in runs) + " |"
              for key in ckpt_keys]
    table += ["", "## Inference saves", "", header]
    table += [f"| {key.replace('_', ' ')} | " + " | ".join(str(run["inference"]["counts"][key]) for _, run in runs) + " |"
              for key in inf_keys]
    return ResultsReadme(
        title="kill -9 during checkpoint and inference saves",
        measures=(__doc__ or "").split("\n\n", 2)[2].split("``--baseline``")[0].strip(),
        provenance=provenance,
        table="\n".join(table),
        caveats=[
            "A kill lands where the scheduler lets it: `kills with a save in flight` counts the kills after which "
            "a temporary (or, before, a partial checkpoint) was found, i.e. that interrupted a save.",
            "`no save after kill` is a path without `cfg.json`: a kill during the per-file renames into a folder "
            "holding a user's file, or between the two renames of the fallback; never a mixed save. The next save "
            "restores or completes it (`missing after next save`).",
        ] + (["The baseline runs SAELens's own checkpoint save and the previous `saving.py`."] if baseline else
             ["No baseline run is committed (`--baseline` measures the code before these guarantees)."]),
        files=[("results.json", "every kill of this version: its moment, what was found, the resume's error if any")]
        + ([("baseline.json", "the same for the code before")] if baseline else []),
        docs="saving-and-resuming.md",
        regenerate="python -m benchmarks.kill_loop --readme benchmarks/results/kill_loop",
    )


def write_readme(folder: Path) -> Path:
    results = json.loads((folder / "results.json").read_text())
    baseline = json.loads((folder / "baseline.json").read_text()) if (folder / "baseline.json").is_file() else None
    return write_results_readme(folder, results_readme(results, baseline))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint-kills", type=int, default=20)
    parser.add_argument("--inference-kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--baseline-ref", default="7eb8622", help="git commit of the previous saving.py")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--readme", type=Path, help="rewrite FOLDER/README.md from its saved results, measuring nothing")
    # children
    parser.add_argument("--child", choices=("checkpoints", "inference"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--resume", help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-saving", help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "checkpoints":
        return _child_checkpoints(args.dir, args.resume, args.baseline)
    if args.child == "inference":
        return _child_inference(args.dir, args.layout, args.baseline_saving, args.once)

    if args.readme is not None:
        print(write_readme(args.readme))
        return None
    rng = random.Random(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        baseline_saving = None
        if args.baseline:
            old = subprocess.run(["git", "show", f"{args.baseline_ref}:orthosae_plugin/saving.py"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout
            baseline_saving = str(Path(workdir) / "previous_saving.py")
            Path(baseline_saving).write_text(old)
        results = dict(
            command="python -m benchmarks.kill_loop " + " ".join(sys.argv[1:] if argv is None else argv),
            machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}",
            baseline=args.baseline,
            seed=args.seed,
            checkpoints=checkpoint_kills(args.checkpoint_kills, rng, Path(workdir) / "ckpt", baseline=args.baseline),
            inference=inference_kills(args.inference_kills, rng, Path(workdir) / "inf", baseline_saving=baseline_saving),
        )
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if (args.out.parent / "results.json").is_file():
        write_readme(args.out.parent)
    print(json.dumps({"checkpoints": results["checkpoints"]["counts"], "inference": results["inference"]["counts"],
                      "wall_seconds": results["wall_seconds"]}, indent=2))


if __name__ == "__main__":
    main()
