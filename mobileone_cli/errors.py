"""Errors the tool reports to a user, each with its documented exit code.

0 ok; 1 verification failed; 2 bad input or usage; 3 internal error (a bug: please report it).
"""
from __future__ import annotations

from typing import Optional

__all__ = ["MobileOneError", "BadInput", "VerificationFailed", "EXIT_OK", "EXIT_MISMATCH",
           "EXIT_BAD_INPUT", "EXIT_INTERNAL"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class MobileOneError(Exception):
    """An error with a one-line message for the user and an optional hint."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInput(MobileOneError):
    """The input (file, option, checkpoint content) cannot be used: exit 2."""

    exit_code = EXIT_BAD_INPUT


class VerificationFailed(MobileOneError):
    """The two models do not compute the same function within tolerance: exit 1."""

    exit_code = EXIT_MISMATCH
