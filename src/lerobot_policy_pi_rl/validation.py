"""Config validation helpers: one error style for every config class of the package (the bad value, and what
is allowed)."""

from __future__ import annotations


def require(condition: bool, message: str) -> None:
    """Raise `ValueError(message)` unless `condition` holds."""
    if not condition:
        raise ValueError(message)


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a `ValueError` naming `name=value` and the allowed values unless `value` is one of them."""
    require(value in allowed, f"{name}={value!r} is not valid; allowed: {', '.join(allowed)}")
