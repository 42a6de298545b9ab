"""The ``ortho_contrastive`` SAE: a sparse autoencoder on one of SAELens's sparsity bases
(``sparsity_base``: ReLU + L1 ``standard``, the experiment's and the default; ``topk``;
``batchtopk``; ``matryoshka_batchtopk``), trained with

(a) a decoder-orthogonality penalty on pairs whose |cos| exceeds a threshold that is
    cosine-annealed from ``ortho_threshold_start`` to ``ortho_threshold_end`` over
    ``ortho_anneal_steps`` (default: the run's real number of training steps), and
(b) a self-contrastive InfoNCE loss on reconstructions whose similarities go through a
    fixed random projection (``projection_dim = 128``; ``None`` = exact cosines, the
    experiment's SS-COSAE baseline), its weight warmed up linearly from 0 to
    ``contrastive_coefficient`` over ``contrastive_warm_up_steps`` by SAELens's own
    coefficient scheduler.

The two terms, their schedules and the guards live in ``OrthoContrastiveTrainingSAE``;
the base is SAELens's own class (``StandardTrainingSAE``, ``TopKTrainingSAE``,
``BatchTopKTrainingSAE``, ``MatryoshkaBatchTopKTrainingSAE``), so its encoder, auxiliary dead-latent loss, batch threshold
and save-time conversion are SAELens's code, not a copy. ``OrthoContrastiveTrainingSAE(cfg)``
builds the class for ``cfg.sparsity_base``, so SAELens's ``sae_cls(cfg)`` works unchanged.

Both terms only shape training: the saved inference model is the base's plain SAELens
inference form (``standard``, ``topk``, or ``jumprelu`` for BatchTopK), which SAELens,
SAEBench and Neuronpedia load without this plugin. See DESIGN.md §1.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors.torch import save_file
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.standard_sae import (
    StandardSAE,
    StandardSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
)
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, _fold_norm_topk
from typing_extensions import override

from orthosae_plugin.contrastive import make_projection, self_contrastive_loss
from orthosae_plugin.orthogonality import (
    ORTHO_MODES,
    close_pair_scan,
    decoder_pair_stats,
    ortho_penalty_chunked,
    ortho_penalty_exact,
    ortho_penalty_pairs,
    ortho_threshold,
    thresholded_cosine_squared_sum,
)

ARCHITECTURE = "ortho_contrastive"

# State-dict keys that exist only for training and are dropped from the inference model.
_TRAINING_ONLY_BUFFERS = ("projection", "n_steps_trained")

SparsityBase = Literal["relu_l1", "topk", "batchtopk", "matryoshka_batchtopk"]
SPARSITY_BASES: tuple[str, ...] = ("relu_l1", "topk", "batchtopk", "matryoshka_batchtopk")

# The inference config each base saves as: SAELens's own choice for its `standard`,
# `topk` and `batchtopk` training classes.
_INFERENCE_CONFIG_PER_BASE: dict[str, type[SAEConfig]] = {
    "relu_l1": StandardSAEConfig,
    "topk": TopKSAEConfig,
    "batchtopk": JumpReLUSAEConfig,
    "matryoshka_batchtopk": JumpReLUSAEConfig,
}

# Fields that only some bases read. Under any other base they must keep their default,
# so that e.g. `k=4` without `sparsity_base="topk"` is refused rather than silently
# training a ReLU + L1 SAE.
_BASES_READING_FIELD: dict[str, tuple[str, ...]] = {
    "l1_coefficient": ("relu_l1",),
    "lp_norm": ("relu_l1",),
    "l1_warm_up_steps": ("relu_l1",),
    "k": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "aux_loss_coefficient": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "rescale_acts_by_decoder_norm": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "use_sparse_activations": ("topk",),
    "topk_threshold_lr": ("batchtopk", "matryoshka_batchtopk"),
}
# matryoshka_batchtopk's own fields (``matryoshka_widths`` has no plain default) are
# checked by ``_validate_matryoshka_fields``.
_BATCH_THRESHOLD_BASES = ("batchtopk", "matryoshka_batchtopk")


@dataclass
class OrthoContrastiveTrainingSAEConfig(StandardTrainingSAEConfig):
    """Training config of the ``ortho_contrastive`` SAE.

    ``sparsity_base`` picks SAELens's base; the base's own fields carry SAELens's names
    and defaults (``l1_*``/``lp_norm`` from ``StandardTrainingSAEConfig``; ``k``,
    ``aux_loss_coefficient``, ``rescale_acts_by_decoder_norm``, ``use_sparse_activations``
    from ``TopKTrainingSAEConfig``; ``topk_threshold_lr`` from
    ``BatchTopKTrainingSAEConfig``; ``matryoshka_widths``, ``use_matryoshka_aux_loss`` from
    ``MatryoshkaBatchTopKTrainingSAEConfig``). A field that the chosen base does not read
    must keep its default. With ``ortho_coefficient = contrastive_coefficient = 0`` it
    trains exactly like SAELens's ``standard``, ``topk``, ``batchtopk`` or
    ``matryoshka_batchtopk``.
    """

    sparsity_base: SparsityBase = "relu_l1"
    """'relu_l1': ReLU + L1 penalty (SAELens ``standard``; the experiment's base), saved
    as ``standard``. 'topk': the k largest pre-activations per input (SAELens ``topk``),
    saved as ``topk``. 'batchtopk': the k x batch largest over the whole batch (SAELens
    ``batchtopk``), saved as ``jumprelu`` with the threshold learnt during training.
    'matryoshka_batchtopk': BatchTopK with nested prefix reconstruction losses (SAELens
    ``matryoshka_batchtopk``; set ``matryoshka_widths``), saved as ``jumprelu``."""

    l1_coefficient: float = 1.0
    """relu_l1 only: final weight of the decoder-norm-weighted L1 penalty (>= 0)."""

    lp_norm: float = 1.0
    """relu_l1 only: p of the sparsity penalty's p-norm (SAELens ``standard``)."""

    l1_warm_up_steps: int = 0
    """relu_l1 only: steps over which SAELens ramps the L1 weight linearly from 0."""

    k: float = 100
    """topk / batchtopk only: active latents per input; an integer for 'topk', the
    average over the batch (may be fractional) for 'batchtopk'; 0 < k <= d_sae."""

    aux_loss_coefficient: float = 1.0
    """topk / batchtopk only: weight of SAELens's auxiliary dead-latent loss
    (``auxiliary_reconstruction_loss``, >= 0). SAELens reads it from the config, so it is
    neither warmed up nor logged as a coefficient, exactly as in ``topk``."""

    rescale_acts_by_decoder_norm: bool = True
    """topk / batchtopk only: select latents by pre-activation x decoder-row norm, as if
    the decoder were unit-norm (SAELens's default); folded into the saved weights."""

    use_sparse_activations: bool = False
    """topk only: SAELens's sparse COO activations and sparse decode (memory knob)."""

    topk_threshold_lr: float = 0.01
    """batchtopk only: rate of the running mean of the smallest active pre-activation,
    the JumpReLU threshold of the saved model; in (0, 1]."""

    matryoshka_widths: list[int] = field(default_factory=list)
    """matryoshka_batchtopk only, and required there: widths of the nested prefixes of
    the dictionary (SAELens ``matryoshka_batchtopk``), strictly increasing, ending at
    d_sae (SAELens appends d_sae, with a warning, when the last width is smaller). Each
    prefix but the whole dictionary adds the loss ``inner_mse_loss_{width}``: the
    reconstruction from latents ``[0, width)`` alone."""

    use_matryoshka_aux_loss: bool = False
    """matryoshka_batchtopk only: each prefix group's dead latents reconstruct the error
    of their own level rather than the whole SAE's (SAELens's option; slower)."""

    matryoshka_ortho_pairs: Literal["all", "within_groups", "across_groups"] = "all"
    """matryoshka_batchtopk only: which decoder pairs the ortho term penalises. 'all'
    (default): every pair of the dictionary, as on the other bases. 'within_groups': only
    pairs of latents added by the same prefix level (``[w_{i-1}, w_i)``); 'across_groups':
    only pairs from different levels. The mean is still over all d_sae (d_sae - 1)
    ordered pairs (pairs out of scope count 0), so ``ortho_coefficient`` keeps its scale.
    The ground-truth benchmark chose the default (README, "Matryoshka base: which
    pairs"). 'exact' and 'close_pairs' mode compute the restricted scopes as they compute
    'all' (blockwise; from the close-pair list, keeping the pairs in scope); 'chunked'
    mode refuses them."""

    ortho_coefficient: float = 1000.0
    """Weight of the thresholded decoder-orthogonality penalty (>= 0; 0 turns it off)."""

    ortho_threshold_start: float = 0.3
    """|cos| above which decoder pairs are penalised at step 0, in [0, 1]."""

    ortho_threshold_end: float = 0.05
    """Threshold at the end of the anneal, in [0, 1] and <= ortho_threshold_start."""

    ortho_anneal_steps: int | None = None
    """Steps over which the threshold is cosine-annealed. None: filled in by SAELens's
    runner config with the run's real number of training steps
    (training_tokens // train_batch_size_tokens)."""

    ortho_mode: Literal["exact", "chunked", "close_pairs"] = "close_pairs"
    """'close_pairs' (default): the exact loss at a cost proportional to the number of
    close pairs: every ortho_rescan_every steps a blockwise scan lists the pairs whose
    |cos| exceeds the threshold minus ortho_margin, and in between only those pairs are
    computed. It equals 'exact' as long as no unlisted pair's |cos| rises by more than
    ortho_margin between two scans; while the list would hold more than
    ortho_max_pair_fraction of all pairs, the step computes the exact term instead.
    'exact': all pairs every step, blockwise, O(ortho_block_size * d_sae) memory in
    forward and backward (about doubles a step's cost at d_sae = 4096, batch 2048).
    'chunked': OrtSAE-style, only pairs inside random chunks of ortho_chunk_size
    latents, a new permutation every step (cost linear in d_sae)."""

    ortho_block_size: int = 1024
    """Rows of the cosine matrix computed at a time (memory knob; does not change the loss)."""

    ortho_chunk_size: int = 4096
    """Latents per chunk in 'chunked' mode (>= 2); changes which pairs are penalised."""

    ortho_margin: float = 0.05
    """'close_pairs': how far below the threshold a pair's |cos| may lie and still be
    listed, in [0, 1]. Larger: longer lists, safer against pairs that move between scans
    (benchmarks/results/speed measures the loss against 'exact' along a training run)."""

    ortho_rescan_every: int = 10
    """'close_pairs': steps between two scans of all pairs (>= 1; 1 scans every step)."""

    ortho_max_pair_fraction: float = 0.05
    """'close_pairs': largest share of the d_sae (d_sae - 1) ordered pairs the list may
    hold, in (0, 1]. Above it the step computes the exact blockwise term instead (the
    same loss; dense kernels are then the faster way, and the list is never built)."""

    contrastive_coefficient: float = 0.3
    """Final weight of the self-contrastive loss (>= 0; 0 turns it off)."""

    contrastive_warm_up_steps: int = 1000
    """Steps over which SAELens ramps the contrastive weight linearly from 0 (>= 0)."""

    projection_dim: int | None = 128
    """k of the fixed Gaussian projection of the similarities (>= 1). None: exact cosine
    similarities in d_in dimensions (the SS-COSAE baseline)."""

    contrastive_temperature: float = 0.1
    """InfoNCE temperature dividing the cosine similarities (> 0)."""

    projection_seed: int = 0
    """Seed of the projection matrix and of the chunk permutations."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        _validate(self)
        _validate_sparsity_base(self)
        _validate_matryoshka_fields(self)
        if self.sparsity_base == "topk":
            self.k = int(self.k)  # torch.topk and the saved `topk` config need an int
        super().__post_init__()

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return _INFERENCE_CONFIG_PER_BASE[self.sparsity_base]

    def bind_to_training_run(
        self, total_training_steps: int, train_batch_size: int, arithmetic: str
    ) -> None:
        """Check the run's budget and fill ``ortho_anneal_steps`` from it.

        Called by SAELens's runner configs at construction (see ``registration.py``),
        before any model is loaded. ``arithmetic`` spells out how the step count was
        reached, for the error message.
        """
        if total_training_steps < 1:
            raise ValueError(
                f"ortho_contrastive: {arithmetic} = {total_training_steps} training steps, "
                "so nothing would be trained. Raise the token budget to at least one "
                "batch, or lower the batch size."
            )
        if self.contrastive_coefficient > 0 and total_training_steps < self.contrastive_warm_up_steps:
            raise ValueError(
                f"ortho_contrastive: {arithmetic} = {total_training_steps} training steps, "
                f"fewer than contrastive_warm_up_steps={self.contrastive_warm_up_steps}, so "
                f"the contrastive weight would never reach contrastive_coefficient="
                f"{self.contrastive_coefficient}. Raise the token budget to at least "
                f"{self.contrastive_warm_up_steps * train_batch_size} "
                f"({self.contrastive_warm_up_steps} steps of {train_batch_size}), or lower "
                "contrastive_warm_up_steps."
            )
        if self.contrastive_coefficient > 0 and train_batch_size < 2:
            raise ValueError(
                f"ortho_contrastive: train batch size={train_batch_size} is invalid with "
                "contrastive_coefficient > 0: the self-contrastive loss needs >= 2 inputs "
                "per batch."
            )
        if self.sparsity_base in _BATCH_THRESHOLD_BASES:
            _check_threshold_settles(
                self.topk_threshold_lr, total_training_steps, arithmetic, self.sparsity_base
            )
        if self.ortho_anneal_steps is None:
            self.ortho_anneal_steps = total_training_steps
            self.add_training_info_to_metadata()


def _validate(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    """Raise a ValueError naming the field, the value and what is allowed."""

    def bad(field: str, value: Any, allowed: str) -> ValueError:
        return ValueError(f"{field}={value!r} is invalid: {allowed}")

    for field in ("ortho_threshold_start", "ortho_threshold_end"):
        value = getattr(cfg, field)
        if not 0.0 <= value <= 1.0:
            raise bad(field, value, "a |cosine| threshold must lie in [0, 1]")
    if cfg.ortho_threshold_start < cfg.ortho_threshold_end:
        raise bad(
            "ortho_threshold_start",
            cfg.ortho_threshold_start,
            f"it must be >= ortho_threshold_end={cfg.ortho_threshold_end} "
            "(the threshold anneals downwards)",
        )
    for field in ("ortho_coefficient", "contrastive_coefficient", "l1_coefficient"):
        value = getattr(cfg, field)
        if not value >= 0:  # also rejects NaN
            raise bad(field, value, "a loss coefficient must be >= 0")
    if cfg.ortho_mode not in ORTHO_MODES:
        raise bad("ortho_mode", cfg.ortho_mode, f"allowed modes are {', '.join(ORTHO_MODES)}")
    if cfg.ortho_block_size < 1:
        raise bad("ortho_block_size", cfg.ortho_block_size, "it must be >= 1")
    if cfg.ortho_chunk_size < 2:
        raise bad("ortho_chunk_size", cfg.ortho_chunk_size, "a chunk needs >= 2 latents to hold a pair")
    if not 0.0 <= cfg.ortho_margin <= 1.0:
        raise bad("ortho_margin", cfg.ortho_margin, "a |cosine| margin must lie in [0, 1]")
    if cfg.ortho_rescan_every < 1:
        raise bad("ortho_rescan_every", cfg.ortho_rescan_every, "it must be >= 1 step")
    if not 0.0 < cfg.ortho_max_pair_fraction <= 1.0:
        raise bad("ortho_max_pair_fraction", cfg.ortho_max_pair_fraction, "a share of pairs must lie in (0, 1]")
    if cfg.ortho_anneal_steps is not None and cfg.ortho_anneal_steps < 1:
        raise bad("ortho_anneal_steps", cfg.ortho_anneal_steps, "it must be >= 1, or None to use the run's total steps")
    if cfg.contrastive_warm_up_steps < 0:
        raise bad("contrastive_warm_up_steps", cfg.contrastive_warm_up_steps, "it must be >= 0")
    if cfg.projection_dim is not None and cfg.projection_dim < 1:
        raise bad("projection_dim", cfg.projection_dim, "it must be >= 1, or None for exact similarities")
    if not cfg.contrastive_temperature > 0:
        raise bad("contrastive_temperature", cfg.contrastive_temperature, "it must be > 0")


def _validate_sparsity_base(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    """Raise a ValueError naming the field, the value and what is allowed, for the
    sparsity base and the fields of the bases (those ``_validate`` does not check)."""
    base = cfg.sparsity_base
    _check_sparsity_base(base)
    defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
    for field, bases in _BASES_READING_FIELD.items():
        value = getattr(cfg, field)
        if base not in bases and value != defaults[field]:
            raise _invalid(
                field,
                value,
                f"only sparsity_base={' or '.join(map(repr, bases))} reads it, and "
                f"sparsity_base={base!r}; set sparsity_base, or leave {field} at its "
                f"default {defaults[field]!r}",
            )
    if base == "relu_l1":
        return
    if not 0 < cfg.k <= cfg.d_sae:
        raise _invalid("k", cfg.k, f"it must satisfy 0 < k <= d_sae={cfg.d_sae}")
    if base == "topk" and cfg.k != int(cfg.k):
        raise _invalid("k", cfg.k, "sparsity_base='topk' keeps a whole number of latents per input")
    if not cfg.aux_loss_coefficient >= 0:  # also rejects NaN
        raise _invalid("aux_loss_coefficient", cfg.aux_loss_coefficient, "a loss coefficient must be >= 0")
    if not 0 < cfg.topk_threshold_lr <= 1:
        raise _invalid("topk_threshold_lr", cfg.topk_threshold_lr, "it must lie in (0, 1]")
    if cfg.aux_loss_coefficient > 0 and cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        # SAELens raises this only once a latent dies, possibly hours into the run.
        raise _invalid(
            "normalize_activations",
            cfg.normalize_activations,
            f"SAELens's TopK auxiliary loss (sparsity_base={base!r}, aux_loss_coefficient="
            f"{cfg.aux_loss_coefficient}) does not support it; use 'none', "
            "'expected_average_only_in' or 'covariance_whitening', or aux_loss_coefficient=0",
        )


def _validate_matryoshka_fields(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    """Raise a ValueError naming the field, the value and what is allowed, for the
    fields only ``sparsity_base='matryoshka_batchtopk'`` reads. SAELens checks the widths
    only when it builds the SAE; here they are checked with the config."""
    base = cfg.sparsity_base
    own = {"matryoshka_widths": [], "use_matryoshka_aux_loss": False, "matryoshka_ortho_pairs": "all"}
    if base != "matryoshka_batchtopk":
        for name, default in own.items():
            value = getattr(cfg, name)
            if value != default:
                raise _invalid(
                    name,
                    value,
                    "only sparsity_base='matryoshka_batchtopk' reads it, and "
                    f"sparsity_base={base!r}; set sparsity_base, or leave {name} at its "
                    f"default {default!r}",
                )
        return
    widths = cfg.matryoshka_widths
    if not widths:
        raise _invalid(
            "matryoshka_widths", widths,
            "sparsity_base='matryoshka_batchtopk' needs the nested prefix widths, e.g. "
            f"[{cfg.d_sae // 8}, {cfg.d_sae // 4}, {cfg.d_sae // 2}, {cfg.d_sae}]",
        )
    if any(not isinstance(w, int) or isinstance(w, bool) or w <= 0 for w in widths):
        raise _invalid("matryoshka_widths", widths, "the widths must be positive integers")
    if any(a >= b for a, b in zip(widths, widths[1:])) or widths[-1] > cfg.d_sae:
        raise _invalid(
            "matryoshka_widths", widths,
            f"the widths must be strictly increasing and at most d_sae={cfg.d_sae}",
        )
    pairs = cfg.matryoshka_ortho_pairs
    if pairs not in ("all", "within_groups", "across_groups"):
        raise _invalid("matryoshka_ortho_pairs", pairs, "allowed values are all, within_groups, across_groups")
    if pairs != "all" and cfg.ortho_mode == "chunked":
        raise _invalid(
            "matryoshka_ortho_pairs", pairs,
            "ortho_mode='chunked' penalises random chunks of the whole dictionary; use "
            "'exact' or 'close_pairs', or matryoshka_ortho_pairs='all'",
        )


def _check_sparsity_base(base: str) -> None:
    if base not in SPARSITY_BASES:
        raise _invalid("sparsity_base", base, f"allowed bases are {', '.join(SPARSITY_BASES)}")


def _invalid(field: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{field}={value!r} is invalid: {allowed}")


# Largest weight that BatchTopK's running threshold may still give its zero start at the
# end of a run (it is the JumpReLU threshold of the saved model).
_MAX_THRESHOLD_START_WEIGHT = 0.05


def _check_threshold_settles(
    lr: float, total_training_steps: int, arithmetic: str, base: str = "batchtopk"
) -> None:
    """Refuse a BatchTopK run too short for its running threshold to leave its start.

    SAELens starts ``topk_threshold`` at 0 and moves it by ``lr`` of the way to each
    batch's smallest active pre-activation, so after ``N`` steps the zero start still
    weighs ``(1 - lr)^N``. A saved JumpReLU with a threshold pulled towards 0 fires far
    more latents than training did (L0 49 instead of 8 after 60 steps at lr 0.01 on the
    toy model), and nothing else would say so.
    """
    start_weight = (1 - lr) ** total_training_steps
    if start_weight <= _MAX_THRESHOLD_START_WEIGHT:
        return
    steps_needed = math.ceil(math.log(_MAX_THRESHOLD_START_WEIGHT) / math.log(1 - lr))
    lr_needed = 1 - _MAX_THRESHOLD_START_WEIGHT ** (1 / total_training_steps)
    raise ValueError(
        f"ortho_contrastive: {arithmetic} = {total_training_steps} training steps is too "
        f"few for sparsity_base={base!r} at topk_threshold_lr={lr}: the saved JumpReLU "
        f"threshold would still carry (1 - {lr})^{total_training_steps} = "
        f"{start_weight:.2f} of its zero start (at most {_MAX_THRESHOLD_START_WEIGHT} "
        f"allowed), so the saved SAE would fire far more latents than k. Train for at "
        f"least {steps_needed} steps, or raise topk_threshold_lr to at least {lr_needed:.3g}."
    )


class OrthoContrastiveTrainingSAE(TrainingSAE[OrthoContrastiveTrainingSAEConfig]):
    """A SAELens sparsity base plus the ``ortho_loss`` and ``contrastive_loss`` terms.

    ``OrthoContrastiveTrainingSAE(cfg)`` returns an instance of the subclass for
    ``cfg.sparsity_base``, which combines this class with SAELens's own training class:
    ``OrthoContrastiveReLUL1TrainingSAE`` (``StandardTrainingSAE``),
    ``OrthoContrastiveTopKTrainingSAE`` (``TopKTrainingSAE``),
    ``OrthoContrastiveBatchTopKTrainingSAE`` (``BatchTopKTrainingSAE``) or
    ``OrthoContrastiveMatryoshkaBatchTopKTrainingSAE`` (``MatryoshkaBatchTopKTrainingSAE``). This class
    holds what all bases share and defers everything else to the base through
    ``super()``: the encoder, the base's own losses and coefficients, its state updates
    and its conversion for saving.

    Buffers (saved in training checkpoints, dropped from the inference model):
    ``projection`` ``(d_in, k)`` when ``projection_dim`` is set, and ``n_steps_trained``,
    the clock of the threshold schedule and of the chunk permutations, written to the
    inference model's metadata as ``training_steps``. In 'close_pairs' mode, two
    non-persistent buffers hold the close-pair list, ``ortho_close_pairs`` ``(P, 2)``
    (None until a scan, or while the list would be over-full), and ``ortho_scan_step``,
    the step of the last scan (-1: none). A checkpoint does not carry them: the first
    step after construction, resume or ``load_state_dict`` scans again.

    Why a clock of its own rather than ``step_input.n_training_steps``: SAELens writes a
    checkpoint after a step's optimizer and coefficient-scheduler updates but before it
    increments ``n_training_steps``, so after a resume its counter is one behind the
    batches actually trained (and behind its own coefficient schedulers). This buffer
    counts the steps taken and travels with the weights, so a resumed run continues the
    threshold schedule exactly where the interrupted one stopped.
    """

    cfg: OrthoContrastiveTrainingSAEConfig  # type: ignore[assignment]
    projection: torch.Tensor | None
    n_steps_trained: torch.Tensor
    ortho_close_pairs: torch.Tensor | None
    ortho_scan_step: torch.Tensor

    _state_updated_by_base_step: ClassVar[tuple[str, ...]] = ()
    """Buffers that the base's own ``training_forward_pass`` updates (BatchTopK's
    threshold); put back as they were when a step is refused for a non-finite loss."""

    def __new__(cls, *args: Any, **kwargs: Any) -> OrthoContrastiveTrainingSAE:
        return super().__new__(_class_for_base(cls, OrthoContrastiveTrainingSAE, args, kwargs))

    def __init__(self, cfg: OrthoContrastiveTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        projection = None
        if self.cfg.projection_dim is not None:
            projection = make_projection(
                self.cfg.d_in,
                self.cfg.projection_dim,
                self.cfg.projection_seed,
                dtype=self.dtype,
                device=self.device,
            )
        self.register_buffer("projection", projection)
        self.register_buffer(
            "n_steps_trained", torch.zeros((), dtype=torch.long, device=self.device)
        )
        self.register_buffer("ortho_close_pairs", None, persistent=False)
        self.register_buffer(
            "ortho_scan_step", torch.full((), -1, dtype=torch.long, device=self.device), persistent=False
        )
        self.register_load_state_dict_post_hook(_forget_close_pairs)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            **super().get_coefficients(),
            "ortho": TrainCoefficientConfig(value=self.cfg.ortho_coefficient, warm_up_steps=0),
            "contrastive": TrainCoefficientConfig(
                value=self.cfg.contrastive_coefficient,
                warm_up_steps=self.cfg.contrastive_warm_up_steps,
            ),
        }

    def ortho_threshold_at(self, step: int) -> float:
        """The annealed threshold tau at training step ``step``."""
        if self.cfg.ortho_anneal_steps is None:
            raise ValueError(
                "ortho_anneal_steps=None: the anneal horizon is unknown. Set it in the "
                "config, or train through SAELens's LanguageModelSAETrainingRunner or "
                "SyntheticSAERunner, whose configs fill it from the token budget."
            )
        return ortho_threshold(
            step,
            self.cfg.ortho_threshold_start,
            self.cfg.ortho_threshold_end,
            self.cfg.ortho_anneal_steps,
        )

    def current_step(self) -> int:
        """Training steps completed before the current one (the schedule clock)."""
        return int(self.n_steps_trained.item())

    def unit_decoder(self) -> torch.Tensor:
        """``W_dec`` with unit-norm rows, ``(d_sae, d_in)``."""
        return self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        losses = super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)
        zero = sae_out.new_zeros(())

        ortho_weight = step_input.coefficients["ortho"]
        ortho_loss = zero
        if ortho_weight > 0:
            step = self.current_step()
            ortho_loss = ortho_weight * self._ortho_penalty(self.ortho_threshold_at(step), step)

        contrastive_weight = step_input.coefficients["contrastive"]
        contrastive_loss = zero
        if contrastive_weight > 0:
            contrastive_loss = contrastive_weight * self_contrastive_loss(
                step_input.sae_in,
                sae_out,
                temperature=self.cfg.contrastive_temperature,
                projection_DK=self.projection,
            )
        return {**losses, "ortho_loss": ortho_loss, "contrastive_loss": contrastive_loss}

    def _ortho_penalty(self, tau: float, step: int) -> torch.Tensor:
        D_nd = self.unit_decoder()
        if self.cfg.ortho_mode == "close_pairs":
            pairs_P2 = self._close_pairs_at(step, D_nd.detach())
            if pairs_P2 is not None:
                return ortho_penalty_pairs(D_nd, tau, pairs_P2)
            # Too many close pairs for a list: the same loss, computed densely.
        if self.cfg.ortho_mode != "chunked":
            return ortho_penalty_exact(D_nd, tau, self.cfg.ortho_block_size)
        # A permutation that depends only on (seed, step), so a resumed run draws the same ones.
        generator = torch.Generator(device="cpu").manual_seed(
            self.cfg.projection_seed * 1_000_003 + step
        )
        return ortho_penalty_chunked(
            D_nd, tau, self.cfg.ortho_chunk_size, generator, self.cfg.ortho_block_size
        )

    def _close_pairs_at(self, step: int, D_nd: torch.Tensor) -> torch.Tensor | None:
        """The close-pair list serving ``step``; None while it would be over-full.

        Scans when no scan serves ``step``: after construction or a state-dict load, and
        on the schedule of :meth:`_next_scan_after`. A list serves the steps up to the
        next scheduled one, so it holds the pairs above the lowest threshold of those
        steps minus ``ortho_margin`` (the threshold only decreases).
        """
        scan_step = int(self.ortho_scan_step.item())
        if not 0 <= scan_step <= step < self._next_scan_after(scan_step):
            n = D_nd.shape[0]
            self.ortho_close_pairs = close_pair_scan(
                D_nd,
                self.ortho_threshold_at(self._next_scan_after(step) - 1) - self.cfg.ortho_margin,
                self.cfg.ortho_block_size,
                max_pairs=int(self.cfg.ortho_max_pair_fraction * n * (n - 1)),
            )
            self.ortho_scan_step.fill_(step)
        return self.ortho_close_pairs

    def _next_scan_after(self, step: int) -> int:
        """Scans at steps 1, 2, 4, 8, ... below ``ortho_rescan_every`` (directions move
        fastest right after initialisation), then at its multiples."""
        every = self.cfg.ortho_rescan_every
        if step < every:
            return min(1 << step.bit_length(), every)
        return (step // every + 1) * every

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        step = self.current_step()
        state_before = {name: getattr(self, name).clone() for name in self._state_updated_by_base_step}
        output = super().training_forward_pass(step_input)
        # One device sync per step: a NaN/inf must stop training before the optimizer
        # writes it into the weights (and before anything can be saved from them).
        if not torch.isfinite(output.loss.detach()).item():
            for name, value in state_before.items():
                setattr(self, name, value)
            bad = [
                f"{name}={value.item()}"
                for name, value in output.losses.items()
                if not torch.isfinite(value.detach()).all()
            ]
            raise FloatingPointError(
                f"ortho_contrastive: non-finite loss at training step {step}: "
                f"{', '.join(bad) or 'total loss=' + str(output.loss.item())}. Training "
                "stopped before the optimizer step, so no weights were corrupted. Lower the "
                "learning rate or the loss coefficients, or check the input activations."
            )
        with torch.no_grad():
            self.n_steps_trained.fill_(step + 1)
        if step_input.is_logging_step and self.cfg.ortho_anneal_steps is not None:
            tau = self.ortho_threshold_at(step)
            max_abs_cos, frac_above = decoder_pair_stats(
                self.unit_decoder().detach(), tau, self.cfg.ortho_block_size
            )
            output.metrics["ortho_threshold"] = tau
            output.metrics["decoder_max_abs_cos"] = max_abs_cos
            output.metrics["decoder_frac_pairs_above_threshold"] = frac_above
        return output

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        for key in _TRAINING_ONLY_BUFFERS:
            state_dict.pop(key, None)

    @override
    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        """Write the base's plain SAELens inference form (``standard``, ``topk`` or
        ``jumprelu``); each file appears whole or not at all.

        The metadata records ``training_steps``, so that evals can tell an SAE trained
        for 4 steps from a trained one.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict()
        self.process_state_dict_for_saving_inference(state_dict)
        config = self.cfg.get_inference_sae_cfg_dict()
        config["metadata"]["training_steps"] = int(self.n_steps_trained.item())

        weights_path = path / SAE_WEIGHTS_FILENAME
        cfg_path = path / SAE_CFG_FILENAME
        save_file(state_dict, _partial(weights_path))
        _partial(cfg_path).write_text(json.dumps(config))
        os.replace(_partial(weights_path), weights_path)
        os.replace(_partial(cfg_path), cfg_path)
        return weights_path, cfg_path


