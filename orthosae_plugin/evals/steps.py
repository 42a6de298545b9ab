"""How many steps a saved SAE was actually trained for (the number the alarm checks).

Sources, first found wins:

1. ``n_steps_trained`` in the folder's ``sae_weights.safetensors``: the saved clock of an
   ``ortho_contrastive`` *training checkpoint*. ``SAE.load_from_disk`` drops it (it is a
   training-only buffer), so it is read from the file itself.
2. ``n_training_steps`` in ``trainer_state.pt``: the trainer's clock, which SAELens saves in
   every training checkpoint of any architecture (sae_trainer.py, ``save_trainer_state``).
3. ``cfg.metadata.training_steps``: what an inference save records (``ortho_contrastive``'s
   ``save_inference_model`` writes its clock there).
4. ``runner_cfg.json``'s ``training_tokens // train_batch_size_tokens``, only in a folder
   *without* ``trainer_state.pt``: SAELens writes that file next to a final save after
   the training loop has consumed the whole budget (``save_final_sae``), so there the
   budget is what was trained. In a checkpoint folder it is the *planned* budget (a
   checkpoint at step 397 of 1,200 carries 1,200), and it is never used.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from sae_lens import SAE
from sae_lens.constants import (
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    TRAINER_STATE_FILENAME,
)

CLOCK_KEY = "n_steps_trained"
"""The training clock buffer of ``ortho_contrastive`` training SAEs."""


def saved_clock(sae_path: Path) -> int | None:
    """``n_steps_trained`` from the folder's weights file, or None when it has none."""
    weights = sae_path / SAE_WEIGHTS_FILENAME
    if not weights.exists():
        return None
    with safe_open(str(weights), framework="pt") as file:
        if CLOCK_KEY not in file.keys():  # noqa: SIM118 (safe_open has no __contains__)
            return None
        return int(file.get_tensor(CLOCK_KEY).item())


def trainer_clock(sae_path: Path) -> int | None:
    """``n_training_steps`` from SAELens's ``trainer_state.pt``, or None without one."""
    state_path = sae_path / TRAINER_STATE_FILENAME
    if not state_path.exists():
        return None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 (an unreadable trainer state: fall through to the rest)
        return None
    steps = state.get("n_training_steps") if isinstance(state, dict) else None
    return None if steps is None else int(steps)


def training_steps_of(sae: SAE, sae_path: Path | None = None) -> tuple[int | None, str]:
    """The number of steps `sae` was actually trained for and where it was read from
    (see the module docstring for the order); ``(None, "unknown")`` when nothing says."""
    if sae_path is not None:
        clock = saved_clock(sae_path)
        if clock is not None:
            return clock, f"{SAE_WEIGHTS_FILENAME} {CLOCK_KEY} (the checkpoint's clock)"
        clock = trainer_clock(sae_path)
        if clock is not None:
            return clock, f"{TRAINER_STATE_FILENAME} n_training_steps (the checkpoint's clock)"
    steps = sae.cfg.metadata.get("training_steps")
    if steps is not None:
        return int(steps), "cfg.metadata.training_steps"
    if sae_path is not None and (sae_path / RUNNER_CFG_FILENAME).exists() and not (
        sae_path / TRAINER_STATE_FILENAME
    ).exists():
        try:
            runner_cfg = json.loads((sae_path / RUNNER_CFG_FILENAME).read_text())
        except (OSError, ValueError):
            return None, "unknown"
        tokens, batch = runner_cfg.get("training_tokens"), runner_cfg.get("train_batch_size_tokens")
        if tokens is not None and batch:
            source = (f"{RUNNER_CFG_FILENAME} of a final save (training_tokens // "
                      "train_batch_size_tokens)")
            return int(tokens) // int(batch), source
    return None, "unknown"


def _warm_ups_in(config: object) -> dict[str, int]:
    """Every ``*warm_up_steps`` entry of a (nested) config dict, by its key."""
    found: dict[str, int] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            if isinstance(value, dict):
                for name, n in _warm_ups_in(value).items():
                    found[name] = max(n, found.get(name, 0))
            elif str(key).endswith("warm_up_steps") and isinstance(value, int) and not (
                isinstance(value, bool)
            ):
                found[str(key)] = max(value, found.get(str(key), 0))
    return found


def run_schedule(sae: SAE, sae_path: Path | None = None) -> tuple[dict[str, int], int | None]:
    """The training run's warm-ups (``{name: steps}``) and planned step budget, as far as
    the SAE's metadata and its folder record them.

    Warm-ups: every ``*warm_up_steps`` in ``cfg.metadata.training_architecture_details``
    (SAELens records the training config there, inference saves included), in the
    folder's ``cfg.json`` and ``runner_cfg.json`` (``lr_warm_up_steps``, the SAE's own).
    Planned steps: ``runner_cfg.json``'s ``training_tokens // train_batch_size_tokens``.
    """
    warm_ups = _warm_ups_in(sae.cfg.metadata.get("training_architecture_details") or {})
    planned = None
    if sae_path is not None:
        for name in (SAE_CFG_FILENAME, RUNNER_CFG_FILENAME):
            try:
                config = json.loads((sae_path / name).read_text())
            except (OSError, ValueError):
                continue
            for key, n in _warm_ups_in(config).items():
                warm_ups[key] = max(n, warm_ups.get(key, 0))
            if name == RUNNER_CFG_FILENAME:
                tokens, batch = config.get("training_tokens"), config.get("train_batch_size_tokens")
                if isinstance(tokens, int) and isinstance(batch, int) and batch > 0:
                    planned = tokens // batch
    return warm_ups, planned
