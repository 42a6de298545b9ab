"""Registration of ``ortho_contrastive`` with SAELens, and the runner-config hook.

SAELens has no hook through which an SAE config sees the run's token budget, and its
runner loads the model before it builds the SAE. So that a bad budget is refused before
any model is loaded, and the anneal horizon can default to the run's real length, this
module wraps the ``__post_init__`` of SAELens's two runner configs
(``LanguageModelSAERunnerConfig`` and ``SyntheticSAERunnerConfig``): after SAELens's own
post-init, if the SAE config has ``bind_to_training_run``, it is called with the step
count and the arithmetic behind it. Configs of other architectures are untouched.
Both steps are idempotent: importing or reloading the package twice changes nothing.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)
from sae_lens.synthetic.synthetic_sae_runner import SyntheticSAERunnerConfig

from orthosae_plugin.ortho_contrastive import (
    ARCHITECTURE,
    OrthoContrastiveSAE,
    OrthoContrastiveSAEConfig,
    OrthoContrastiveTrainingSAE,
    OrthoContrastiveTrainingSAEConfig,
)

_HOOK_MARK = "_orthosae_budget_hook"


def register() -> None:
    """Register ``ortho_contrastive`` with SAELens (safe to call any number of times)."""
    # Re-registering after a reload swaps in the reloaded classes; SAELens's register
    # functions refuse a name twice, so the old entry is dropped first.
    SAE_TRAINING_CLASS_REGISTRY.pop(ARCHITECTURE, None)
    register_sae_training_class(
        ARCHITECTURE, OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
    )
    # Saved inference models are `standard`; this entry lets `SAE.load_from_disk` open
    # a training checkpoint (architecture "ortho_contrastive") as that standard SAE.
    SAE_CLASS_REGISTRY.pop(ARCHITECTURE, None)
    register_sae_class(ARCHITECTURE, OrthoContrastiveSAE, OrthoContrastiveSAEConfig)
    _install_budget_hook(
        LanguageModelSAERunnerConfig,
        lambda cfg: (
            cfg.total_training_steps,
            cfg.train_batch_size_tokens,
            f"training_tokens={cfg.training_tokens} // "
            f"train_batch_size_tokens={cfg.train_batch_size_tokens}",
        ),
    )
    _install_budget_hook(
        SyntheticSAERunnerConfig,
        lambda cfg: (
            cfg.total_training_steps,
            cfg.batch_size,
            f"training_samples={cfg.training_samples} // batch_size={cfg.batch_size}",
        ),
    )


def _install_budget_hook(
    config_cls: type, budget: Callable[[Any], tuple[int, int, str]]
) -> None:
    original = config_cls.__post_init__
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def __post_init__(self: Any) -> None:
        original(self)
        bind = getattr(self.sae, "bind_to_training_run", None)
        if callable(bind):
            bind(*budget(self))

    setattr(__post_init__, _HOOK_MARK, True)
    config_cls.__post_init__ = __post_init__