# One concrete class per base. The MRO puts OrthoContrastiveTrainingSAE first, so its
# methods wrap SAELens's through `super()`; nothing of the base is re-implemented here.


class OrthoContrastiveReLUL1TrainingSAE(OrthoContrastiveTrainingSAE, StandardTrainingSAE):  # type: ignore[misc]
    """``ortho_contrastive`` on SAELens ``standard`` (ReLU + L1); saved as ``standard``."""


class OrthoContrastiveTopKTrainingSAE(OrthoContrastiveTrainingSAE, TopKTrainingSAE):  # type: ignore[misc]
    """``ortho_contrastive`` on SAELens ``topk``; saved as ``topk``."""


class OrthoContrastiveBatchTopKTrainingSAE(OrthoContrastiveTrainingSAE, BatchTopKTrainingSAE):  # type: ignore[misc]
    """``ortho_contrastive`` on SAELens ``batchtopk``; saved as ``jumprelu``."""

    _state_updated_by_base_step = ("topk_threshold",)


class OrthoContrastiveMatryoshkaBatchTopKTrainingSAE(  # type: ignore[misc]
    OrthoContrastiveTrainingSAE, MatryoshkaBatchTopKTrainingSAE
):
    """``ortho_contrastive`` on SAELens ``matryoshka_batchtopk``; saved as ``jumprelu``.

    SAELens's class adds one ``inner_mse_loss_{width}`` per nested prefix; the
    contrastive term compares the whole dictionary's reconstruction with the input, and
    the ortho term covers the pairs ``matryoshka_ortho_pairs`` names."""

    _state_updated_by_base_step = ("topk_threshold",)

    @override
    def _ortho_penalty(self, tau: float, step: int) -> torch.Tensor:
        pairs = self.cfg.matryoshka_ortho_pairs
        if pairs == "all":
            return super()._ortho_penalty(tau, step)
        D_nd = self.unit_decoder()
        if self.cfg.ortho_mode == "close_pairs":
            pairs_P2 = self._close_pairs_at(step, D_nd.detach())
            if pairs_P2 is not None:  # the listed pairs in scope (still symmetric, sorted)
                group_P2 = torch.bucketize(
                    pairs_P2, torch.tensor(self.cfg.matryoshka_widths, device=pairs_P2.device), right=True
                )
                same_P = group_P2[:, 0] == group_P2[:, 1]
                return ortho_penalty_pairs(D_nd, tau, pairs_P2[same_P if pairs == "within_groups" else ~same_P])
        return matryoshka_ortho_penalty(
            D_nd, tau, self.cfg.matryoshka_widths, pairs, self.cfg.ortho_block_size
        )


