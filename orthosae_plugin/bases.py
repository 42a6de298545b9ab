"""The sparsity bases of the ``ortho_contrastive`` config, and the rules of their fields.

``sparsity_base`` picks one of SAELens's training classes (``standard``, ``topk``,
``batchtopk``, ``matryoshka_batchtopk``); the SAE is saved as that base's own inference
form. Each base reads some of the config's fields and not others: a field that the
chosen base does not read must keep its default, so that e.g. ``k=4`` without
``sparsity_base="topk"`` is refused rather than silently training a ReLU + L1 SAE. The
Matryoshka base adds its nested widths and the scope of the pairs the ortho term sees.

The rules are functions of a config (they read its fields, and its dataclass's defaults);
the config's ``__post_init__`` calls them (``config.py``). Each refusal is a
``ValueError`` that names the field, the value and the rule (``validation.py``).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
from sae_lens.saes.sae import SAEConfig
from sae_lens.saes.standard_sae import StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAEConfig

from orthosae_plugin.validation import (
    check_bool,
    check_choice,
    check_integer,
    check_real,
    field_defaults,
    invalid,
    is_real,
    type_note,
)

SparsityBase = Literal["relu_l1", "topk", "batchtopk", "matryoshka_batchtopk"]
SPARSITY_BASES: tuple[str, ...] = get_args(SparsityBase)

MatryoshkaOrthoPairs = Literal["all", "within_groups", "across_groups"]
MATRYOSHKA_ORTHO_PAIRS: tuple[str, ...] = get_args(MatryoshkaOrthoPairs)

# Bases with SAELens's running BatchTopK threshold (saved as the JumpReLU threshold).
BATCH_THRESHOLD_BASES = ("batchtopk", "matryoshka_batchtopk")

# The inference config each base saves as: SAELens's own choice for its `standard`,
# `topk` and `batchtopk` training classes.
INFERENCE_CONFIG_PER_BASE: dict[str, type[SAEConfig]] = {
    "relu_l1": StandardSAEConfig,
    "topk": TopKSAEConfig,
    "batchtopk": JumpReLUSAEConfig,
    "matryoshka_batchtopk": JumpReLUSAEConfig,
}

# Fields that only some bases read. Under any other base they must keep their default.
BASES_READING_FIELD: dict[str, tuple[str, ...]] = {
    "l1_coefficient": ("relu_l1",),
    "lp_norm": ("relu_l1",),
    "l1_warm_up_steps": ("relu_l1",),
    "k": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "aux_loss_coefficient": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "rescale_acts_by_decoder_norm": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "use_sparse_activations": ("topk",),
    "topk_threshold_lr": ("batchtopk", "matryoshka_batchtopk"),
}
MATRYOSHKA_FIELDS = ("matryoshka_widths", "use_matryoshka_aux_loss", "matryoshka_ortho_pairs")


def check_sparsity_base(base: Any) -> None:
    if not isinstance(base, str) or base not in SPARSITY_BASES:
        raise invalid("sparsity_base", base, f"allowed bases are {', '.join(SPARSITY_BASES)}")


def check_base_fields(cfg: Any) -> None:
    """The sparsity base and the fields of the bases."""
    base = cfg.sparsity_base
    check_sparsity_base(base)
    check_real(cfg, "l1_coefficient", ">= 0 (a loss coefficient)", 0.0)
    check_real(cfg, "lp_norm", "> 0 (p of the sparsity penalty's p-norm)", 0.0, low_open=True)
    check_integer(cfg, "l1_warm_up_steps", 0, ">= 0")
    check_real(cfg, "aux_loss_coefficient", ">= 0 (a loss coefficient)", 0.0)
    check_bool(cfg, "rescale_acts_by_decoder_norm")
    check_bool(cfg, "use_sparse_activations")
    check_real(cfg, "topk_threshold_lr", "in (0, 1]", 0.0, 1.0, low_open=True)
    if not is_real(cfg.k):
        raise invalid("k", cfg.k, f"it must be a finite number with 0 < k <= d_sae={cfg.d_sae}")
    for name, bases in BASES_READING_FIELD.items():
        check_read_by_base(cfg, name, bases)
    if base == "relu_l1":
        return
    if not 0 < cfg.k <= cfg.d_sae:
        raise invalid("k", cfg.k, f"it must satisfy 0 < k <= d_sae={cfg.d_sae}")
    if base == "topk" and cfg.k != int(cfg.k):
        raise invalid("k", cfg.k, "sparsity_base='topk' keeps a whole number of latents per input")
    if cfg.aux_loss_coefficient > 0 and cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        # SAELens raises this only once a latent dies, possibly hours into the run.
        raise invalid(
            "normalize_activations", cfg.normalize_activations,
            f"SAELens's TopK auxiliary loss (sparsity_base={base!r}, aux_loss_coefficient="
            f"{cfg.aux_loss_coefficient}) does not support it; use 'none', "
            "'expected_average_only_in' or 'covariance_whitening', or aux_loss_coefficient=0",
        )


def check_matryoshka_fields(cfg: Any) -> None:
    """The fields only ``sparsity_base='matryoshka_batchtopk'`` reads. SAELens checks
    the widths only when it builds the SAE; here they are checked with the config."""
    check_bool(cfg, "use_matryoshka_aux_loss")
    if cfg.sparsity_base != "matryoshka_batchtopk":
        for name in MATRYOSHKA_FIELDS:
            check_read_by_base(cfg, name, ("matryoshka_batchtopk",))
        return
    widths = cfg.matryoshka_widths
    if not isinstance(widths, (list, tuple)):
        raise invalid("matryoshka_widths", widths, f"it must be a list of increasing widths{type_note(widths)}")
    if not widths:
        n = cfg.d_sae
        raise invalid("matryoshka_widths", widths, "sparsity_base='matryoshka_batchtopk' needs the "
                      f"nested prefix widths, e.g. [{n // 8}, {n // 4}, {n // 2}, {n}]")
    if any(not isinstance(w, int) or isinstance(w, bool) or w <= 0 for w in widths):
        raise invalid("matryoshka_widths", widths, "the widths must be positive integers")
    if any(a >= b for a, b in zip(widths, widths[1:])) or widths[-1] > cfg.d_sae:
        raise invalid("matryoshka_widths", widths,
                      f"the widths must be strictly increasing and at most d_sae={cfg.d_sae}")
    pairs = cfg.matryoshka_ortho_pairs
    check_choice(cfg, "matryoshka_ortho_pairs", MATRYOSHKA_ORTHO_PAIRS, "values")
    if pairs != "all" and cfg.ortho_mode in ("chunked", "ortsae"):
        raise invalid(
            "matryoshka_ortho_pairs", pairs,
            f"ortho_mode={cfg.ortho_mode!r} penalises random chunks of the whole dictionary; use "
            "'exact' or 'close_pairs', or matryoshka_ortho_pairs='all'",
        )
    if pairs != "all" and cfg.ortho_overfull_chunks > 1:
        raise invalid(
            "matryoshka_ortho_pairs", pairs,
            f"ortho_overfull_chunks={cfg.ortho_overfull_chunks} estimates the term on random "
            "chunks of the whole dictionary; use ortho_overfull_chunks=1, or matryoshka_ortho_pairs='all'",
        )


def check_read_by_base(cfg: Any, name: str, bases: tuple[str, ...]) -> None:
    """A field that only ``bases`` read keeps its default under any other base."""
    value, default = getattr(cfg, name), field_defaults(type(cfg))[name]
    if cfg.sparsity_base not in bases and value != default:
        raise invalid(
            name, value,
            f"only sparsity_base={' or '.join(map(repr, bases))} reads it, and "
            f"sparsity_base={cfg.sparsity_base!r}; set sparsity_base, or leave {name} at its "
            f"default {default!r}",
        )
