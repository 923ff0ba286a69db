"""The process entry point (the `db-deploy` script, `python -m deployer`, the container's
entrypoint.py): a small parent that runs the deployer as its child.

Standard library only (deployer/cancel.py too). The child is a `fork` of the parent, not a new
interpreter: it starts where the parent is, with the interpreter, `site` and these few modules
already loaded, so the parent costs a fork and a wait, not a second interpreter start-up
(bench/README.md measures it). POSIX only, as the pipe handed to the child always was.

The child runs the deployer with `DB_DEPLOY_CHILD` naming the write end of a pipe. The parent
forwards SIGINT and SIGTERM to the child (as the container's PID 1 too: without handlers of its
own PID 1 would ignore them) and, once the child is done, checks that it said so on the pipe
(`cancel.finished`, written once the outputs, summary and report are written). A child that
ended without saying so (a revision's `os._exit(0)`, an interpreter crash, a signal) never
passes for a success: the parent writes the failed outputs, summary and report itself
(deployer/cli.py: `report_unfinished`) and exits 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Any

from deployer.cancel import CHILD_ENV, DONE, SIGNALS, is_child


def main() -> int:
    """The process entry point."""
    if is_child():
        return child()
    pid, read, previous = fork()
    if not pid:
        return child()
    returncode, done, signum = supervise(pid, read, previous)
    if done:
        return exit_code(returncode)
    from deployer.cli import report_unfinished

    return report_unfinished(unfinished_message(returncode), signum)


def child() -> int:
    from deployer.cli import console_main

    return console_main()


# --------------------------------------------------------------------------- the parent

_received: list[int] = []  # the signals the parent forwarded, first first
_child_pid = 0


def _forward(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    if _child_pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(_child_pid, signum)


Handlers = dict[signal.Signals, Any]


def _restore(handlers: Handlers) -> None:
    for s, handler in handlers.items():
        if handler is not None:  # None: not set from Python
            signal.signal(s, handler)


def fork() -> tuple[int, int, Handlers]:
    """Fork the child. In the parent: (the child's pid, the read end of the completion pipe,
    the signal handlers to restore once it is done), SIGINT/SIGTERM forwarded to the child from
    now on. In the child: (0, -1, {}), with `DB_DEPLOY_CHILD` set and the signal handlers of a
    fresh interpreter. Both signals are blocked across the fork, so that none is lost: one that
    comes meanwhile reaches the parent's handler, which forwards it."""
    global _child_pid
    read, write = os.pipe()
    parent_pid = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    previous: Handlers = {s: signal.signal(s, _forward) for s in SIGNALS}
    for stream in (sys.stdout, sys.stderr):  # nothing written twice
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        pid = os.fork()
    except BaseException:
        _restore(previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        raise
    if pid == 0:
        os.close(read)
        os.environ[CHILD_ENV] = f"{write},{parent_pid}"
        _restore(previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        return 0, -1, {}
    os.close(write)
    _child_pid = pid
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    return pid, read, previous


def supervise(pid: int, read: int, previous: Handlers) -> tuple[int, bool, int]:
    """Wait for the child `pid`, forwarding SIGINT/SIGTERM to it. Returns its exit code
    (negative: the signal that ended it), whether it said it finished, and the first signal
    forwarded (0: none)."""
    try:
        _, status = os.waitpid(pid, 0)  # retried after each forwarded signal (PEP 475)
    finally:
        _restore(previous)
    returncode = os.waitstatus_to_exitcode(status)
    os.set_blocking(read, False)  # a grandchild may hold the pipe open: read what is there
    try:
        said = os.read(read, 64)
    except BlockingIOError:
        said = b""
    finally:
        os.close(read)
    return returncode, said.startswith(DONE), _received[0] if _received else 0


def unfinished_message(returncode: int) -> str:
    how = f"exit {returncode}"
    if returncode < 0:
        try:
            how = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    return f"the deployer ended without finishing ({how})"


def exit_code(returncode: int) -> int:
    """The parent's exit code for a child that finished: its own; after a signal at exit,
    130/143 for SIGINT/SIGTERM, else 1."""
    if returncode >= 0:
        return returncode
    return 128 - returncode if -returncode in SIGNALS else 1