def matryoshka_ortho_penalty(
    D_nd: torch.Tensor, tau: float, widths: list[int], pairs: str, block_size: int = 1024
) -> torch.Tensor:
    """The exact penalty's terms over the pairs within one prefix level
    (``pairs='within_groups'``) or across two levels (``'across_groups'``), divided by
    all ``n (n - 1)`` ordered pairs, like :func:`ortho_penalty_exact`.

    Args:
        D_nd: decoder directions with unit-norm rows, ``(n, d_in)``.
        widths: the nested prefix widths, strictly increasing, the last one ``n``.
    """
    n = D_nd.shape[0]
    if n < 2:
        return D_nd.sum() * 0.0
    within = D_nd.sum() * 0.0
    for start, stop in zip([0, *widths[:-1]], widths):
        if stop - start >= 2:
            within = within + thresholded_cosine_squared_sum(D_nd[start:stop], tau, block_size)
    if pairs == "within_groups":
        total = within
    elif pairs == "across_groups":
        total = thresholded_cosine_squared_sum(D_nd, tau, block_size) - within
    else:
        raise ValueError(f"pairs={pairs!r} is invalid: allowed are within_groups, across_groups")
    return total / (n * (n - 1))


_TRAINING_CLASS_PER_BASE: dict[str, type[OrthoContrastiveTrainingSAE]] = {
    "relu_l1": OrthoContrastiveReLUL1TrainingSAE,
    "topk": OrthoContrastiveTopKTrainingSAE,
    "batchtopk": OrthoContrastiveBatchTopKTrainingSAE,
    "matryoshka_batchtopk": OrthoContrastiveMatryoshkaBatchTopKTrainingSAE,
}


