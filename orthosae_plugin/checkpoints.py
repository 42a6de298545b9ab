"""Training checkpoints of ``ortho_contrastive`` runs: written whole or not at all, and
resumed only from a whole checkpoint with the settings it was trained with.

SAELens's ``SAETrainer.save_checkpoint`` writes a checkpoint file by file into its
final folder (the SAE, ``sparsity.safetensors``, ``trainer_state.pt``,
``activation_scaler.json``, then the runner's ``activations_store_state.safetensors``
and ``runner_cfg.json``), so a process killed during it leaves a folder that cannot be
resumed. :func:`install_checkpoint_hooks` wraps two methods of ``SAETrainer`` for the
SAEs it is given a test for:

- ``save_checkpoint``: the same files, written by SAELens's own code into a hidden
  sibling folder and put in place by :func:`~orthosae_plugin.saving.write_folder_atomically`.
- ``load_trainer_state`` (the first thing a resume reads): deletes the temporaries that
  a killed save left beside the checkpoint, then refuses a checkpoint with a
  missing or unreadable file, naming the newest whole checkpoint beside it
  (:func:`check_checkpoint`), then a checkpoint trained with other settings
  (:func:`check_resumed_settings`).

The config's rule for ``resume_allow_changes`` (:func:`check_resume_allow_changes`) is here
too, beside the lists of settings it is checked against.
"""

from __future__ import annotations

import functools
import json
import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from sae_lens.constants import (
    ACTIVATION_SCALER_CFG_FILENAME,
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    TRAINER_STATE_FILENAME,
)
from sae_lens.training.sae_trainer import SAETrainer

from orthosae_plugin.saving import recover, write_folder_atomically
from orthosae_plugin.validation import closest_name, invalid, type_note

# Written by every SAETrainer checkpoint.
TRAINER_FILES = (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, TRAINER_STATE_FILENAME, ACTIVATION_SCALER_CFG_FILENAME)
# Written by a runner's checkpoint callback: one of them (LanguageModelSAETrainingRunner
# writes the first, SyntheticSAERunner the second).
RUNNER_CONFIG_FILES = (RUNNER_CFG_FILENAME, "runner_config.json")

# Settings whose change gives the SAE other parameter or buffer shapes (or another set of
# coefficient schedulers): a checkpoint trained with another value cannot be loaded.
SHAPE_SETTINGS = ("d_in", "d_sae", "projection_dim", "sparsity_base")
# Settings that change neither the loss nor its schedule (memory and speed knobs, the
# device, bookkeeping), so a resume may change them freely.
FREE_SETTINGS = (
    "device",
    "decoder_init_norm",
    "ortho_block_size",
    "ortho_margin",
    "ortho_rescan_every",
    "ortho_max_pair_fraction",
    "ortho_max_pairs_per_latent",
    "use_sparse_activations",
    "ortho_anneal_steps_derived",
    "resume_allow_changes",
    "metadata",
)
RESUME_OPT_IN = "resume_allow_changes"

_HOOK_MARK = "_orthosae_checkpoint_hook"


def install_checkpoint_hooks(applies_to: Callable[[Any], bool]) -> None:
    """Wrap ``SAETrainer.save_checkpoint`` and ``load_trainer_state`` for the SAEs for
    which ``applies_to(sae)`` is true (idempotent)."""
    save_original = SAETrainer.save_checkpoint
    if getattr(save_original, _HOOK_MARK, False):
        return

    @functools.wraps(save_original)
    def save_checkpoint(
        self: Any, checkpoint_name: str, base_path: Path | str | None = None, wandb_aliases: list[str] | None = None
    ) -> None:
        base = base_path if base_path is not None else self.cfg.checkpoint_path
        if base is None or not applies_to(self.sae):
            return save_original(self, checkpoint_name, base_path, wandb_aliases)

        def write(folder: Path) -> None:
            save_original(self, folder.name, folder.parent, wandb_aliases)

        write_folder_atomically(Path(base) / checkpoint_name, write)
        return None

    load_original = SAETrainer.load_trainer_state

    @functools.wraps(load_original)
    def load_trainer_state(self: Any, checkpoint_path: Path | str) -> None:
        if applies_to(self.sae):
            folder = Path(checkpoint_path)
            recover(folder)  # the killed run's temporaries beside it, if any
            check_checkpoint(folder, runner_files=self.save_checkpoint_fn is not None)
            check_resumed_settings(self.sae.cfg, folder)
        load_original(self, checkpoint_path)

    setattr(save_checkpoint, _HOOK_MARK, True)
    setattr(load_trainer_state, _HOOK_MARK, True)
    SAETrainer.save_checkpoint = save_checkpoint  # type: ignore[method-assign]
    SAETrainer.load_trainer_state = load_trainer_state  # type: ignore[method-assign]


# --- whole or damaged --------------------------------------------------------------------


def checkpoint_problems(folder: Path, runner_files: bool = True) -> list[str]:
    """What keeps ``folder`` from being a whole training checkpoint (empty: nothing).

    Checks that every file SAELens writes is there and readable without loading it: JSON
    files parse, a safetensors file is as long as its header says, ``trainer_state.pt``
    (a zip archive) has its directory. ``runner_files``: a runner's config is required.
    """
    if not folder.is_dir():
        return ["it does not exist" if not folder.exists() else "it is not a folder"]
    problems = [f"{name} is missing" for name in TRAINER_FILES if not (folder / name).is_file()]
    if runner_files and not any((folder / name).is_file() for name in RUNNER_CONFIG_FILES):
        problems.append(f"{RUNNER_CFG_FILENAME} is missing")
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            problem = _file_problem(entry)
            if problem:
                problems.append(f"{entry.name} is unreadable ({problem})")
    return problems


