"""Registration of ``ortho_contrastive`` with SAELens, and the budget hooks.

SAELens has no hook through which an SAE config sees the run's token budget, and its
runners load the model before they build the SAE. This module wraps two places:

- the ``__post_init__`` of SAELens's runner configs (``LanguageModelSAERunnerConfig``,
  ``SyntheticSAERunnerConfig`` and, for each of its SAEs, ``MultiSAETrainingRunnerConfig``),
  so that a bad budget is refused before any model is loaded;
- ``SAETrainer.__init__``, which every SAELens runner goes through (``MultiSAETrainer``
  builds one per SAE), so that the anneal horizon is derived from the run that actually
  trains, not from whichever config was built first.

Both call the SAE config's ``bind_to_training_run`` (only ``ortho_contrastive`` has one)
with the step count and the arithmetic behind it, after checking that the batch size and
the budget are integers (batch >= 1) so that the division cannot fail. Configs of other
architectures are untouched. Every step is idempotent: importing or reloading the
package twice changes nothing.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)
from sae_lens.synthetic.synthetic_sae_runner import SyntheticSAERunnerConfig
from sae_lens.training.sae_trainer import SAETrainer

from orthosae_plugin.ortho_contrastive import (
    ARCHITECTURE,
    OrthoContrastiveSAE,
    OrthoContrastiveSAEConfig,
    OrthoContrastiveTrainingSAE,
    OrthoContrastiveTrainingSAEConfig,
)
from orthosae_plugin.validation import check_batch_and_budget

_HOOK_MARK = "_orthosae_budget_hook"


def register() -> None:
    """Register ``ortho_contrastive`` with SAELens (safe to call any number of times)."""
    # Re-registering after a reload swaps in the reloaded classes; SAELens's register
    # functions refuse a name twice, so the old entry is dropped first.
    SAE_TRAINING_CLASS_REGISTRY.pop(ARCHITECTURE, None)
    register_sae_training_class(
        ARCHITECTURE, OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
    )
    # Saved inference models are `standard`, `topk` or `jumprelu`; this entry lets
    # `SAE.load_from_disk` open a training checkpoint (architecture "ortho_contrastive")
    # in its base's inference form.
    SAE_CLASS_REGISTRY.pop(ARCHITECTURE, None)
    register_sae_class(ARCHITECTURE, OrthoContrastiveSAE, OrthoContrastiveSAEConfig)
    _install_budget_hook(
        LanguageModelSAERunnerConfig,
        lambda cfg: [(cfg.sae, "train_batch_size_tokens", "training_tokens", "")],
    )
    _install_budget_hook(
        SyntheticSAERunnerConfig,
        lambda cfg: [(cfg.sae, "batch_size", "training_samples", "")],
    )
    _install_budget_hook(
        MultiSAETrainingRunnerConfig,
        lambda cfg: [
            (sae_cfg, "train_batch_size_tokens", "training_tokens", f"saes[{name!r}]: ")
            for name, sae_cfg in cfg.saes.items()
        ],
    )
    _install_trainer_hook()


# (SAE config, batch-size field, budget field, prefix naming the SAE in a message)
_Binding = tuple[Any, str, str, str]


def _bind(
    sae_cfg: Any, run_cfg: Any, batch_field: str, budget_field: str, prefix: str, check_only: bool = False
) -> None:
    """Check the run's batch and budget, then hand the step count to ``sae_cfg``."""
    bind = getattr(sae_cfg, "bind_to_training_run", None)
    if not callable(bind):
        return
    batch_size, budget = getattr(run_cfg, batch_field), getattr(run_cfg, budget_field)
    try:
        check_batch_and_budget(batch_field, batch_size, budget_field, budget)
        if check_only:
            return
        bind(
            budget // batch_size,
            batch_size,
            f"{budget_field}={budget} // {batch_field}={batch_size}",
        )
    except ValueError as error:
        if not prefix:
            raise
        raise ValueError(f"{prefix}{error}") from None


def _install_budget_hook(config_cls: type, bindings: Callable[[Any], list[_Binding]]) -> None:
    original = config_cls.__post_init__
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def __post_init__(self: Any) -> None:
        # The batch is checked before SAELens's own post-init, which divides by it.
        for sae_cfg, batch_field, budget_field, prefix in bindings(self):
            _bind(sae_cfg, self, batch_field, budget_field, prefix, check_only=True)
        original(self)
        for sae_cfg, batch_field, budget_field, prefix in bindings(self):
            _bind(sae_cfg, self, batch_field, budget_field, prefix)

    setattr(__post_init__, _HOOK_MARK, True)
    config_cls.__post_init__ = __post_init__


def _install_trainer_hook() -> None:
    """Bind the SAE's config to the trainer's budget before SAELens builds the trainer
    (its optimizer, schedulers and coefficient schedulers)."""
    original = SAETrainer.__init__
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def __init__(self: Any, cfg: Any, sae: Any, *args: Any, **kwargs: Any) -> None:
        _bind(sae.cfg, cfg, "train_batch_size_samples", "total_training_samples", "")
        original(self, cfg, sae, *args, **kwargs)

    setattr(__init__, _HOOK_MARK, True)
    SAETrainer.__init__ = __init__  # type: ignore[method-assign]