@dataclass
class OrthoContrastiveSAEConfig(SAEConfig):
    """Config of an ``ortho_contrastive`` training checkpoint opened for inference with
    ``SAE.load_from_disk``, in the inference form of its base. The plugin-free artifact
    is the one ``save_inference_model`` (and SAELens's runner) writes.
    """

    sparsity_base: SparsityBase = "relu_l1"
    """The training base, which picks the inference form: 'relu_l1' opens as a
    ``standard`` SAE, 'topk' as ``topk``, 'batchtopk' and 'matryoshka_batchtopk' as
    ``jumprelu``. Checkpoints
    written before the field existed are 'relu_l1'."""

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
        _check_sparsity_base(self.sparsity_base)
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
        return super().__new__(_class_for_base(cls, OrthoContrastiveSAE, args, kwargs))

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        for key in _TRAINING_ONLY_BUFFERS:
            state_dict.pop(key, None)


class OrthoContrastiveStandardSAE(OrthoContrastiveSAE, StandardSAE):  # type: ignore[misc]
    """A relu_l1 training checkpoint opened as SAELens ``standard``."""


class OrthoContrastiveTopKSAE(OrthoContrastiveSAE, TopKSAE):  # type: ignore[misc]
    """A topk training checkpoint opened as SAELens ``topk`` (same encoder as training)."""


