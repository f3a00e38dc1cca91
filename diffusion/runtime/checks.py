"""Argument checks at component boundaries.

Every check raises :class:`ConfigError`, one line naming the config key to change (``"trainer.lr"``), so ``run.py``
prints it and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from numbers import Integral, Real
from typing import Any

EXIT_USER_ERROR = 2  # the exit status of a user mistake (a bad key, value or file), as Hydra's own errors


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message is one line naming the key to fix."""


def check_choice(value: Any, key: str, choices: Collection[Any]) -> Any:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_bool(value: Any, key: str) -> bool:
    """``true`` or ``false`` (YAML booleans), not a truthy string or number."""
    return bool(check_choice(value, key, (True, False)))


def check_int(value: Any, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (bools refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    _check_range(value, key, minimum, maximum, inclusive=True)
    return int(value)


def check_float(
    value: Any,
    key: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    inclusive: bool = True,
) -> float:
    """A finite real number within the bounds; ``inclusive=False`` makes both bounds strict."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    _check_range(value, key, minimum, maximum, inclusive=inclusive)
    return float(value)


def check_betas(betas: Any, key: str) -> tuple[float, float]:
    """Adam's (beta1, beta2), each in [0, 1)."""
    message = f"{key} must be two numbers [beta1, beta2] in [0, 1), got {betas!r}"
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
        raise ConfigError(message)
    if any(check_float(beta, key, 0.0, 1.0) == 1.0 for beta in betas):
        raise ConfigError(message)
    return float(betas[0]), float(betas[1])


def check_positive(value: Any, key: str) -> float:
    return check_float(value, key, minimum=0.0, inclusive=False)


def _check_range(value: Any, key: str, minimum: Any, maximum: Any, *, inclusive: bool) -> None:
    if inclusive:
        low_ok = minimum is None or value >= minimum
        high_ok = maximum is None or value <= maximum
    else:
        low_ok = minimum is None or value > minimum
        high_ok = maximum is None or value < maximum
    if low_ok and high_ok:
        return
    low = "-inf" if minimum is None else minimum
    high = "inf" if maximum is None else maximum
    brackets = "[]" if inclusive else "()"
    raise ConfigError(f"{key} must be in {brackets[0]}{low}, {high}{brackets[1]}, got {value!r}")
