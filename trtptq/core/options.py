"""Checks for option values, shared by the option dataclasses' `__post_init__`.

Each bad value gets one line that names the option as the CLI spells it, the
value and the fix, so the CLI and the Python API report it the same way and
before any work starts.
"""

from __future__ import annotations

from collections.abc import Collection

from trtptq.core.errors import TrtptqError

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes of activations one calibration pass may hold (--memory-budget)


def option_error(flag: str, value: object, problem: str, fix: str) -> TrtptqError:
    """`--flag value problem; fix.`"""
    return TrtptqError(f"{flag} {value} {problem}; {fix}.")


def check_count(flag: str, value: int | None, what: str) -> None:
    """`value` is None (the option's default) or an integer >= 1."""
    if value is not None and value < 1:
        raise option_error(flag, value, "is not a positive number", f"give at least 1 {what}, or leave {flag} out")


def check_choice(flag: str, value: str, choices: Collection[str]) -> None:
    if value not in choices:
        raise option_error(flag, repr(value), "is not a choice", f"use one of {', '.join(choices)}")


def check_names(flag: str, value: object) -> None:
    """A sequence of names, not one string: a bare string would be read character by character and match nothing."""
    if isinstance(value, str):
        raise option_error(flag, repr(value), "is one string, not a list of names", f"pass ({value!r},)")
