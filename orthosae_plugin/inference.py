"""``ortho_contrastive`` training checkpoints opened for inference.

The artifact that ``save_inference_model`` (and SAELens's runner) writes is the base's
plain SAELens inference form (``standard``, ``topk`` or ``jumprelu``), which SAELens,
SAEBench and Neuronpedia load without this plugin. A training checkpoint keeps the
architecture ``ortho_contrastive``; the classes here let ``SAE.load_from_disk`` open it
in its base's inference form, without the training-only buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.jumprelu_sae import JumpReLUSAE
from sae_lens.saes.sae import SAE, SAEConfig
from sae_lens.saes.standard_sae import StandardSAE
from sae_lens.saes.topk_sae import TopKSAE, _fold_norm_topk
from typing_extensions import override

from orthosae_plugin.bases import SparsityBase, check_sparsity_base
from orthosae_plugin.config import ARCHITECTURE

# State-dict keys that exist only for training and are dropped from the inference model.
TRAINING_ONLY_BUFFERS = ("projection", "n_steps_trained")


@dataclass
class OrthoContrastiveSAEConfig(SAEConfig):
    """Config of an ``ortho_contrastive`` training checkpoint opened for inference with
    ``SAE.load_from_disk``, in the inference form of its base. The plugin-free artifact
    is the one ``save_inference_model`` (and SAELens's runner) writes.
    """

    sparsity_base: SparsityBase = "relu_l1"
    """The training base, which picks the inference form: 'relu_l1' opens as a
    ``standard`` SAE, 'topk' as ``topk``, 'batchtopk' and 'matryoshka_batchtopk' as
    ``jumprelu``. Checkpoints written before the field existed are 'relu_l1'."""

    k: float = 100
    """topk only: active latents per input (read by SAELens's ``TopKSAE``)."""

    rescale_acts_by_decoder_norm: bool = True
    """topk / batchtopk only: whether the checkpoint's latents are selected by
    pre-activation x decoder-row norm (folded into the weights for ``jumprelu``)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        check_sparsity_base(self.sparsity_base)
        if self.sparsity_base == "topk":
            self.k = int(self.k)  # TopK needs an int (a JSON round trip may give 4.0)
        super().__post_init__()


class OrthoContrastiveSAE(SAE[OrthoContrastiveSAEConfig]):
    """A training checkpoint opened for inference, without the training-only buffers.

    Like the training class, ``OrthoContrastiveSAE(cfg)`` returns the subclass for
    ``cfg.sparsity_base``: ``OrthoContrastiveStandardSAE`` (SAELens ``StandardSAE``),
    ``OrthoContrastiveTopKSAE`` (``TopKSAE``) or ``OrthoContrastiveJumpReLUSAE``
    (``JumpReLUSAE``).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> OrthoContrastiveSAE:
        return super().__new__(class_for_base(cls, OrthoContrastiveSAE, _INFERENCE_CLASS_PER_BASE, args, kwargs))

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        for key in TRAINING_ONLY_BUFFERS:
            state_dict.pop(key, None)


class OrthoContrastiveStandardSAE(OrthoContrastiveSAE, StandardSAE):  # type: ignore[misc]
    """A relu_l1 training checkpoint opened as SAELens ``standard``."""


class OrthoContrastiveTopKSAE(OrthoContrastiveSAE, TopKSAE):  # type: ignore[misc]
    """A topk training checkpoint opened as SAELens ``topk`` (same encoder as training)."""


class OrthoContrastiveJumpReLUSAE(OrthoContrastiveSAE, JumpReLUSAE):  # type: ignore[misc]
    """A batchtopk or matryoshka_batchtopk training checkpoint opened as SAELens
    ``jumprelu``: its running threshold becomes every latent's JumpReLU threshold, as
    SAELens's BatchTopK does when it saves
    (``BatchTopKTrainingSAE.process_state_dict_for_saving_inference``)."""

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        if "topk_threshold" not in state_dict:
            return  # already in JumpReLU form
        topk_threshold = state_dict.pop("topk_threshold").item()
        if self.cfg.rescale_acts_by_decoder_norm:
            W_dec_DS = state_dict["W_dec"]  # (d_sae, d_in)
            _fold_norm_topk(
                W_dec_norm=W_dec_DS.norm(dim=-1),
                W_enc=state_dict["W_enc"],
                b_enc=state_dict["b_enc"],
                W_dec=W_dec_DS,
            )
        state_dict["threshold"] = torch.ones_like(state_dict["b_enc"]) * topk_threshold


_INFERENCE_CLASS_PER_BASE: dict[str, type[OrthoContrastiveSAE]] = {
    "relu_l1": OrthoContrastiveStandardSAE,
    "topk": OrthoContrastiveTopKSAE,
    "batchtopk": OrthoContrastiveJumpReLUSAE,
    "matryoshka_batchtopk": OrthoContrastiveJumpReLUSAE,
}


def class_for_base(
    cls: type, root: type, per_base: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> type:
    """The class that ``root(cfg, ...)`` instantiates: ``per_base[cfg.sparsity_base]``.
    A concrete subclass is kept as it is (``copy.deepcopy`` calls ``cls.__new__(cls)`` on
    it, with no config)."""
    if cls is not root:
        return cls
    cfg = args[0] if args else kwargs["cfg"]
    return per_base[cfg.sparsity_base]  # type: ignore[no-any-return]
