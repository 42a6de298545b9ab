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
from dataclasses import dataclass, field
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
    ORTHO_MATMUL_DTYPES,
    close_pair_scan,
    decoder_pair_stats,
    drift_bound,
    estimated_close_pairs,
    max_listed_pairs,
    ortho_penalty_chunked,
    ortho_penalty_exact,
    ortho_penalty_pairs,
    ortho_threshold,
    pair_row_pointers,
    thresholded_cosine_squared_sum,
)
from orthosae_plugin.saving import write_folder_atomically
from orthosae_plugin.validation import (
    SPARSITY_BASES,
    check_sparsity_base,
    validate_config,
)

ARCHITECTURE = "ortho_contrastive"

# Added to the movement bound of the 'close_pairs' check: the scan's and the step's
# cosines come from different kernels, which round differently (~1e-6 in fp32).
_DRIFT_ROUNDING_ALLOWANCE = 1e-4

# State-dict keys that exist only for training and are dropped from the inference model.
_TRAINING_ONLY_BUFFERS = ("projection", "n_steps_trained")

SparsityBase = Literal["relu_l1", "topk", "batchtopk", "matryoshka_batchtopk"]
# Bases with SAELens's running BatchTopK threshold (saved as the JumpReLU threshold).
_BATCH_THRESHOLD_BASES = ("batchtopk", "matryoshka_batchtopk")

# The inference config each base saves as: SAELens's own choice for its `standard`,
# `topk` and `batchtopk` training classes.
_INFERENCE_CONFIG_PER_BASE: dict[str, type[SAEConfig]] = {
    "relu_l1": StandardSAEConfig,
    "topk": TopKSAEConfig,
    "batchtopk": JumpReLUSAEConfig,
    "matryoshka_batchtopk": JumpReLUSAEConfig,
}


