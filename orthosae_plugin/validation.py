"""Generic checks of config fields, each refusal a ``ValueError`` that names the field,
the value and the rule::

    ortho_coefficient='1000' is invalid: it must be a finite number >= 0 (a loss coefficient), not a str

The rules of the ``ortho_contrastive`` config that use them sit beside its fields
(``config.py``), those of the sparsity bases' fields in ``bases.py``, that of
``resume_allow_changes`` in ``checkpoints.py``; those of the run's budget in
``run_budget.py``.
"""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import MISSING, fields
from typing import Any


def invalid(field: str, value: Any, rule: str) -> ValueError:
    """The one error format: field, value, rule."""
    return ValueError(f"{field}={value!r} is invalid: {rule}")


def closest_name(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``name``, or ``''``."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def type_note(value: Any) -> str:
    """The end of a refusal that names the type a value should not have had."""
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
        raise invalid(field, value, f"it must be an integer {full_rule}{type_note(value)}")
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
        note = type_note(value) if not isinstance(value, numbers.Real) or isinstance(value, bool) else ""
        raise invalid(field, value, f"it must be a finite number {full_rule}{note}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if below or above:
        raise invalid(field, value, f"it must be {full_rule}")
    if type(value) not in (int, float):
        setattr(cfg, field, float(value))


def field_defaults(cfg_class: type) -> dict[str, Any]:
    """Each field's default, read from the dataclass ``cfg_class``."""
    return {
        f.name: f.default_factory() if f.default_factory is not MISSING else f.default
        for f in fields(cfg_class)
    }


def check_bool(cfg: Any, field: str) -> None:
    value = getattr(cfg, field)
    if not isinstance(value, bool):
        raise invalid(field, value, f"it must be True or False{type_note(value)}")


def check_choice(cfg: Any, field: str, choices: tuple[str, ...], what: str) -> None:
    value = getattr(cfg, field)
    if not isinstance(value, str) or value not in choices:
        raise invalid(field, value, f"allowed {what} are {', '.join(choices)}")


# Keys of a saved config that are not fields of it: SAELens's `to_dict` writes the first
# two; its disk loader adds the others (`read_sae_components_from_disk` and
# `handle_pre_6_0_config` in sae_lens/loading/pretrained_sae_loaders.py).
SAVED_CONFIG_EXTRA_KEYS = (
    "architecture", "metadata", "finetuning_scaling_factor", "prepend_bos",
    "dataset_trust_remote_code", "sae_lens_training_version", "activation_fn", "neuronpedia_id",
)


def check_config_dict(config_dict: Any, cfg_class: type) -> dict[str, Any]:
    """The dict (or JSON) form of an ``ortho_contrastive`` training config, checked
    before SAELens builds the config from it (SAELens drops unknown keys silently).

    Refuses a key that is not a field of ``cfg_class``, naming the closest valid one.
    A dict written by an earlier version of the plugin (SAELens's ``to_dict`` form, with
    ``metadata``, but without ``ortho_anneal_steps_derived``) held a horizon derived
    from its run's budget: it is marked as derived, so the next run derives its own.
    Returns the dict to build from (a copy where it changed).
    """
    if not isinstance(config_dict, dict):
        raise ValueError(f"config_dict={config_dict!r} is invalid: it must be a dict, not a {type(config_dict).__name__}")
    valid = [f.name for f in fields(cfg_class)]
    for key in config_dict:
        if key not in valid and key not in SAVED_CONFIG_EXTRA_KEYS:
            raise invalid(
                key if isinstance(key, str) else repr(key), config_dict[key],
                f"it is not a setting of the ortho_contrastive config{closest_name(str(key), valid)}",
            )
    if (
        "metadata" in config_dict
        and "ortho_anneal_steps_derived" not in config_dict
        and config_dict.get("ortho_anneal_steps") is not None
    ):
        return {**config_dict, "ortho_anneal_steps_derived": True}
    return config_dict
