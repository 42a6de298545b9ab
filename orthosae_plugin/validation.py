"""Generic checks of config fields, each refusal a ``ValueError`` that names the field,
the value and the rule::

    ortho_coefficient='1000' is invalid: it must be a finite number >= 0 (a loss coefficient), not a str

The rules of the ``ortho_contrastive`` config that use them sit beside its fields
(``config.py``); those of the run's budget in ``run_budget.py``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def invalid(field: str, value: Any, rule: str) -> ValueError:
    """The one error format: field, value, rule."""
    return ValueError(f"{field}={value!r} is invalid: {rule}")


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


def check_bool(cfg: Any, field: str) -> None:
    value = getattr(cfg, field)
    if not isinstance(value, bool):
        raise invalid(field, value, f"it must be True or False{type_note(value)}")


def check_choice(cfg: Any, field: str, choices: tuple[str, ...], what: str) -> None:
    value = getattr(cfg, field)
    if not isinstance(value, str) or value not in choices:
        raise invalid(field, value, f"allowed {what} are {', '.join(choices)}")