def _optional_int(text: str) -> int | None:
    """Command-line parser of ``int | None`` fields: ``--projection_dim None`` (also
    ``none``/``null``) gives None."""
    return None if text.strip().lower() in ("none", "null") else int(text)


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

    ortho_anneal_steps: int | None = field(default=None, metadata={"custom_args": {"type": _optional_int}})
    """Steps over which the threshold is cosine-annealed. None: the run's real number of
    training steps, derived when training starts (SAELens's ``SAETrainer``, so every
    runner: ``training_tokens // train_batch_size_tokens``) and re-derived at every
    start, so an edited budget never leaves a stale horizon. A number set here is kept
    as given."""

    ortho_anneal_steps_derived: bool = False
    """True when ``ortho_anneal_steps`` holds a horizon derived from a run's budget
    rather than one the user set: it is then derived again at the next training start.
    Set by the plugin; a saved config carries it so that a JSON round trip keeps the
    distinction."""

    ortho_mode: Literal["exact", "chunked", "close_pairs"] = "close_pairs"
    """'close_pairs' (default): the exact loss at a cost proportional to the number of
    close pairs. A blockwise scan lists the pairs whose |cos| exceeds the threshold minus
    ortho_margin and keeps the unit decoder rows of that moment; each step computes only
    the listed pairs, and checks that the two largest row movements since the scan sum
    to less than the distance from the list's threshold to the current one, which proves
    that no unlisted pair can contribute (|cos| moves by at most the movements of its two
    rows). When that could fail, the step is recomputed after a fresh scan, so the loss
    equals 'exact' at every step. While the list would hold more than its cap
    (ortho_max_pair_fraction, ortho_max_pairs_per_latent), the step computes the exact
    term instead. 'exact': all pairs every step, blockwise, one pass over the upper
    triangle, O(ortho_block_size * d_sae + d_sae * d_in) memory (about half a step's cost
    at d_sae = 4096, batch 2048).
    'chunked': OrtSAE-style, only pairs inside random chunks of ortho_chunk_size
    latents, a new permutation every step (cost linear in d_sae)."""

    ortho_block_size: int = 1024
    """Rows of the cosine matrix computed at a time (memory knob; does not change the loss)."""

    ortho_matmul_dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the products behind the cosines and the gradient of 'exact' and
    'chunked' and of the 'close_pairs' scans. 'float32': the decoder's own precision (at
    least float32). 'bfloat16': bf16 products, float32 thresholds and sums: several times
    faster on GPUs with bf16 tensor cores (README, "Speed and memory"), usually slower on
    CPUs. The term is then an approximation (each cosine within 0.0117 of its float32
    value, in practice ~1e-4); the scans allow for that bound, so a list stays complete.
    The listed pairs themselves are always computed in float32."""

    ortho_chunk_size: int = 4096
    """Latents per chunk in 'chunked' mode (>= 2); changes which pairs are penalised."""

    ortho_margin: float = 0.05
    """'close_pairs': how far below the threshold a pair's |cos| may lie and still be
    listed, in [0, 1]. It does not change the loss (the movement check keeps it exact):
    larger means longer lists and fewer rescans."""

    ortho_rescan_every: int = 10
    """'close_pairs': while the list would be over-full (and the exact term is computed
    instead), steps between two tries to build it (>= 1). A list that fits is rescanned
    only when the movement check asks for it."""

    ortho_max_pair_fraction: float = 0.05
    """'close_pairs': largest share of the d_sae (d_sae - 1) ordered pairs the list may
    hold, in (0, 1]. Above it the step computes the exact blockwise term instead (the
    same loss; dense kernels are then the faster way, and the list is never built)."""

    ortho_max_pairs_per_latent: float = 256.0
    """'close_pairs': largest number of listed ordered pairs per latent (> 0), a second
    cap that keeps the list's memory linear in d_sae (the share above alone would let it
    grow as d_sae^2); over either cap the exact term is computed instead."""

    ortho_overfull_chunks: int = 1
    """'close_pairs': while the list would be over-full, the term is estimated on the
    pairs inside ortho_overfull_chunks random chunks of the latents (a new permutation
    every step, as 'chunked' mode draws them) instead of computed over all pairs; >= 1,
    1 = all pairs (the exact term). Divided by the number of in-chunk pairs, the
    estimate's expectation is the exact term, and it costs about 1/ortho_overfull_chunks
    of it. An approximation on those steps only (the list's steps stay exact); its
    measured error is in benchmarks/results/speed."""

    ortho_lazy_every: int = 4
    """The orthogonality term is computed on every ortho_lazy_every-th step only (steps
    0, r, 2r, ...; >= 1; 1 = every step, the behaviour before issue 12), which cuts its
    cost by that factor. What the steps in between do is ortho_lazy_mode's choice. It
    changes the optimisation, not the objective's average weight (README, "Speed and
    memory", has the ground-truth evidence for each setting)."""

    ortho_lazy_mode: Literal["weighted", "reuse"] = "weighted"
    """'weighted' (lazy regularization, StyleGAN2 arXiv 1912.04958): the term counts on
    the steps that compute it, with weight ortho_lazy_every, and not at all in between.
    'reuse': the gradient of the term with respect to the unit decoder rows, computed on
    those steps, is applied again with weight 1 on every step until the next one (through
    the current normalisation of W_dec, so it stays tangent to the unit sphere); the
    logged ortho_loss is the value at the step that computed it. The gradient is then at
    most ortho_lazy_every - 1 steps stale, and its drift is logged as
    ``ortho_reused_grad_rel_change`` (relative change between two computations)."""

    contrastive_coefficient: float = 0.3
    """Final weight of the self-contrastive loss (>= 0; 0 turns it off)."""

    contrastive_warm_up_steps: int = 1000
    """Steps over which SAELens ramps the contrastive weight linearly from 0 (>= 0)."""

    projection_dim: int | None = field(default=128, metadata={"custom_args": {"type": _optional_int}})
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
        validate_config(self)
        if self.sparsity_base == "topk":
            self.k = int(self.k)  # torch.topk and the saved `topk` config need an int
        super().__post_init__()

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return _INFERENCE_CONFIG_PER_BASE[self.sparsity_base]

    def check_training_run(
        self, total_training_steps: int, train_batch_size: int, arithmetic: str
    ) -> None:
        """Refuse a run that this config cannot train; changes nothing.

        ``arithmetic`` spells out how the step count was reached, for the error message.
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
                f"contrastive_coefficient={self.contrastive_coefficient} > 0: the "
                "self-contrastive loss needs >= 2 inputs per batch."
            )
        if self.sparsity_base in _BATCH_THRESHOLD_BASES:
            _check_threshold_settles(
                self.topk_threshold_lr, total_training_steps, arithmetic, self.sparsity_base
            )

    def bind_to_training_run(
        self, total_training_steps: int, train_batch_size: int, arithmetic: str
    ) -> None:
        """Check the run's budget, and derive ``ortho_anneal_steps`` from it unless the
        user set it.

        Called by SAELens's runner configs at construction, before any model is loaded,
        and again when SAELens's ``SAETrainer`` is built, i.e. by the run that actually
        trains (see ``registration.py``): a derived horizon is re-derived each time, so
        ``dataclasses.replace(cfg, training_tokens=...)``, an edited JSON budget or one
        SAE config reused across runs never keeps a stale one.
        """
        self.check_training_run(total_training_steps, train_batch_size, arithmetic)
        if self.ortho_anneal_steps is None or self.ortho_anneal_steps_derived:
            self.ortho_anneal_steps = total_training_steps
            self.ortho_anneal_steps_derived = True
            self.add_training_info_to_metadata()


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
    (None until a scan, or while the list would be over-full), and
    ``ortho_scan_decoder`` ``(d_sae, d_in)``, the unit decoder rows at that scan, against
    which each step measures how far the rows have moved (with ``ortho_close_pair_rows``,
    the list's CSR row pointers); ``ortho_scan_step`` is the step of the last scan (-1:
    none). A checkpoint does not carry them: the first step after
    construction, resume or ``load_state_dict`` scans again.

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
    ortho_scan_decoder: torch.Tensor | None
    ortho_scan_step: int
    ortho_scans: int
    """'close_pairs': scans run by this module (tried ones included), for the benchmarks."""
    ortho_scans_skipped: int
    """'close_pairs': retries of an over-full list that a sample of rows showed to be over
    full still, so that no scan ran (:func:`estimated_close_pairs`), for the benchmarks."""
    ortho_recomputed_steps: int
    """'close_pairs': steps recomputed after the movement check failed (see
    ``training_forward_pass``), for the benchmarks."""

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
        self.register_buffer("ortho_scan_decoder", None, persistent=False)
        self.register_buffer("ortho_close_pair_rows", None, persistent=False)
        self.ortho_scans = 0
        self.ortho_scans_skipped = 0
        self.ortho_recomputed_steps = 0
        self._clock_cache: tuple[torch.Tensor, int, int] | None = None
        self._ortho_drift: torch.Tensor | None = None
        self._ortho_reused_change: torch.Tensor | None = None
        # The rows' movement per step, measured at each check: how soon the next scan is
        # due. A property of the optimisation, so it survives forget_close_pairs.
        self._ortho_pace = 0.0
        self.forget_close_pairs()
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
                "config, or train through SAELens's SAETrainer (any SAELens runner), "
                "which derives it from the run's budget when it starts."
            )
        return ortho_threshold(
            step,
            self.cfg.ortho_threshold_start,
            self.cfg.ortho_threshold_end,
            self.cfg.ortho_anneal_steps,
        )

    def current_step(self) -> int:
        """Training steps completed before the current one (the schedule clock).

        Read from the ``n_steps_trained`` buffer (the state a checkpoint carries) only
        when the buffer was set from outside (constructed, loaded, moved, or written in
        place since this module last advanced it, which its version counter tells), so
        a training step reads it without a device sync.
        """
        clock = self.n_steps_trained
        cached = self._clock_cache
        if cached is None or cached[0] is not clock or cached[1] != clock._version:
            cached = (clock, clock._version, int(clock.item()))
            self._clock_cache = cached
        return cached[2]

    def _advance_clock(self, step: int) -> None:
        with torch.no_grad():
            self.n_steps_trained.fill_(step + 1)
        self._clock_cache = (self.n_steps_trained, self.n_steps_trained._version, step + 1)

    @property
    def _ortho_matmul_dtype(self) -> torch.dtype | None:
        return ORTHO_MATMUL_DTYPES[self.cfg.ortho_matmul_dtype]

    def unit_decoder(self) -> torch.Tensor:
        """``W_dec`` with unit-norm rows, ``(d_sae, d_in)``, in at least float32 (the
        cosines of a bf16/fp16 decoder are computed in float32; the gradient flows back
        into ``W_dec`` in its own dtype)."""
        W_dec_nd = self.W_dec.to(_compute_dtype(self.W_dec.dtype))
        return W_dec_nd / W_dec_nd.norm(dim=1, keepdim=True).clamp_min(1e-12)

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
        lazy_every = self.cfg.ortho_lazy_every
        if ortho_weight > 0:
            step = self.current_step()
            if self.cfg.ortho_lazy_mode == "reuse":
                ortho_loss = ortho_weight * self._ortho_penalty_reused(step)
            elif step % lazy_every == 0:  # lazy regularization: every r-th step, weight r
                D_nd = self.unit_decoder()
                ortho_loss = (ortho_weight * lazy_every) * self._ortho_penalty(D_nd, self.ortho_threshold_at(step), step)

        contrastive_weight = step_input.coefficients["contrastive"]
        contrastive_loss = zero
        if contrastive_weight > 0:
            # In at least float32 whatever the SAE's dtype: SAELens hands the input in
            # the activations' dtype and the reconstruction in the SAE's.
            dtype = _compute_dtype(sae_out.dtype)
            contrastive_loss = contrastive_weight * self_contrastive_loss(
                step_input.sae_in.to(dtype),
                sae_out.to(dtype),
                temperature=self.cfg.contrastive_temperature,
                projection_DK=None if self.projection is None else self.projection.to(dtype),
            )
        return {**losses, "ortho_loss": ortho_loss, "contrastive_loss": contrastive_loss}

    def _ortho_penalty_reused(self, step: int) -> torch.Tensor:
        """'reuse' mode: on a step that computes the term (``step % r == 0``, or the first
        step after construction, a load or a clock change), its value and its gradient
        ``(d_sae, d_in)`` with respect to the unit rows; on every step, a term whose value
        is that value and whose gradient is that gradient, carried to ``W_dec`` through
        the current normalisation: ``value + <D, g> - <D, g>.detach()``. O(d_sae d_in)
        between computations."""
        D_nd = self.unit_decoder()
        r = self.cfg.ortho_lazy_every
        last = self._ortho_reused_step
        if self._ortho_reused is None or step % r == 0 or not (last <= step < last + r):
            D_leaf_nd = D_nd.detach().requires_grad_()
            with torch.enable_grad():
                value = self._ortho_penalty(D_leaf_nd, self.ortho_threshold_at(step), step)
                (grad_nd,) = torch.autograd.grad(value, D_leaf_nd, allow_unused=True)
            if grad_nd is None:  # a penalty with no pair in scope
                grad_nd = torch.zeros_like(D_leaf_nd)
            if self._ortho_reused is not None:
                old_nd = self._ortho_reused[1]
                # Left on the device; read at logging steps only.
                self._ortho_reused_change = (grad_nd - old_nd).norm() / old_nd.norm().clamp_min(1e-30)
            self._ortho_reused = (value.detach(), grad_nd)
            self._ortho_reused_step = step
        value, grad_nd = self._ortho_reused
        linear = (D_nd * grad_nd.to(D_nd.dtype)).sum()
        return value.to(D_nd.dtype) + (linear - linear.detach())

    def _ortho_penalty(self, D_nd: torch.Tensor, tau: float, step: int) -> torch.Tensor:
        """The ortho term at ``step`` on the unit decoder rows ``D_nd``, in ``ortho_mode``."""
        if self.cfg.ortho_mode == "close_pairs":
            pairs_P2 = self._close_pairs_at(step, D_nd.detach())
            if pairs_P2 is not None:
                assert self.ortho_scan_decoder is not None
                # Read with the step's finiteness check, in training_forward_pass.
                self._ortho_drift = drift_bound(D_nd.detach(), self.ortho_scan_decoder)
                return ortho_penalty_pairs(D_nd, tau, pairs_P2, self.ortho_close_pair_rows)
            # Too many close pairs for a list: the same loss computed densely, or its
            # estimate on random chunks (ortho_overfull_chunks).
            if self.cfg.ortho_overfull_chunks > 1:
                return self.ortho_overfull_estimate(D_nd, tau, step)
        if self.cfg.ortho_mode != "chunked":
            return ortho_penalty_exact(D_nd, tau, self.cfg.ortho_block_size, self._ortho_matmul_dtype)
        return self._ortho_penalty_chunked(D_nd, tau, step, self.cfg.ortho_chunk_size)

    def ortho_overfull_estimate(self, D_nd: torch.Tensor, tau: float, step: int) -> torch.Tensor:
        """The term's estimate while the close-pair list is over-full: pairs inside
        ``ortho_overfull_chunks`` random chunks of ``ceil(d_sae / chunks)`` latents, with the
        permutation of ``step``."""
        return self._ortho_penalty_chunked(D_nd, tau, step, -(-D_nd.shape[0] // self.cfg.ortho_overfull_chunks))

    def _ortho_penalty_chunked(self, D_nd: torch.Tensor, tau: float, step: int, chunk_size: int) -> torch.Tensor:
        # A permutation that depends only on (seed, step), so a resumed run draws the same ones.
        generator = torch.Generator(device="cpu").manual_seed(
            self.cfg.projection_seed * 1_000_003 + step
        )
        return ortho_penalty_chunked(
            D_nd, tau, chunk_size, generator, self.cfg.ortho_block_size, self._ortho_matmul_dtype
        )

    def forget_close_pairs(self) -> None:
        """Drop the close-pair list (the next ortho step scans again) and, in 'reuse'
        mode, the kept gradient (the next step computes the term)."""
        self._ortho_reused: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ortho_reused_step = -1
        self.ortho_close_pairs = None
        self.ortho_close_pair_rows = None
        self.ortho_scan_decoder = None
        self.ortho_scan_step = -1
        self._ortho_list_threshold = 0.0
        self._ortho_rescan_next = False

    def _close_pairs_at(self, step: int, D_nd: torch.Tensor) -> torch.Tensor | None:
        """The close-pair list serving ``step``; None while it would be over-full.

        Scans after construction or a state-dict load, when the movement check of an
        earlier step asked for it (:meth:`_check_drift`), when the clock went back, and,
        while the list is over-full, every ``ortho_rescan_every`` steps.
        """
        scan_step = self.ortho_scan_step
        due = (
            scan_step < 0
            or self._ortho_rescan_next
            or step < scan_step
            or (self.ortho_close_pairs is None and step - scan_step >= self.cfg.ortho_rescan_every)
        )
        if due:
            n = D_nd.shape[0]
            max_pairs = max_listed_pairs(n, self.cfg.ortho_max_pair_fraction, self.cfg.ortho_max_pairs_per_latent)
            threshold = max(self.ortho_threshold_at(step) - self.cfg.ortho_margin, 0.0)
            retry = 0 <= scan_step <= step and self.ortho_close_pairs is None
            if retry and estimated_close_pairs(D_nd, threshold) > 2 * max_pairs:
                # Over-full still, by a wide margin, on a sample of rows: no scan (the
                # sample costs a few rows of one; the step computes without a list).
                self.ortho_scans_skipped += 1
            else:
                self.ortho_close_pairs = close_pair_scan(D_nd, threshold, self.cfg.ortho_block_size,
                                                         max_pairs=max_pairs, matmul_dtype=self._ortho_matmul_dtype)
                self.ortho_scans += 1
            listed = self.ortho_close_pairs is not None
            self.ortho_scan_decoder = D_nd.clone() if listed else None
            self.ortho_close_pair_rows = pair_row_pointers(self.ortho_close_pairs, n) if listed else None
            self.ortho_scan_step = step
            self._ortho_list_threshold = threshold
            self._ortho_rescan_next = False
        return self.ortho_close_pairs

    def _check_drift(self, step: int, drift: float) -> bool:
        """After a step computed on the list: True if the list may have missed a pair at
        ``step`` (the step must be recomputed on a fresh scan); otherwise plans the next
        ortho step (:meth:`_plan_next_scan`).

        An unlisted pair had ``|C| <= L`` at the scan, so now ``|C| <= L + drift`` with
        ``drift = m_1 + m_2`` (:func:`drift_bound`): it cannot contribute while
        ``drift < tau - L`` (less a rounding allowance).
        """
        if step > self.ortho_scan_step:  # the rows' pace: movement per step since the scan
            self._ortho_pace = drift / (step - self.ortho_scan_step)
        if drift >= self.ortho_threshold_at(step) - self._ortho_list_threshold - _DRIFT_ROUNDING_ALLOWANCE:
            self._ortho_rescan_next = True
            return True
        self._plan_next_scan(step, drift)
        return False

    def _plan_next_scan(self, step: int, drift: float) -> None:
        """Scan at the next ortho step if the rows, at twice their pace since the last
        scan, would use up the slack by then (a guess that saves recomputing a step; the
        check after that step is what makes the loss exact)."""
        next_step = step + self.cfg.ortho_lazy_every
        predicted = drift + 2.0 * self._ortho_pace * self.cfg.ortho_lazy_every
        slack = self.ortho_threshold_at(next_step) - self._ortho_list_threshold - _DRIFT_ROUNDING_ALLOWANCE
        if predicted >= slack:
            self._ortho_rescan_next = True

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        _check_coefficients(self, step_input)
        step = self.current_step()
        state_before = {name: getattr(self, name).clone() for name in self._state_updated_by_base_step}
        self._ortho_drift = None
        output = super().training_forward_pass(step_input)
        # One device sync per step: a NaN/inf must stop training before the optimizer
        # writes it into the weights (and before anything can be saved from them); the
        # close-pair list's movement check is read in the same transfer.
        checks = [torch.isfinite(output.loss.detach()).all().float()]
        if self._ortho_drift is not None:
            checks.append(self._ortho_drift.float())
        values = torch.stack(checks).tolist()
        self._ortho_drift = None
        if not values[0]:
            self._refuse_non_finite(output, step, state_before)
        if len(values) > 1 and self._check_drift(step, values[1]):
            # A pair left out of the list may have crossed the threshold: recompute the
            # step on a fresh scan (rare; benchmarks/results/speed counts them), so that
            # the loss is the exact one at every step.
            for name, value in state_before.items():
                setattr(self, name, value.clone())
            self.ortho_recomputed_steps += 1
            output = super().training_forward_pass(step_input)
            self._ortho_drift = None
            if self.ortho_close_pairs is not None:
                self._plan_next_scan(step, 0.0)
            if not torch.isfinite(output.loss.detach()).item():
                self._refuse_non_finite(output, step, state_before)
        self._advance_clock(step)
        if step_input.is_logging_step and self.cfg.ortho_anneal_steps is not None:
            tau = self.ortho_threshold_at(step)
            max_abs_cos, frac_above = decoder_pair_stats(
                self.unit_decoder().detach(), tau, self.cfg.ortho_block_size
            )
            output.metrics["ortho_threshold"] = tau
            output.metrics["decoder_max_abs_cos"] = max_abs_cos
            output.metrics["decoder_frac_pairs_above_threshold"] = frac_above
            if self._ortho_reused_change is not None:
                output.metrics["ortho_reused_grad_rel_change"] = self._ortho_reused_change.item()
        return output

    def _refuse_non_finite(
        self, output: TrainStepOutput, step: int, state_before: dict[str, torch.Tensor]
    ) -> None:
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

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        for key in _TRAINING_ONLY_BUFFERS:
            state_dict.pop(key, None)

    @override
    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        """Write the base's plain SAELens inference form (``standard``, ``topk`` or
        ``jumprelu``) as a folder that appears whole or not at all (see ``saving.py``):
        a reader never pairs the weights of one save with the ``cfg.json`` of another,
        and a failed save leaves the previous one intact and no temporaries behind.

        The metadata records ``training_steps``, so that evals can tell an SAE trained
        for 4 steps from a trained one.
        """
        state_dict = self.state_dict()
        self.process_state_dict_for_saving_inference(state_dict)
        config = self.cfg.get_inference_sae_cfg_dict()
        config["metadata"]["training_steps"] = int(self.n_steps_trained.item())

        def write(folder: Path) -> None:
            save_file(state_dict, folder / SAE_WEIGHTS_FILENAME)
            (folder / SAE_CFG_FILENAME).write_text(json.dumps(config))

        path = write_folder_atomically(path, write)
        return path / SAE_WEIGHTS_FILENAME, path / SAE_CFG_FILENAME

    @override
    def load_weights_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        """Resume: refuse a checkpoint whose derived anneal horizon differs from this
        run's, which would bend the threshold schedule halfway through."""
        _check_resumed_horizon(self.cfg, Path(checkpoint_path) / SAE_CFG_FILENAME)
        super().load_weights_from_checkpoint(checkpoint_path)


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
    def _ortho_penalty(self, D_nd: torch.Tensor, tau: float, step: int) -> torch.Tensor:
        pairs = self.cfg.matryoshka_ortho_pairs
        if pairs == "all":
            return super()._ortho_penalty(D_nd, tau, step)
        if self.cfg.ortho_mode == "close_pairs":
            pairs_P2 = self._close_pairs_at(step, D_nd.detach())
            if pairs_P2 is not None:  # the listed pairs in scope (still symmetric, sorted)
                assert self.ortho_scan_decoder is not None
                # The list's movement check (read with the step's finiteness check).
                self._ortho_drift = drift_bound(D_nd.detach(), self.ortho_scan_decoder)
                group_P2 = torch.bucketize(
                    pairs_P2, torch.tensor(self.cfg.matryoshka_widths, device=pairs_P2.device), right=True
                )
                same_P = group_P2[:, 0] == group_P2[:, 1]
                return ortho_penalty_pairs(D_nd, tau, pairs_P2[same_P if pairs == "within_groups" else ~same_P])
        return matryoshka_ortho_penalty(
            D_nd, tau, self.cfg.matryoshka_widths, pairs, self.cfg.ortho_block_size, self._ortho_matmul_dtype
        )


