"""Deploy a fleet inside one job: one child process per target (`python -m deployer deploy`,
so that each target's env.py runs in an interpreter of its own), at most `max_parallel` at once,
wave by wave.

- Wave N+1 starts only when every target of the waves before it succeeded (or had nothing to
  do); otherwise its targets are `not-reached`.
- Within a wave a failed target never stops the others, unless `fail_fast`: then no further
  target of the wave starts (the running ones finish: a migration is not cut half-way) and the
  rest are `not-reached`.
- SIGINT/SIGTERM: forwarded to every running child, which ends as a deploy does when cancelled;
  the runner waits for them (at most `grace` seconds, then SIGKILL), starts nothing more, and
  reports. Children run in sessions of their own, so a terminal's Ctrl-C reaches them once,
  through the runner.
- Each target's inputs reach its child as `INPUT_<NAME>` variables; the job's own `INPUT_*`,
  GitHub file commands and Slack webhook are not passed on (one summary, one Slack message for
  the fleet). Its JSON report, log and record land in the reports folder, which (with what is
  in it) belongs to the workspace's owner when the fleet runs as root (a container action).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from deployer.files import give_to_owner
from deployer.fleet.reports import from_report, write_record
from deployer.fleet.spec import Fleet, Target
from deployer.results.fleet import FleetResult, TargetResult
from deployer.results.run import utcnow

# Not passed to a child: the job's inputs (the child gets its own), GitHub's file commands (the
# fleet writes one summary and one set of outputs), Slack (one message for the fleet).
STRIPPED = (
    "GITHUB_ACTIONS",
    "GITHUB_OUTPUT",
    "GITHUB_STEP_SUMMARY",
    "GITHUB_ENV",
    "GITHUB_PATH",
    "GITHUB_STATE",
    "SLACK_WEBHOOK_URL",
    "DB_DEPLOY_COMMAND",
    "DB_DEPLOY_REPORT_FILE",
    "DB_DEPLOY_FLEET_TARGETS",
    "DB_DEPLOY_CHILD",  # deployer/cancel.py: each child is a supervised deployer of its own
)
POLL = 0.02  # seconds between looks at the running children
GRACE = 60.0  # seconds a cancelled child is given before SIGKILL


def default_parallel() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Child:
    target: Target
    record: TargetResult
    process: subprocess.Popen[bytes]
    report: Path
    log: Path
    started: float


def _read_outcome(child: _Child, cancelled: int) -> None:
    """Fill the target's record from its process: the exit code, the wall time, and what its
    JSON report says (else the last line of its log); `cancelled`: the signal that cancelled
    the run, 0 if none."""
    record = child.record
    code = child.process.returncode
    record.exit_code = code
    record.seconds = round(time.monotonic() - child.started, 3)
    try:
        data = json.loads(child.report.read_text(encoding="utf-8"))
        seconds = record.seconds
        from_report(record, data)
        record.seconds = seconds  # the process's wall time, start-up included
        record.exit_code = code
    except (OSError, ValueError):
        record.status = "failed"
        record.error = _last_line(child.log) or (
            f"the deploy process ended with exit code {code} and wrote no report"
        )
        record.failed_step = record.failed_step or "fleet"
        record.finished_at = utcnow().isoformat()
    if cancelled and (record.status == "failed" or code in (-2, -15, 130, 143)):
        record.status = "cancelled"
        record.error = record.error or f"cancelled by {signal.Signals(cancelled).name}"


@dataclass
class FleetRunner:
    """One run of a fleet. `inputs`: what the command was given (flags, `INPUT_*`), kebab-case
    name → text; it wins over every target's own keys."""

    fleet: Fleet
    reports_dir: Path
    workspace: Path
    inputs: Mapping[str, str] = field(default_factory=dict)
    max_parallel: int = 0
    fail_fast: bool = False
    command: str = "deploy"
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stripped: tuple[str, ...] = ()  # more variables not passed on (the fleet's own settings)
    on_event: Callable[[str], None] = lambda message: None
    grace: float = GRACE
    cancelled: int = 0  # the signal that cancelled the run
    _running: list[_Child] = field(default_factory=list)

    def run(self) -> FleetResult:
        parallel = self.max_parallel or default_parallel()
        result = FleetResult(
            max_parallel=parallel,
            fail_fast=self.fail_fast,
            waves=self.fleet.waves,
            reports_dir=str(self.reports_dir),
        )
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        give_to_owner(self.reports_dir, self.workspace)  # running as root: the owner's folder
        records = {t.name: TargetResult(name=t.name, wave=t.wave) for t in self.fleet.targets}
        result.targets = list(records.values())
        with self._signals():
            for wave in self.fleet.waves:
                members = [t for t in self.fleet.targets if t.wave == wave]
                if result.stopped_by or self.cancelled:
                    for t in members:
                        self._not_reached(records[t.name])
                    continue
                self.on_event(f"wave {wave}: {len(members)} target(s), {parallel} at once")
                self._wave(members, records, parallel, result)
                if not self.cancelled and any(records[t.name].failed for t in members):
                    failed = sum(1 for t in members if records[t.name].failed)
                    result.stopped_by = result.stopped_by or (
                        f"{failed} target(s) of wave {wave} failed"
                    )
            if self.cancelled:
                result.stopped_by = f"cancelled by {signal.Signals(self.cancelled).name}"
        return result

    # -- one wave

    def _wave(
        self,
        members: list[Target],
        records: dict[str, TargetResult],
        parallel: int,
        result: FleetResult,
    ) -> None:
        queue = deque(members)
        stop = False
        while queue or self._running:
            while queue and not stop and not self.cancelled and len(self._running) < parallel:
                target = queue.popleft()
                self._start(target, records[target.name])
            if not self._running:
                break
            if self.cancelled:
                self.wait_cancelled()
                break
            time.sleep(POLL)
            for child in [c for c in self._running if c.process.poll() is not None]:
                self._running.remove(child)
                self._finish(child)
                if child.record.failed and self.fail_fast and not stop:
                    stop = True
                    result.stopped_by = f"fail-fast: {child.record.name} failed"
        for target in queue:
            self._not_reached(records[target.name])

    def _start(self, target: Target, record: TargetResult) -> None:
        report = self.reports_dir / f"{target.name}.json"
        log = self.reports_dir / f"{target.name}.log"
        report.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "deployer", self.command]
        argv += ["--report-file", str(report), "--workspace", str(self.workspace)]
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                env=self.child_env(target),
                cwd=self.workspace,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        give_to_owner(log, self.workspace)
        record.status = "running"
        record.report = report.name
        self._running.append(_Child(target, record, process, report, log, time.monotonic()))

    def child_env(self, target: Target) -> dict[str, str]:
        """The child's environment: this one without the job's inputs and GitHub's file
        commands, plus the target's inputs overridden by the command's, as `INPUT_<NAME>`."""
        env = {
            k: v
            for k, v in self.environ.items()
            if not k.startswith("INPUT_") and k not in STRIPPED and k not in self.stripped
        }
        merged = {**target.inputs, **self.inputs}
        for name, value in merged.items():
            env[f"INPUT_{name.upper()}"] = value
        return env

    def _finish(self, child: _Child) -> None:
        record = child.record
        _read_outcome(child, self.cancelled)
        self._write(record)
        self.on_event(f"{record.name}: {record.status} ({record.seconds:.1f}s)")

    def _not_reached(self, record: TargetResult) -> None:
        record.status = "not-reached"
        record.finished_at = utcnow().isoformat()
        self._write(record)

    def _write(self, record: TargetResult) -> None:
        """The target's record on disk, the workspace owner's (a container runs as root)."""
        give_to_owner(write_record(self.reports_dir, record), self.workspace)

    # -- cancellation

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.cancelled = self.cancelled or signum
        for child in list(self._running):
            try:
                os.kill(child.process.pid, signum)
            except ProcessLookupError:
                pass

    def _signals(self) -> _Handlers:
        return _Handlers(self)

    def wait_cancelled(self) -> None:
        """After a signal: wait for the children (at most `grace`), then kill what is left."""
        deadline = time.monotonic() + self.grace
        while self._running and time.monotonic() < deadline:
            time.sleep(POLL)
            for child in [c for c in self._running if c.process.poll() is not None]:
                self._running.remove(child)
                self._finish(child)
        for child in list(self._running):
            child.process.kill()
            child.process.wait()
            self._running.remove(child)
            self._finish(child)


class _Handlers:
    """SIGINT and SIGTERM forwarded to the children while the fleet runs (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, runner: FleetRunner) -> None:
        self.runner = runner
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _Handlers:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self.runner._forward)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.runner._running:
                self.runner.wait_cancelled()
        finally:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1][:500] if lines else ""
