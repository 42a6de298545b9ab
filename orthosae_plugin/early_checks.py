"""Checks that refuse an ``ortho_contrastive`` run before it spends time on it.

- :func:`check_parameters_fit`: the SAE's parameters must fit in the memory of their
  device, checked before they are allocated (``OrthoContrastiveTrainingSAE`` calls it
  first), so that ``d_sae`` or ``projection_dim`` far too large is one ``ValueError``
  naming the bytes, not an allocator failure.
- :func:`install_runner_checks` wraps ``LanguageModelSAETrainingRunner.run`` so that,
  before the first step, one forward pass of two tokens measures the width of the hook
  the run reads and compares it with ``d_in`` (SAELens fails deep in its activation
  store otherwise).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable

import torch
from sae_lens.constants import DTYPE_MAP
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

_HOOK_MARK = "_orthosae_early_check"


def parameter_bytes(cfg: Any) -> dict[str, int]:
    """Bytes of the SAE's parameters and buffers that grow with its sizes, by name."""
    itemsize = DTYPE_MAP[cfg.dtype].itemsize if isinstance(cfg.dtype, str) else 4
    sizes = {
        "W_enc and W_dec": 2 * cfg.d_in * cfg.d_sae,
        "b_enc and b_dec": cfg.d_sae + cfg.d_in,
    }
    if cfg.projection_dim is not None:
        sizes["projection"] = cfg.d_in * cfg.projection_dim
    return {name: count * itemsize for name, count in sizes.items()}


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation on ``device`` can use; None where it cannot be told."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_parameters_fit(cfg: Any) -> None:
    """Refuse sizes whose parameters alone exceed the memory free on ``cfg.device``."""
    needed = parameter_bytes(cfg)
    total = sum(needed.values())
    available = available_bytes(torch.device(cfg.device))
    if available is None or total <= available:
        return
    parts = ", ".join(f"{name}: {size:,}" for name, size in needed.items())
    raise ValueError(
        f"d_sae={cfg.d_sae}, d_in={cfg.d_in}, projection_dim={cfg.projection_dim} is invalid: "
        f"the SAE's parameters need {total:,} bytes in {cfg.dtype} ({parts}), more than the "
        f"{available:,} bytes free on device {cfg.device!r} (training needs about 4x that "
        "with Adam's state and gradients). Lower d_sae or projection_dim."
    )


def hook_width(runner: LanguageModelSAETrainingRunner) -> int:
    """Width of the activations SAELens's store will hand the SAE, from a forward pass of
    two tokens (the store's own slicing of heads applied)."""
    store = runner.activations_store
    tokens = torch.zeros((1, 2), dtype=torch.long, device=next(runner.model.parameters()).device)
    with torch.no_grad():
        cache = runner.model.run_with_cache(
            tokens,
            names_filter=[store.hook_name],
            stop_at_layer=extract_stop_at_layer_from_tlens_hook_name(store.hook_name),
            prepend_bos=False,
            **store.model_kwargs,
        )[1]
    acts = cache[store.hook_name]
    if store.hook_head_index is not None:
        return int(acts.shape[-1])
    return int(math.prod(acts.shape[2:]))


def check_hook_width(runner: LanguageModelSAETrainingRunner) -> None:
    try:
        width = hook_width(runner)
    except Exception:  # noqa: BLE001 - a model the probe cannot run: SAELens's own path decides
        return
    d_in = runner.sae.cfg.d_in
    if width != d_in:
        raise ValueError(
            f"d_in={d_in} is invalid: the hook {runner.cfg.hook_name!r} of model "
            f"{runner.cfg.model_name!r} gives activations of width {width}. Set d_in={width}, "
            "or pick the hook whose width is d_in."
        )


def install_runner_checks(applies_to: Callable[[Any], bool]) -> None:
    """Wrap ``LanguageModelSAETrainingRunner.run`` to check the hook's width first, for
    the SAEs for which ``applies_to(sae)`` is true (idempotent)."""
    original = LanguageModelSAETrainingRunner.run
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def run(self: Any) -> Any:
        if applies_to(self.sae):
            check_hook_width(self)
        return original(self)

    setattr(run, _HOOK_MARK, True)
    LanguageModelSAETrainingRunner.run = run  # type: ignore[method-assign]
