"""Validation of the ``ortho_contrastive`` training config: one path for every entry point.

A Python object, a dict or JSON file (``TrainingSAEConfig.from_dict``,
``LanguageModelSAERunnerConfig.from_dict``) and the command line (``orthosae-train``,
SAELens's CLI) all build the config through its ``__post_init__``, which calls
:func:`validate_config`. It checks every field's type (a string where a number belongs,
a bool where an integer belongs, a float where a whole number belongs), finiteness (no
NaN or infinity anywhere) and range, then the rules that tie fields together. Every
refusal is a ``ValueError`` that names the field, the value and the rule::

    ortho_coefficient='1000' is invalid: it must be a finite number >= 0 (a loss coefficient), not a str

:func:`check_batch_and_budget` does the same for the run's batch size and token budget,
which live in SAELens's runner and trainer configs, before the step count is divided out.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

import torch
from sae_lens.constants import DTYPE_MAP

from orthosae_plugin.orthogonality import ORTHO_LAZY_MODES, ORTHO_MATMUL_DTYPES, ORTHO_MODES

if TYPE_CHECKING:
    from orthosae_plugin.ortho_contrastive import OrthoContrastiveTrainingSAEConfig

SPARSITY_BASES: tuple[str, ...] = ("relu_l1", "topk", "batchtopk", "matryoshka_batchtopk")

# Fields that only some bases read. Under any other base they must keep their default,
# so that e.g. `k=4` without `sparsity_base="topk"` is refused rather than silently
# training a ReLU + L1 SAE.
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
# matryoshka_batchtopk's own fields (``matryoshka_widths`` has no plain default) are
# checked by ``validate_matryoshka_fields``.
MATRYOSHKA_ORTHO_PAIRS: tuple[str, ...] = ("all", "within_groups", "across_groups")

# Smallest InfoNCE temperature: the gradient scales as 1 / temperature.
MIN_CONTRASTIVE_TEMPERATURE = 1e-4

# The chunk permutations are seeded with projection_seed * 1_000_003 + step, which
# torch.Generator.manual_seed must accept (< 2**64) for any realistic step count.
MAX_PROJECTION_SEED = 2**32


def invalid(field: str, value: Any, rule: str) -> ValueError:
    """The one error format: field, value, rule."""
    return ValueError(f"{field}={value!r} is invalid: {rule}")


def _type_note(value: Any) -> str:
    return f", not a {type(value).__name__}"


def is_integer(value: Any) -> bool:
    """A whole number of an integer type (``True``/``False`` are not integers here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite real number of a numeric type (not a bool, not a string)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def check_integer(
    cfg: Any, field: str, minimum: int, rule: str, *, optional: str | None = None, maximum: int | None = None
) -> None:
    """``field`` must be an integer >= ``minimum`` (and < ``maximum``), or None where
    ``optional`` says what None means. Numpy integers are stored as Python ints."""
    value = getattr(cfg, field)
    if value is None and optional is not None:
        return
    full_rule = rule + (f", or None {optional}" if optional is not None else "")
    if not is_integer(value):
        raise invalid(field, value, f"it must be an integer {full_rule}{_type_note(value)}")
    if value < minimum or (maximum is not None and value >= maximum):
        raise invalid(field, value, f"it must be {full_rule}")
    if type(value) is not int:
        setattr(cfg, field, int(value))


def check_real(
    cfg: Any,
    field: str,
    rule: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    optional: str | None = None,
) -> None:
    """``field`` must be a finite real number in the range that ``rule`` states
    (``low``/``high`` inclusive unless ``low_open``). Integers are accepted (a JSON
    file writes 1000.0 as 1000); numpy floats are stored as Python floats."""
    value = getattr(cfg, field)
    if value is None and optional is not None:
        return
    full_rule = rule + (f", or None {optional}" if optional is not None else "")
    if not is_real(value):
        note = _type_note(value) if not isinstance(value, numbers.Real) or isinstance(value, bool) else ""
        raise invalid(field, value, f"it must be a finite number {full_rule}{note}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if below or above:
        raise invalid(field, value, f"it must be {full_rule}")
    if type(value) not in (int, float):
        setattr(cfg, field, float(value))


def check_bool(cfg: Any, field: str) -> None:
    value = getattr(cfg, field)
    if not isinstance(value, bool):
        raise invalid(field, value, f"it must be True or False{_type_note(value)}")


def check_choice(cfg: Any, field: str, choices: tuple[str, ...], what: str) -> None:
    value = getattr(cfg, field)
    if not isinstance(value, str) or value not in choices:
        raise invalid(field, value, f"allowed {what} are {', '.join(choices)}")


def validate_config(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    """Raise a ValueError naming the field, the value and the rule, for the first field
    of ``cfg`` that is of the wrong type, not finite, out of range, or inconsistent
    with another field."""
    _check_saelens_fields(cfg)
    _check_ortho_fields(cfg)
    _check_contrastive_fields(cfg)
    validate_sparsity_base(cfg)
    validate_matryoshka_fields(cfg)


def _check_saelens_fields(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    """Fields that SAELens's own configs declare but do not type-check."""
    check_integer(cfg, "d_in", 1, ">= 1 (the width of the activations)")
    check_integer(cfg, "d_sae", 1, ">= 1 (the number of latents)")
    dtypes = tuple(name for name in DTYPE_MAP if not name.startswith("torch."))
    if not isinstance(cfg.dtype, str) or cfg.dtype not in DTYPE_MAP:
        raise invalid("dtype", cfg.dtype, f"allowed dtypes are {', '.join(dtypes)}")
    if not isinstance(cfg.device, str):
        raise invalid("device", cfg.device, f"it must be a torch device name such as 'cpu' or 'cuda:0'{_type_note(cfg.device)}")
    try:
        torch.device(cfg.device)
    except (RuntimeError, ValueError) as error:
        raise invalid("device", cfg.device, f"it must be a torch device name such as 'cpu' or 'cuda:0' ({error})") from None
    check_bool(cfg, "apply_b_dec_to_input")
    check_choice(
        cfg,
        "normalize_activations",
        ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening"),
        "normalizations",
    )
    check_choice(cfg, "reshape_activations", ("none", "hook_z"), "reshapes")
    check_real(cfg, "decoder_init_norm", ">= 0 (the decoder rows' initial norm)", 0.0, optional="(SAELens's default initialisation)")


def _check_ortho_fields(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    check_real(cfg, "ortho_coefficient", ">= 0 (a loss coefficient)", 0.0)
    for field in ("ortho_threshold_start", "ortho_threshold_end"):
        check_real(cfg, field, "in [0, 1] (a |cosine| threshold)", 0.0, 1.0)
    if cfg.ortho_threshold_start < cfg.ortho_threshold_end:
        raise invalid(
            "ortho_threshold_start",
            cfg.ortho_threshold_start,
            f"it must be >= ortho_threshold_end={cfg.ortho_threshold_end} "
            "(the threshold anneals downwards)",
        )
    check_integer(cfg, "ortho_anneal_steps", 1, ">= 1", optional="to use the run's total steps")
    check_bool(cfg, "ortho_anneal_steps_derived")
    check_choice(cfg, "ortho_mode", ORTHO_MODES, "modes")
    check_integer(cfg, "ortho_block_size", 1, ">= 1 (rows of the cosine matrix computed at a time)")
    check_choice(cfg, "ortho_matmul_dtype", tuple(ORTHO_MATMUL_DTYPES), "dtypes")
    check_integer(cfg, "ortho_chunk_size", 2, ">= 2 (a chunk needs >= 2 latents to hold a pair)")
    check_real(cfg, "ortho_margin", "in [0, 1] (a |cosine| margin)", 0.0, 1.0)
    check_integer(cfg, "ortho_rescan_every", 1, ">= 1 step")
    check_real(cfg, "ortho_max_pair_fraction", "in (0, 1] (a share of pairs)", 0.0, 1.0, low_open=True)
    check_real(cfg, "ortho_max_pairs_per_latent", "> 0 (listed pairs per latent before the step computes exact)", 0.0, low_open=True)
    check_integer(cfg, "ortho_overfull_chunks", 1, ">= 1 (1 = the exact term while the close-pair list is over-full)")
    if cfg.ortho_overfull_chunks > 1 and cfg.ortho_mode != "close_pairs":
        raise invalid(
            "ortho_overfull_chunks", cfg.ortho_overfull_chunks,
            f"it applies to ortho_mode='close_pairs' only (ortho_mode={cfg.ortho_mode!r}: use 1; "
            "'chunked' mode sets its chunks with ortho_chunk_size)",
        )
    check_integer(cfg, "ortho_lazy_every", 1, ">= 1 (the ortho term computed on every r-th step)")
    check_choice(cfg, "ortho_lazy_mode", ORTHO_LAZY_MODES, "modes")
    if cfg.ortho_coefficient > 0 and cfg.d_sae < 2:
        raise invalid("d_sae", cfg.d_sae, "the decoder-orthogonality penalty (ortho_coefficient > 0) needs >= 2 latents to have a pair")


def _check_contrastive_fields(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    check_real(cfg, "contrastive_coefficient", ">= 0 (a loss coefficient)", 0.0)
    check_integer(cfg, "contrastive_warm_up_steps", 0, ">= 0")
    check_integer(cfg, "projection_dim", 1, ">= 1", optional="for exact similarities")
    check_real(
        cfg,
        "contrastive_temperature",
        f"> 0, at least {MIN_CONTRASTIVE_TEMPERATURE:g} (the InfoNCE temperature; its gradient scales as 1 / temperature)",
        MIN_CONTRASTIVE_TEMPERATURE,
    )
    check_integer(cfg, "projection_seed", 0, "in [0, 2**32)", maximum=MAX_PROJECTION_SEED)


def validate_sparsity_base(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
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

    defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
    for field, bases in BASES_READING_FIELD.items():
        value = getattr(cfg, field)
        if base not in bases and value != defaults[field]:
            raise invalid(
                field,
                value,
                f"only sparsity_base={' or '.join(map(repr, bases))} reads it, and "
                f"sparsity_base={base!r}; set sparsity_base, or leave {field} at its "
                f"default {defaults[field]!r}",
            )
    if base == "relu_l1":
        return
    if not 0 < cfg.k <= cfg.d_sae:
        raise invalid("k", cfg.k, f"it must satisfy 0 < k <= d_sae={cfg.d_sae}")
    if base == "topk" and cfg.k != int(cfg.k):
        raise invalid("k", cfg.k, "sparsity_base='topk' keeps a whole number of latents per input")
    if cfg.aux_loss_coefficient > 0 and cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        # SAELens raises this only once a latent dies, possibly hours into the run.
        raise invalid(
            "normalize_activations",
            cfg.normalize_activations,
            f"SAELens's TopK auxiliary loss (sparsity_base={base!r}, aux_loss_coefficient="
            f"{cfg.aux_loss_coefficient}) does not support it; use 'none', "
            "'expected_average_only_in' or 'covariance_whitening', or aux_loss_coefficient=0",
        )


def validate_matryoshka_fields(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    """Raise a ValueError naming the field, the value and what is allowed, for the
    fields only ``sparsity_base='matryoshka_batchtopk'`` reads. SAELens checks the widths
    only when it builds the SAE; here they are checked with the config."""
    base = cfg.sparsity_base
    check_bool(cfg, "use_matryoshka_aux_loss")
    own = {"matryoshka_widths": [], "use_matryoshka_aux_loss": False, "matryoshka_ortho_pairs": "all"}
    if base != "matryoshka_batchtopk":
        for name, default in own.items():
            value = getattr(cfg, name)
            if value != default:
                raise invalid(
                    name,
                    value,
                    "only sparsity_base='matryoshka_batchtopk' reads it, and "
                    f"sparsity_base={base!r}; set sparsity_base, or leave {name} at its "
                    f"default {default!r}",
                )
        return
    widths = cfg.matryoshka_widths
    if not isinstance(widths, (list, tuple)):
        raise invalid("matryoshka_widths", widths, f"it must be a list of increasing widths{_type_note(widths)}")
    if not widths:
        raise invalid(
            "matryoshka_widths", widths,
            "sparsity_base='matryoshka_batchtopk' needs the nested prefix widths, e.g. "
            f"[{cfg.d_sae // 8}, {cfg.d_sae // 4}, {cfg.d_sae // 2}, {cfg.d_sae}]",
        )
    if any(not isinstance(w, int) or isinstance(w, bool) or w <= 0 for w in widths):
        raise invalid("matryoshka_widths", widths, "the widths must be positive integers")
    if any(a >= b for a, b in zip(widths, widths[1:])) or widths[-1] > cfg.d_sae:
        raise invalid(
            "matryoshka_widths", widths,
            f"the widths must be strictly increasing and at most d_sae={cfg.d_sae}",
        )
    pairs = cfg.matryoshka_ortho_pairs
    check_choice(cfg, "matryoshka_ortho_pairs", MATRYOSHKA_ORTHO_PAIRS, "values")
    if pairs != "all" and cfg.ortho_mode == "chunked":
        raise invalid(
            "matryoshka_ortho_pairs", pairs,
            "ortho_mode='chunked' penalises random chunks of the whole dictionary; use "
            "'exact' or 'close_pairs', or matryoshka_ortho_pairs='all'",
        )
    if pairs != "all" and cfg.ortho_overfull_chunks > 1:
        raise invalid(
            "matryoshka_ortho_pairs", pairs,
            f"ortho_overfull_chunks={cfg.ortho_overfull_chunks} estimates the term on random "
            "chunks of the whole dictionary; use ortho_overfull_chunks=1, or matryoshka_ortho_pairs='all'",
        )


def check_sparsity_base(base: Any) -> None:
    if not isinstance(base, str) or base not in SPARSITY_BASES:
        raise invalid("sparsity_base", base, f"allowed bases are {', '.join(SPARSITY_BASES)}")


def check_batch_and_budget(batch_field: str, batch_size: Any, budget_field: str, budget: Any) -> None:
    """The run's batch size and budget (SAELens's runner/trainer fields): integers,
    batch >= 1 and budget >= 0, checked before the step count is divided out of them."""
    if not is_integer(batch_size) or batch_size < 1:
        raise invalid(batch_field, batch_size, "the training batch must be an integer >= 1")
    if not is_integer(budget) or budget < 0:
        raise invalid(budget_field, budget, "the training budget must be an integer >= 0")