class OrthoContrastiveJumpReLUSAE(OrthoContrastiveSAE, JumpReLUSAE):  # type: ignore[misc]
    """A batchtopk or matryoshka_batchtopk training checkpoint opened as SAELens ``jumprelu``: its running
    threshold becomes every latent's JumpReLU threshold, as SAELens's BatchTopK does when
    it saves (``BatchTopKTrainingSAE.process_state_dict_for_saving_inference``)."""

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


def _class_for_base(cls: type, root: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> type:
    """The class that ``root(cfg, ...)`` instantiates: the subclass for
    ``cfg.sparsity_base``. A concrete subclass is kept as it is (``copy.deepcopy`` calls
    ``cls.__new__(cls)`` on it, with no config)."""
    if cls is not root:
        return cls
    cfg = args[0] if args else kwargs["cfg"]
    per_base = _TRAINING_CLASS_PER_BASE if root is OrthoContrastiveTrainingSAE else _INFERENCE_CLASS_PER_BASE
    return per_base[cfg.sparsity_base]


def _forget_close_pairs(sae: OrthoContrastiveTrainingSAE, incompatible_keys: Any) -> None:
    """Load-state-dict hook: new weights make the close-pair list stale; scan at the next step.

    The scan step is recreated rather than filled: SAELens's ``load_from_disk`` builds the
    module on the meta device and assigns the loaded tensors, and this non-persistent
    buffer is not among them."""
    sae.ortho_scan_step = torch.full((), -1, dtype=torch.long, device=sae.W_dec.device)
    sae.ortho_close_pairs = None


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")
