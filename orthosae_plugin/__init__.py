"""orthosae-plugin: the ``ortho_contrastive`` SAE architecture for SAELens.

Importing this package registers ``ortho_contrastive`` with SAELens (idempotently), so
that SAELens's configs, runners and command line accept it by name.
"""

from orthosae_plugin.ortho_contrastive import (
    ARCHITECTURE,
    SPARSITY_BASES,
    OrthoContrastiveBatchTopKTrainingSAE,
    OrthoContrastiveJumpReLUSAE,
    OrthoContrastiveMatryoshkaBatchTopKTrainingSAE,
    OrthoContrastiveReLUL1TrainingSAE,
    OrthoContrastiveSAE,
    OrthoContrastiveSAEConfig,
    OrthoContrastiveStandardSAE,
    OrthoContrastiveTopKSAE,
    OrthoContrastiveTopKTrainingSAE,
    OrthoContrastiveTrainingSAE,
    OrthoContrastiveTrainingSAEConfig,
)
from orthosae_plugin.registration import register

register()

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURE",
    "SPARSITY_BASES",
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
    "register",
]
