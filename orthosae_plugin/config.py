"""The training config of the ``ortho_contrastive`` SAE, with its rules.

One path for every entry point: a Python object, a dict or JSON file
(``TrainingSAEConfig.from_dict``, ``LanguageModelSAERunnerConfig.from_dict``) and the
command line (``orthosae-train``, SAELens's CLI) all build the config through its
``__post_init__``, which checks every field's type (a string where a number belongs, a
bool where an integer belongs, a float where a whole number belongs), finiteness and
range, then the rules that tie fields together. Every refusal is a ``ValueError`` that
names the field, the value and the rule::

    ortho_coefficient='1000' is invalid: it must be a finite number >= 0 (a loss coefficient), not a str

The choices of each ``Literal`` field are read from its annotation, and the defaults
from the fields, so that both are written once. The rules of the sparsity bases' own
fields (which base reads which field; the Matryoshka widths and pair scope) are in
``bases.py``; what ``resume_allow_changes`` may name, in ``checkpoints.py``. The run's
budget and the anneal horizon derived from it are checked when training starts
(``run_budget.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

import torch
from sae_lens.constants import DTYPE_MAP
from sae_lens.saes.sae import SAEConfig
from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
from typing_extensions import override

# The bases' names (SPARSITY_BASES, BATCH_THRESHOLD_BASES, BASES_READING_FIELD,
# MATRYOSHKA_FIELDS, check_sparsity_base, ...) stay importable from here too.
from orthosae_plugin.bases import (
    BASES_READING_FIELD,
    BATCH_THRESHOLD_BASES,
    INFERENCE_CONFIG_PER_BASE,
    MATRYOSHKA_FIELDS,
    SPARSITY_BASES,
    MatryoshkaOrthoPairs,
    SparsityBase,
    check_base_fields,
    check_matryoshka_fields,
    check_sparsity_base,
)
from orthosae_plugin.checkpoints import check_resume_allow_changes
from orthosae_plugin.validation import (
    check_bool,
    check_choice,
    check_integer,
    check_real,
    field_defaults,
    invalid,
    type_note,
)

ARCHITECTURE = "ortho_contrastive"

# SAELens's annotation of normalize_activations leaves out 'constant_norm_rescale', which
# its own __post_init__ accepts: these are the values that its __post_init__ allows.
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening")

# Smallest InfoNCE temperature: the gradient scales as 1 / temperature.
MIN_CONTRASTIVE_TEMPERATURE = 1e-4

# The chunk permutations are seeded with projection_seed * 1_000_003 + step, which
# torch.Generator.manual_seed must accept (< 2**64) for any realistic step count.
MAX_PROJECTION_SEED = 2**32


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

    matryoshka_ortho_pairs: MatryoshkaOrthoPairs = "all"
    """matryoshka_batchtopk only: which decoder pairs the ortho term penalises. 'all'
    (default): every pair of the dictionary, as on the other bases. 'within_groups': only
    pairs of latents added by the same prefix level (``[w_{i-1}, w_i)``); 'across_groups':
    only pairs from different levels. The mean is still over all d_sae (d_sae - 1)
    ordered pairs (pairs out of scope count 0), so ``ortho_coefficient`` keeps its scale.
    The ground-truth benchmark chose the default (docs/method.md). 'exact' and
    'close_pairs' mode compute the restricted scopes as they compute 'all' (blockwise;
    from the close-pair list, keeping the pairs in scope); 'chunked' mode refuses them."""

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

    ortho_mode: Literal["exact", "chunked", "close_pairs", "ortsae"] = "close_pairs"
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
    latents, a new permutation every step (cost linear in d_sae).
    'ortsae': the OrtSAE penalty itself (arXiv 2509.22033), not this package's
    thresholded one: latents cut into random chunks of ortho_chunk_size (a new
    permutation every step), each latent's largest squared cosine with the other latents
    of its chunk, averaged over the latents (docs/method.md). It uses no threshold, so
    ortho_threshold_start / ortho_threshold_end must keep their defaults (and
    ortho_anneal_steps does nothing); on the Matryoshka base it needs matryoshka_ortho_pairs='all';
    it computes in the rows' precision (ortho_matmul_dtype='float32'). The paper's base is
    sparsity_base='batchtopk', with contrastive_coefficient=0."""

    ortho_block_size: int = 1024
    """Rows of the cosine matrix computed at a time (memory knob; does not change the loss)."""

    ortho_matmul_dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the products behind the cosines and the gradient of 'exact' and
    'chunked' and of the 'close_pairs' scans. 'float32': the decoder's own precision (at
    least float32). 'bfloat16': bf16 products, float32 thresholds and sums: several times
    faster on GPUs with bf16 tensor cores (docs/method.md), usually slower on CPUs. The
    term is then an approximation (each cosine within 0.0117 of its float32 value, in
    practice ~1e-4); the scans allow for that bound, so a list stays complete. The
    listed pairs themselves are always computed in float32."""

    ortho_chunk_size: int = 4096
    """Latents per chunk in 'chunked' and 'ortsae' mode (>= 2); changes which pairs are
    penalised. d_sae / ortho_chunk_size is the number of chunks (a chunk of at least
    d_sae latents: the whole dictionary)."""

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
    0, r, 2r, ...; >= 1; 1 = every step), which cuts its cost by that factor. What the
    steps in between do is ortho_lazy_mode's choice. It changes the optimisation, not the
    objective's average weight (docs/method.md has the ground-truth evidence for each
    setting)."""

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

    resume_allow_changes: list[str] = field(default_factory=list)
    """Settings that a resume (``resume_from_checkpoint``) may change from the
    checkpoint's although they change the loss or its schedule, e.g.
    ``["ortho_coefficient"]``. Empty (default): a resume with any such change is refused,
    naming each old -> new value. Settings that change the SAE's shapes (``d_in``,
    ``d_sae``, ``projection_dim``, ``sparsity_base``) cannot be listed."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        self._check_saelens_fields()
        self._check_ortho_fields()
        self._check_contrastive_fields()
        check_base_fields(self)
        check_matryoshka_fields(self)
        check_resume_allow_changes(self)
        if self.sparsity_base == "topk":
            self.k = int(self.k)  # torch.topk and the saved `topk` config need an int
        super().__post_init__()

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return INFERENCE_CONFIG_PER_BASE[self.sparsity_base]

    # --- the rules: each raises a ValueError naming the field, the value and the rule --
    # (those of the bases' fields are in bases.py; resume_allow_changes's in checkpoints.py)

    def _check_saelens_fields(self) -> None:
        """Fields that SAELens's own configs declare but do not type-check."""
        check_integer(self, "d_in", 1, ">= 1 (the width of the activations)")
        check_integer(self, "d_sae", 1, ">= 1 (the number of latents)")
        dtypes = tuple(name for name in DTYPE_MAP if not name.startswith("torch."))
        if not isinstance(self.dtype, str) or self.dtype not in DTYPE_MAP:
            raise invalid("dtype", self.dtype, f"allowed dtypes are {', '.join(dtypes)}")
        device_rule = "it must be a torch device name such as 'cpu' or 'cuda:0'"
        if not isinstance(self.device, str):
            raise invalid("device", self.device, f"{device_rule}{type_note(self.device)}")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError) as error:
            raise invalid("device", self.device, f"{device_rule} ({error})") from None
        check_bool(self, "apply_b_dec_to_input")
        check_choice(self, "normalize_activations", NORMALIZATIONS, "normalizations")
        check_choice(self, "reshape_activations", CHOICES["reshape_activations"], "reshapes")
        check_real(self, "decoder_init_norm", ">= 0 (the decoder rows' initial norm)", 0.0, optional="(SAELens's default initialisation)")

    def _check_ortho_fields(self) -> None:
        check_real(self, "ortho_coefficient", ">= 0 (a loss coefficient)", 0.0)
        for name in ("ortho_threshold_start", "ortho_threshold_end"):
            check_real(self, name, "in [0, 1] (a |cosine| threshold)", 0.0, 1.0)
        if self.ortho_threshold_start < self.ortho_threshold_end:
            raise invalid(
                "ortho_threshold_start", self.ortho_threshold_start,
                f"it must be >= ortho_threshold_end={self.ortho_threshold_end} "
                "(the threshold anneals downwards)",
            )
        check_integer(self, "ortho_anneal_steps", 1, ">= 1", optional="to use the run's total steps")
        check_bool(self, "ortho_anneal_steps_derived")
        check_choice(self, "ortho_mode", CHOICES["ortho_mode"], "modes")
        check_integer(self, "ortho_block_size", 1, ">= 1 (rows of the cosine matrix computed at a time)")
        check_choice(self, "ortho_matmul_dtype", CHOICES["ortho_matmul_dtype"], "dtypes")
        check_integer(self, "ortho_chunk_size", 2, ">= 2 (a chunk needs >= 2 latents to hold a pair)")
        check_real(self, "ortho_margin", "in [0, 1] (a |cosine| margin)", 0.0, 1.0)
        check_integer(self, "ortho_rescan_every", 1, ">= 1 step")
        check_real(self, "ortho_max_pair_fraction", "in (0, 1] (a share of pairs)", 0.0, 1.0, low_open=True)
        check_real(self, "ortho_max_pairs_per_latent",
                   "> 0 (listed pairs per latent before the step computes exact)", 0.0, low_open=True)
        check_integer(self, "ortho_overfull_chunks", 1, ">= 1 (1 = the exact term while the close-pair list is over-full)")
        if self.ortho_overfull_chunks > 1 and self.ortho_mode != "close_pairs":
            raise invalid(
                "ortho_overfull_chunks", self.ortho_overfull_chunks,
                f"it applies to ortho_mode='close_pairs' only (ortho_mode={self.ortho_mode!r}: use 1; "
                "'chunked' mode sets its chunks with ortho_chunk_size)",
            )
        if self.ortho_mode == "ortsae":
            self._check_ortsae_fields()
        check_integer(self, "ortho_lazy_every", 1, ">= 1 (the ortho term computed on every r-th step)")
        check_choice(self, "ortho_lazy_mode", CHOICES["ortho_lazy_mode"], "modes")
        if self.ortho_coefficient > 0 and self.d_sae < 2:
            raise invalid("d_sae", self.d_sae,
                          "the decoder-orthogonality penalty (ortho_coefficient > 0) needs >= 2 latents to have a pair")

    def _check_ortsae_fields(self) -> None:
        """'ortsae' mode has no threshold and computes in the rows' precision."""
        for name in ("ortho_threshold_start", "ortho_threshold_end", "ortho_matmul_dtype"):
            value, default = getattr(self, name), DEFAULTS[name]
            if value != default:
                raise invalid(
                    name, value,
                    f"ortho_mode='ortsae' does not read it (the OrtSAE penalty has no threshold and "
                    f"computes in the rows' precision); leave it at its default {default!r}, or "
                    "use another ortho_mode",
                )

    def _check_contrastive_fields(self) -> None:
        check_real(self, "contrastive_coefficient", ">= 0 (a loss coefficient)", 0.0)
        check_integer(self, "contrastive_warm_up_steps", 0, ">= 0")
        check_integer(self, "projection_dim", 1, ">= 1", optional="for exact similarities")
        check_real(
            self, "contrastive_temperature",
            f"> 0, at least {MIN_CONTRASTIVE_TEMPERATURE:g} (the InfoNCE temperature; its gradient "
            "scales as 1 / temperature)",
            MIN_CONTRASTIVE_TEMPERATURE,
        )
        check_integer(self, "projection_seed", 0, "in [0, 2**32)", maximum=MAX_PROJECTION_SEED)


DEFAULTS: dict[str, Any] = field_defaults(OrthoContrastiveTrainingSAEConfig)
"""Each field's default, read from the dataclass (the rules compare with these)."""

CHOICES: dict[str, tuple[str, ...]] = {
    name: get_args(hint)
    for name, hint in get_type_hints(OrthoContrastiveTrainingSAEConfig).items()
    if get_origin(hint) is Literal
}
"""The allowed values of each ``Literal`` field, read from its annotation."""

