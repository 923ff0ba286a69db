"""Cancelling a run: SIGINT and SIGTERM in the deployer's process (the child of
deployer/supervise.py's parent), and the record that the run finished.

While the command runs (`cancellable`), the first signal raises `Cancelled` in the main thread
(psycopg then cancels the running statement on the server itself, and the open revision rolls
back as the exception unwinds); if the main thread has not taken it within half a second (a
driver blocked in C), the registered hooks cancel the statements from another session. Later
signals are only noted: the clean-up and the report are not interrupted. `finished` tells the
parent that the outputs, summary and report are written.

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

CHILD_ENV = "DB_DEPLOY_CHILD"  # "you are the child": the completion pipe's file descriptor
DONE = b"done\n"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def is_child() -> bool:
    return CHILD_ENV in os.environ


def _child_env() -> tuple[int, int]:
    """(the completion pipe's descriptor, the parent's pid) from `CHILD_ENV`: "FD,PID"."""
    fd, _, pid = os.environ.get(CHILD_ENV, "").partition(",")
    return (int(fd) if fd.isdigit() else -1), (int(pid) if pid.isdigit() else 0)


def finished() -> None:
    """In the child: the run is complete (outputs, summary and report written)."""
    fd, _ = _child_env()
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.write(fd, DONE)
            os.close(fd)


def die_with_parent() -> None:
    """In the child: a SIGKILL of the parent is one of the child too (Linux: PR_SET_PDEATHSIG),
    as when the whole container is killed; no deploy goes on unwatched."""
    _, parent = _child_env()
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before that
        os.kill(os.getpid(), signal.SIGKILL)


class Cancelled(KeyboardInterrupt):
    """The run was cancelled by SIGINT (exit 130) or SIGTERM (exit 143)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"cancelled by {signal.Signals(signum).name}")


class Cancellation:
    """The child's SIGINT/SIGTERM handling (see the module's docstring). `hooks`: called from a
    thread of their own when the main thread has not taken the signal in time; each cancels
    what the run has running on the server."""

    GRACE = 0.5

    def __init__(self) -> None:
        self.signum = 0
        self.active = False
        self.raised = False
        self.hooks: list[Callable[[], None]] = []
        self._taken = threading.Event()
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = -1

    def install(self) -> None:
        global CURRENT
        CURRENT = self
        die_with_parent()
        for s in SIGNALS:
            signal.signal(s, self._handler)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="db-deploy-cancel", daemon=True).start()

    @contextlib.contextmanager
    def cancellable(self) -> Iterator[None]:
        """While the command runs: the first signal raises Cancelled (at once if one came
        before)."""
        self.active = True
        try:
            if self.signum and not self.raised:
                self._raise()
            yield
        finally:
            self.active = False

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        if not self.signum:
            self.signum = signum
        self._taken.set()
        if self.active and not self.raised:
            self._raise()

    def _raise(self) -> None:
        self.raised = True
        raise Cancelled(self.signum)

    def _watch(self) -> None:
        """Woken by the C-level signal handler (set_wakeup_fd) even when the main thread is
        blocked in C: if the Python handler has not run after GRACE, cancel from here."""
        while True:
            try:
                os.read(self._read, 1)
            except OSError:
                return
            deadline = time.monotonic() + self.GRACE
            while time.monotonic() < deadline and not self._taken.is_set():
                time.sleep(0.02)
            if not self._taken.is_set() or (self.active and not self.raised):
                for hook in list(self.hooks):
                    with contextlib.suppress(Exception):
                        hook()
            self._taken.clear()


CURRENT: Cancellation | None = None  # the child's, once installed


@contextlib.contextmanager
def cancellable() -> Iterator[None]:
    """While the command runs, a signal cancels it (a no-op outside the child process)."""
    if CURRENT is None:
        yield
        return
    with CURRENT.cancellable():
        yield