def _file_problem(path: Path) -> str | None:
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            return _safetensors_problem(path)
        elif path.suffix == ".pt":
            with zipfile.ZipFile(path) as archive:
                if not archive.namelist():
                    return "an empty archive"
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        return str(error) or type(error).__name__
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a header"
        (header_size,) = struct.unpack("<Q", head)
        if 8 + header_size > size:
            return f"{size} bytes, its header alone claims {8 + header_size}"
        header = json.loads(handle.read(header_size))
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_size + end != size:
        return f"{size} bytes where its header describes {8 + header_size + end}"
    return None


def _step_of(folder: Path) -> int:
    """The samples count a checkpoint's name ends with (SAELens names them by it)."""
    match = re.search(r"(\d+)$", folder.name)
    return int(match.group(1)) if match else -1


def newest_whole_checkpoint(parent: Path, runner_files: bool = True, exclude: Path | None = None) -> Path | None:
    """The checkpoint in ``parent`` with the largest samples count that is whole."""
    if not parent.is_dir():
        return None
    candidates = [
        entry for entry in parent.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and entry != exclude
    ]
    for folder in sorted(candidates, key=lambda entry: (_step_of(entry), entry.name), reverse=True):
        if not checkpoint_problems(folder, runner_files):
            return folder
    return None


def check_checkpoint(folder: Path, runner_files: bool = True) -> None:
    """Refuse to resume from a checkpoint that is not whole, naming the newest whole
    checkpoint beside it."""
    problems = checkpoint_problems(folder, runner_files)
    if not problems:
        return
    newest = newest_whole_checkpoint(folder.parent, runner_files, exclude=folder)
    advice = (
        f"The newest whole checkpoint beside it is {str(newest)!r}: resume from that one."
        if newest is not None
        else f"There is no whole checkpoint beside it in {str(folder.parent)!r}."
    )
    raise ValueError(
        f"resume_from_checkpoint={str(folder)!r} is invalid: it is not a whole checkpoint "
        f"({'; '.join(problems)}); a save into it was interrupted, or it was written by "
        f"SAELens's interrupt handler, which saves only the runner's files. {advice}"
    )


# --- the settings a checkpoint was trained with ------------------------------------------


def check_resumed_settings(cfg: Any, folder: Path) -> None:
    """Refuse to resume ``cfg`` from the checkpoint ``folder`` if a setting that shapes
    the parameters, the loss or its schedule differs from the checkpoint's ``cfg.json``
    (names missing from an older checkpoint's file are not compared).

    The loss settings named in ``cfg.resume_allow_changes`` may differ; shape settings
    never can.
    """
    cfg_path = folder / SAE_CFG_FILENAME
    if not cfg_path.is_file():
        return
    saved = json.loads(cfg_path.read_text())
    allowed = set(getattr(cfg, RESUME_OPT_IN, ()) or ())
    shape, loss = [], []
    for f in fields(cfg):
        if f.name in FREE_SETTINGS or f.name not in saved:
            continue
        new = json.loads(json.dumps(getattr(cfg, f.name), default=str))
        old = saved[f.name]
        if old == new or (f.name in allowed and f.name not in SHAPE_SETTINGS):
            continue
        (shape if f.name in SHAPE_SETTINGS else loss).append(f"{f.name}: {old!r} -> {new!r}")
    if not shape and not loss:
        return
    lines = [f"resume_from_checkpoint={str(folder)!r}: this run's settings differ from the checkpoint's."]
    if shape:
        lines.append(
            "These change the SAE's parameters, so the checkpoint cannot be loaded "
            f"into it: {'; '.join(shape)}. Resume with the checkpoint's values."
        )
    if loss:
        names = [item.split(":")[0] for item in loss]
        if cfg.ortho_anneal_steps_derived and "ortho_anneal_steps" in names:
            loss[names.index("ortho_anneal_steps")] += " (derived from the run's budget: resume with the checkpoint's budget)"
        lines.append(
            "These change the loss or its schedule halfway through training: "
            f"{'; '.join(loss)}. Resume with the checkpoint's values or, if the change is "
            f"meant, list them in {RESUME_OPT_IN} (e.g. {RESUME_OPT_IN}={names!r})."
        )
    raise ValueError(" ".join(lines))


def check_resume_allow_changes(cfg: Any) -> None:
    """The config's own rule for ``resume_allow_changes``: a list of the names of settings
    that a resume compares (not a shape setting, which no resume may change). Stored as
    a list."""
    names = getattr(cfg, RESUME_OPT_IN)
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise invalid(RESUME_OPT_IN, names, f"it must be a list of setting names{type_note(names)}")
    valid = [f.name for f in fields(cfg) if f.name not in FREE_SETTINGS]
    for name in names:
        if name in SHAPE_SETTINGS:
            raise invalid(
                RESUME_OPT_IN, names,
                f"{name!r} changes the SAE's parameter shapes, so a checkpoint trained with "
                "another value cannot be resumed at all",
            )
        if name not in valid:
            raise invalid(
                RESUME_OPT_IN, names,
                f"{name!r} is not a setting that a resume compares{closest_name(name, valid)}",
            )
    setattr(cfg, RESUME_OPT_IN, list(names))
