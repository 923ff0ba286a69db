"""The process entry point (the `db-deploy` script, `python -m deployer`, the container's
entrypoint.py): a small parent that runs the deployer as its child.

Standard library only (deployer/cancel.py too): the parent costs an interpreter start-up and one
`subprocess` (bench/README.md measures it).

The parent runs the deployer as a child process of the same interpreter, with `DB_DEPLOY_CHILD`
naming the write end of a pipe. It forwards SIGINT and SIGTERM to the child (as the container's
PID 1 too: without handlers of its own PID 1 would ignore them) and, once the child is done,
checks that it said so on the pipe (`cancel.finished`, written once the outputs, summary and
report are written). A child that ended without saying so (a revision's `os._exit(0)`, an
interpreter crash, a signal) never passes for a success: the parent writes the failed outputs,
summary and report itself (deployer/cli.py: `report_unfinished`) and exits 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from types import FrameType

from deployer.cancel import CHILD_ENV, DONE, SIGNALS, is_child


def main() -> int:
    """The process entry point."""
    if is_child():
        from deployer.cli import console_main

        return console_main()
    returncode, done, signum = parent(sys.argv[1:])
    if done:
        return exit_code(returncode)
    from deployer.cli import report_unfinished

    return report_unfinished(unfinished_message(returncode), signum)


# --------------------------------------------------------------------------- the parent


def parent(argv: list[str]) -> tuple[int, bool, int]:
    """Run the deployer with `argv` as a child process; forward SIGINT/SIGTERM to it. Returns its
    exit code (negative: the signal that ended it), whether it said it finished, and the first
    signal forwarded (0: none)."""
    read, write = os.pipe()
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    code = (
        f"import sys; sys.path.insert(0, {root!r}); "
        "from deployer.supervise import main; sys.exit(main())"
    )
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]  # -I, -X…
    env = {**os.environ, CHILD_ENV: f"{write},{os.getpid()}"}
    children: list[subprocess.Popen[bytes]] = []
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in SIGNALS}
    try:
        try:
            children.append(
                subprocess.Popen(
                    [sys.executable, *flags, "-c", code, *argv], env=env, pass_fds=(write,)
                )
            )
        finally:
            os.close(write)
        if received:  # before the child existed
            children[0].send_signal(received[0])
        returncode = children[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    os.set_blocking(read, False)  # a grandchild may hold the pipe open: read what is there
    try:
        said = os.read(read, 64)
    except BlockingIOError:
        said = b""
    finally:
        os.close(read)
    return returncode, said.startswith(DONE), received[0] if received else 0


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
