"""Registration of ``ortho_contrastive`` with SAELens, and of the budget hooks.

``register()`` puts the training and the inference classes in SAELens's registries under
``ortho_contrastive`` and installs the hooks through which the config sees the run's
budget (``run_budget.py``), those that write checkpoints whole and check a resume
(``checkpoints.py``), the check of ``d_in`` against the hook's width before the first
step (``early_checks.py``), and the check of the dict form of a config (below). Every step is idempotent: importing or reloading the package
twice changes nothing.
"""

from __future__ import annotations

import functools
from typing import Any

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

from orthosae_plugin.checkpoints import install_checkpoint_hooks
from orthosae_plugin.config import ARCHITECTURE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.early_checks import install_runner_checks
from orthosae_plugin.inference import OrthoContrastiveSAE, OrthoContrastiveSAEConfig
from orthosae_plugin.run_budget import install_budget_hooks
from orthosae_plugin.training import OrthoContrastiveTrainingSAE
from orthosae_plugin.validation import check_config_dict

_HOOK_MARK = "_orthosae_from_dict_hook"


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
    install_checkpoint_hooks(_is_ortho_sae)
    install_runner_checks(_is_ortho_sae)
    _install_from_dict_hooks()


def _install_from_dict_hooks() -> None:
    """Check the dict (JSON) form of an ``ortho_contrastive`` config before SAELens's
    ``from_dict`` builds it, since SAELens drops unknown keys without a word
    (:func:`~orthosae_plugin.validation.check_config_dict`). A training checkpoint's
    ``cfg.json`` opened for inference (``SAE.load_from_disk``) is also validated as the
    training config it is, since the inference config reads only a few of its fields."""
    training_from_dict = TrainingSAEConfig.__dict__["from_dict"].__func__
    if getattr(training_from_dict, _HOOK_MARK, False):
        return

    @functools.wraps(training_from_dict)
    def from_training_dict(cls: type, config_dict: dict[str, Any]) -> Any:
        training_cfg_class = SAE_TRAINING_CLASS_REGISTRY[ARCHITECTURE][1]
        if _is_ortho_dict(config_dict) or issubclass(cls, training_cfg_class):
            config_dict = check_config_dict(config_dict, training_cfg_class)
        return training_from_dict(cls, config_dict)

    inference_from_dict = SAEConfig.__dict__["from_dict"].__func__

    @functools.wraps(inference_from_dict)
    def from_inference_dict(cls: type, config_dict: dict[str, Any]) -> Any:
        training_cfg_class = SAE_TRAINING_CLASS_REGISTRY[ARCHITECTURE][1]
        if _is_ortho_dict(config_dict) or issubclass(cls, SAE_CLASS_REGISTRY[ARCHITECTURE][1]):
            config_dict = check_config_dict(config_dict, training_cfg_class)
            training_cfg_class.from_dict({**config_dict, "architecture": ARCHITECTURE})
        return inference_from_dict(cls, config_dict)

    setattr(from_training_dict, _HOOK_MARK, True)
    setattr(from_inference_dict, _HOOK_MARK, True)
    TrainingSAEConfig.from_dict = classmethod(from_training_dict)  # type: ignore[assignment]
    SAEConfig.from_dict = classmethod(from_inference_dict)  # type: ignore[assignment]


def _is_ortho_sae(sae: Any) -> bool:
    architecture = getattr(getattr(sae, "cfg", None), "architecture", None)
    return callable(architecture) and architecture() == ARCHITECTURE


def _is_ortho_dict(config_dict: Any) -> bool:
    return isinstance(config_dict, dict) and config_dict.get("architecture") == ARCHITECTURE
