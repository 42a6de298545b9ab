"""The ``ortho_contrastive`` SAE architecture for SAELens: the names to import.

A sparse autoencoder on one of SAELens's sparsity bases (``sparsity_base``: ReLU + L1
``standard``, the default; ``topk``; ``batchtopk``; ``matryoshka_batchtopk``), trained with
an annealed decoder-orthogonality penalty (``ortho_loss``) and a projected
self-contrastive loss (``contrastive_loss``); saved as the base's plain SAELens inference
form. The method is described in docs/method.md. The code, by concept:

- ``config.py``: the training config, each field documented, with its rules
  (``bases.py``: the sparsity bases and the rules of their fields);
- ``run_budget.py``: the run's budget and the anneal horizon, and the SAELens hooks that
  see them;
- ``ortho_term.py``: the orthogonality term as an object (threshold schedule, modes,
  lazy schedule, the close-pair list, the Matryoshka pair scope), on the kernels of
  ``orthogonality.py``; the contrastive kernel is ``contrastive.py``;
- ``training.py``: the training SAE and its class per base;
- ``inference.py``: training checkpoints opened for inference;
- ``checkpoints.py``: checkpoints written whole, and what a resume refuses (with
  ``saving.py``, the folder writer); ``early_checks.py``: sizes and the hook's width,
  checked before a run spends time;
- ``registration.py``: the registration with SAELens (done on ``import orthosae_plugin``).
"""

from orthosae_plugin.config import (
    ARCHITECTURE,
    SPARSITY_BASES,
    OrthoContrastiveTrainingSAEConfig,
    SparsityBase,
)
from orthosae_plugin.inference import (
    OrthoContrastiveJumpReLUSAE,
    OrthoContrastiveSAE,
    OrthoContrastiveSAEConfig,
    OrthoContrastiveStandardSAE,
    OrthoContrastiveTopKSAE,
)
from orthosae_plugin.ortho_term import ClosePairList, MatryoshkaPairScope, OrthogonalityTerm
from orthosae_plugin.orthogonality import matryoshka_ortho_penalty
from orthosae_plugin.training import (
    OrthoContrastiveBatchTopKTrainingSAE,
    OrthoContrastiveMatryoshkaBatchTopKTrainingSAE,
    OrthoContrastiveReLUL1TrainingSAE,
    OrthoContrastiveTopKTrainingSAE,
    OrthoContrastiveTrainingSAE,
)

__all__ = [
    "ARCHITECTURE",
    "SPARSITY_BASES",
    "ClosePairList",
    "MatryoshkaPairScope",
    "OrthoContrastiveBatchTopKTrainingSAE",
    "OrthoContrastiveJumpReLUSAE",
    "OrthoContrastiveMatryoshkaBatchTopKTrainingSAE",
    "OrthoContrastiveReLUL1TrainingSAE",
    "OrthoContrastiveSAE",
    "OrthoContrastiveSAEConfig",
    "OrthoContrastiveStandardSAE",
    "OrthoContrastiveTopKSAE",
    "OrthoContrastiveTopKTrainingSAE",
    "OrthoContrastiveTrainingSAE",
    "OrthoContrastiveTrainingSAEConfig",
    "OrthogonalityTerm",
    "SparsityBase",
    "matryoshka_ortho_penalty",
]
