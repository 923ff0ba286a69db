"""The failures a run can end in, each with its documented exit code (see the interface spec)."""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3


class DeployError(Exception):
    """A failure with a one-line, secret-free message meant for the user."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, step: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.detail = detail


class ConfigError(DeployError):
    """Bad input or configuration: nothing was changed (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class UnreachableError(DeployError):
    """The database could not be reached, or the deploy lock not taken in time (exit 3)."""

    exit_code = EXIT_UNREACHABLE


class StepFailed(DeployError):
    """A migration, the seed, the status check or the smoke test failed (exit 1)."""

    exit_code = EXIT_FAILED


def describe_exception(exc: BaseException) -> str:
    """An exception from user code (env.py, a revision, a seed) on one line, with its type."""
    if isinstance(exc, SyntaxError):
        name = Path(exc.filename or "?").name
        return f"syntax error in {name} line {exc.lineno}: {exc.msg}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
