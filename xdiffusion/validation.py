"""Argument checks shared by every layer: one message style, numpy scalars accepted.

Each check returns the value converted to a plain Python ``int``/``float``/``bool`` (so a
``numpy.int64`` from an array or a ``numpy.float32`` from a reduction works wherever a Python
number does) or raises ``ValueError``/``TypeError`` naming the argument and what it accepts.
``bool`` is refused where a number is expected: ``steps=True`` is a mistake, not 1. Integers
beyond int64 (:data:`INT64_MAX`) and finite reals beyond float32's range
(:data:`FLOAT32_MAX`) are refused too, whatever the bounds: they would overflow later, deep
inside numpy or torch ("Overflow when unpacking long long", "math range error").

Pure Python and numpy: imported by ``core/`` as well as the xarray layers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

import numpy as np

__all__ = [
    "FLOAT32_MAX",
    "INT64_MAX",
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "check_positive_int",
    "check_seed",
    "is_int",
    "is_number",
]


#: Largest integer any argument may take: counts, steps and seeds end up in int64 tensors,
#: numpy arrays or torch generators, where a larger value overflows deep inside.
INT64_MAX = 2**63 - 1
#: Largest finite magnitude of a real argument: the models compute in float32, where a
#: larger value becomes infinite.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for ``bool`` (and everything else)."""
    return isinstance(value, numbers.Integral | np.integer) and not isinstance(
        value, bool | np.bool_
    )


def is_number(value: Any) -> bool:
    """True for real Python/numpy numbers (integers and floats), False for ``bool``."""
    return isinstance(value, numbers.Real | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
    what: str | None = None,
) -> int | None:
    """An integer in ``[minimum, maximum]`` (either end optional), as a Python ``int``.

    Parameters
    ----------
    value
        The argument as given.
    name
        Its name, used in the message.
    minimum, maximum
        Inclusive bounds; None for unbounded.
    allow_none
        Accept (and return) ``None``.
    """
    if value is None and allow_none:
        return None
    if (
        not is_int(value)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        if what is not None:
            pass
        elif minimum == 1 and maximum is None:
            what = "a positive integer"
        elif minimum == 0 and maximum is None:
            what = "a non-negative integer"
        elif minimum is not None and maximum is not None:
            what = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            what = f"an integer ≥ {minimum}"
        elif maximum is not None:
            what = f"an integer ≤ {maximum}"
        else:
            what = "an integer"
        if allow_none:
            what += " or None"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if abs(int(value)) > INT64_MAX:  # within the bounds given, but beyond int64
        raise ValueError(
            f"{name} must be an integer of magnitude below 2**63 (int64), got {value!r}"
        )
    return int(value)


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """An integer ≥ 1 (``n``, ``steps``, ``batch_size``, ``frames`` …)."""
    return check_int(value, name, minimum=1, allow_none=allow_none)


def check_seed(value: Any, name: str = "seed") -> int:
    """A non-negative integer seed."""
    return check_int(value, name, minimum=0)  # type: ignore[return-value]


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    allow_none: bool = False,
    allow_inf: bool = False,
) -> float | None:
    """A real number (finite unless ``allow_inf``) in the given range, as a Python float.

    Parameters
    ----------
    value
        The argument as given.
    name
        Its name, used in the message.
    minimum, maximum
        Inclusive bounds (``minimum`` exclusive with ``exclusive_minimum``); None for none.
    allow_none
        Accept (and return) ``None``.
    allow_inf
        Accept ±inf.
    """
    if value is None and allow_none:
        return None
    ok = is_number(value) and not math.isnan(float(value))
    if ok and not allow_inf:
        ok = math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) > minimum if exclusive_minimum else float(value) >= minimum
    if ok and maximum is not None:
        ok = float(value) <= maximum
    if not ok:
        if minimum == 0 and maximum is None:
            what = "a positive number" if exclusive_minimum else "a non-negative number"
        else:
            what = "a finite number" if not allow_inf else "a number"
            if minimum is not None:
                what += f" {'>' if exclusive_minimum else '≥'} {minimum:g}"
            if maximum is not None:
                what += f"{' and' if minimum is not None else ''} ≤ {maximum:g}"
        if allow_none:
            what += " or None"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if math.isfinite(float(value)) and abs(float(value)) > FLOAT32_MAX:
        raise ValueError(
            f"{name} must be within float32's range (magnitude at most {FLOAT32_MAX:.4g}; "
            f"the models compute in float32), got {value!r}"
        )
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """``True``/``False`` (numpy booleans too); a number or string is refused."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Collection[str]) -> str:
    """One of ``choices``; the message lists them."""
    if not isinstance(value, str) or value not in choices:
        names = [repr(c) for c in choices]
        valid = " or ".join(names) if len(names) == 2 else "one of " + ", ".join(sorted(names))
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return value
