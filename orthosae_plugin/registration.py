"""Registration of ``ortho_contrastive`` with SAELens, and of the budget hooks.

``register()`` puts the training and the inference classes in SAELens's registries under
``ortho_contrastive`` and installs the hooks through which the config sees the run's
budget (``run_budget.py``). Every step is idempotent: importing or reloading the package
twice changes nothing.
"""

from __future__ import annotations

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from orthosae_plugin.config import ARCHITECTURE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.inference import OrthoContrastiveSAE, OrthoContrastiveSAEConfig
from orthosae_plugin.run_budget import install_budget_hooks
from orthosae_plugin.training import OrthoContrastiveTrainingSAE


def register() -> None:
    """Register ``ortho_contrastive`` with SAELens (safe to call any number of times)."""
    # Re-registering after a reload swaps in the reloaded classes; SAELens's register
    # functions refuse a name twice, so the old entry is dropped first.
    SAE_TRAINING_CLASS_REGISTRY.pop(ARCHITECTURE, None)
    register_sae_training_class(ARCHITECTURE, OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig)
    # Saved inference models are `standard`, `topk` or `jumprelu`; this entry lets
    # `SAE.load_from_disk` open a training checkpoint (architecture "ortho_contrastive")
    # in its base's inference form.
    SAE_CLASS_REGISTRY.pop(ARCHITECTURE, None)
    register_sae_class(ARCHITECTURE, OrthoContrastiveSAE, OrthoContrastiveSAEConfig)
    install_budget_hooks()
