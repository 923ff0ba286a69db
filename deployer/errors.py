"""The failures a run can end in, each with its documented exit code (see the interface spec)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3


# The `error-class` output's values (the interface spec: more may be added, none renamed).
ERROR_CLASSES = (
    "config",
    "unreachable",
    "auth",
    "lock-busy",
    "lock-timeout",
    "sql-error",
    "python-error",
    "checksum-mismatch",
    "seed-error",
    "smoke-failed",
    "risk-gate",
    "cancelled",
    "security-gate",
    "backup-failed",
    "restore-failed",
    "drift",
    "internal",
)


class DeployError(Exception):
    """A failure with a one-line, secret-free message meant for the user.

    `error_class`: its class when the raiser knows it better than `classify` would (a subclass
    may set it too); `obj`: the blocker or the failing object, when there is one; `failure`:
    where a revision failed (a `results.Failure`)."""

    exit_code = EXIT_FAILED
    error_class = ""

    def __init__(
        self,
        message: str,
        *,
        step: str = "",
        detail: str = "",
        error_class: str = "",
        obj: str = "",
        failure: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.detail = detail
        if error_class:
            self.error_class = error_class
        self.obj = obj
        self.failure = failure


class ConfigError(DeployError):
    """Bad input or configuration: nothing was changed (exit 2)."""

    exit_code = EXIT_BAD_INPUT
    error_class = "config"


class UnreachableError(DeployError):
    """The database could not be reached, or the deploy lock not taken in time (exit 3)."""

    exit_code = EXIT_UNREACHABLE
    error_class = "unreachable"


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


# A connection refused for who we are, not for where we went (libpq's and the server's words).
_AUTH = re.compile(
    r"password authentication failed|authentication failed|no password supplied|"
    r"role \".*\" does not exist|no pg_hba.conf entry|permission denied for database",
    re.IGNORECASE,
)
# Server errors that say the connection, not the statement, failed (SQLSTATE classes 08, 57P).
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")
_STEP_CLASSES = {
    "seed": "seed-error",
    "smoke": "smoke-failed",
    "risk": "risk-gate",
    "security": "security-gate",
    "backup": "backup-failed",
    "restore": "restore-failed",
    "drift": "drift",
    "status": "config",  # env.py migrated elsewhere: the project's configuration
    "migrate": "config",  # …said by the version table (a revision's own failure has `failure`)
    "lock": "lock-busy",
}


def sqlstate(exc: BaseException | None) -> str:
    """The SQLSTATE of a server error (the driver's, or a SQLAlchemy error wrapping it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for candidate in (getattr(exc, "orig", None), exc):
            state = getattr(candidate, "sqlstate", None)
            if isinstance(state, str) and state:
                return state
        exc = exc.__cause__ or exc.__context__
    return ""


def classify(exc: BaseException, step: str = "") -> str:
    """The run's `error-class` for the failure `exc` raised in `step`: the one place where
    failures are sorted (the interface spec's names; see ERROR_CLASSES)."""
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ in {"Cancelled", "CancelledRun"}:
        return "cancelled"
    if not isinstance(exc, DeployError):
        return _classify_server_error(exc) or "internal"
    if isinstance(exc, UnreachableError):
        if exc.error_class != "unreachable":
            return exc.error_class
        if (exc.step or step) == "lock":
            return "lock-busy"
        return "auth" if _AUTH.search(exc.message) else "unreachable"
    if exc.error_class:
        return exc.error_class
    failure = exc.failure
    if failure is not None:
        return failure_class(failure)
    return _STEP_CLASSES.get(exc.step or step, "internal")


def failure_class(failure: Any) -> str:
    """The class of a revision's failure (a `results.Failure`): by the server's SQLSTATE, else
    a Python exception in the revision."""
    state = getattr(failure, "sqlstate", "") or ""
    if state:
        return _state_class(state)
    if getattr(failure, "exception", ""):
        return "python-error"
    return "sql-error"


def _classify_server_error(exc: BaseException) -> str:
    state = sqlstate(exc)
    return _state_class(state) if state else ""


def _state_class(state: str) -> str:
    if state == "55P03":  # lock_not_available: lock_timeout
        return "lock-timeout"
    if state.startswith("28"):  # invalid_authorization_specification, invalid_password
        return "auth"
    if state.startswith(_CONNECTION_STATES):
        return "unreachable"
    return "sql-error"