def matryoshka_ortho_penalty(
    D_nd: torch.Tensor, tau: float, widths: list[int], pairs: str, block_size: int = 1024,
    matmul_dtype: torch.dtype | None = None,
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
            within = within + thresholded_cosine_squared_sum(D_nd[start:stop], tau, block_size, matmul_dtype)
    if pairs == "within_groups":
        total = within
    elif pairs == "across_groups":
        total = thresholded_cosine_squared_sum(D_nd, tau, block_size, matmul_dtype) - within
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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the two loss terms compute in: float32, or float64 for a float64 SAE."""
    return torch.promote_types(dtype, torch.float32)


def _forget_close_pairs(sae: OrthoContrastiveTrainingSAE, incompatible_keys: Any) -> None:
    """Load-state-dict hook: new weights make the close-pair list stale; scan at the next step."""
    sae.forget_close_pairs()


def _check_resumed_horizon(cfg: OrthoContrastiveTrainingSAEConfig, cfg_path: Path) -> None:
    if not (cfg.ortho_anneal_steps_derived and cfg_path.is_file()):
        return  # an explicit horizon stays as given
    saved = json.loads(cfg_path.read_text()).get("ortho_anneal_steps")
    if saved is not None and saved != cfg.ortho_anneal_steps:
        raise ValueError(
            f"ortho_anneal_steps: the checkpoint {str(cfg_path.parent)!r} was trained with "
            f"an anneal horizon of {saved} steps, and this run's budget gives "
            f"{cfg.ortho_anneal_steps}; resuming would bend the threshold schedule. Resume "
            f"with the checkpoint's budget, or set ortho_anneal_steps={saved} (or another "
            "value) explicitly."
        )


def _check_coefficients(sae: OrthoContrastiveTrainingSAE, step_input: TrainStepInput) -> None:
    """A ``TrainStepInput`` built by hand must carry every coefficient the SAE declares."""
    missing = [name for name in sae.get_coefficients() if name not in step_input.coefficients]
    if missing:
        raise ValueError(
            f"TrainStepInput.coefficients={step_input.coefficients!r} is invalid: it lacks "
            f"{', '.join(map(repr, missing))}. Pass SAETrainer.get_coefficients(), or every "
            f"name of sae.get_coefficients() ({', '.join(map(repr, sae.get_coefficients()))}) "
            "with its current value."
        )
