"""The proposed performance changes to deployer/, as exact edits applied to a copy.

`python -m bench --candidate proposals` copies the installed deployer package into the work
folder, applies every edit below (each anchored on the current text: a missing anchor is
reported, not guessed) and measures that copy interleaved with the installed one. The diff
is written next to the results (bench/results/proposals.diff) for review; nothing under
deployer/ is touched here.
"""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.proc import REPO


@dataclass(frozen=True)
class Edit:
    proposal: str
    path: str  # inside deployer/
    old: str
    new: str
    unless: str = ""  # skip when the file already contains this (e.g. an import)


EDITS: list[Edit] = [
    # P1, P2 and P4 are applied in deployer/ (bench/README.md, "What changed because of it");
    # what is left is P3.
    # P3: one engine per URL for the run (dialect initialised once), timeouts per connection.
    Edit(
        "P3 engines: one per URL, session timeouts set per connection",
        "pipeline.py",
        """        engine = spec.engine()
        if autocommit:
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.stack.callback(engine.dispose)
        conn = db.connect(""",
        """        engine = self.engine(spec)
        if autocommit:
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        conn = db.connect(""",
    ),
    Edit(
        "P3 engines: one per URL, session timeouts set per connection",
        "pipeline.py",
        """        self.stack.callback(_close, conn)
        return conn
""",
        """        self.stack.callback(_close, conn)
        settings = {
            name: str(value)
            for name, value in (
                ("client_connection_check_interval", _client_check_ms(spec)),
                ("lock_timeout", _ms(spec.lock_timeout)),
                ("statement_timeout", _ms(spec.statement_timeout)),
            )
            if value is not None
        }
        if settings:  # session-level and committed, before anything else runs on it
            sql = ", ".join(f"set_config('{name}', :{name}, false)" for name in settings)
            conn.execute(sa.text(f"SELECT {sql}"), settings)
            conn.commit()
        return conn

    def engine(self, spec: db.ConnectionSpec) -> sa.Engine:
        \"\"\"One engine per URL for the run: SQLAlchemy initialises its dialect on an engine's
        first connection (6 round trips); the session timeouts are set per connection.\"\"\"
        per_session = {"lock_timeout": None, "statement_timeout": None, "client_check": False}
        base = dataclasses.replace(
            spec, **{k: v for k, v in per_session.items() if hasattr(spec, k)}
        )
        engines = self.__dict__.setdefault("_engines", {})
        if base not in engines:
            engines[base] = base.engine()
            self.stack.callback(engines[base].dispose)
        return engines[base]
""",
    ),
    Edit(
        "P3 engines: one per URL, session timeouts set per connection",
        "pipeline.py",
        """            spec = self.spec(self.settings.url)
            engine = spec.engine()
            self.stack.callback(engine.dispose)
""",
        """            spec = self.spec(self.settings.url)
            engine = self.engine(spec)
""",
    ),
    Edit(
        "P3 engines: one per URL, session timeouts set per connection",
        "pipeline.py",
        "from __future__ import annotations\n\n",
        "from __future__ import annotations\n\nimport dataclasses\n",
        unless="\nimport dataclasses\n",
    ),
    Edit(
        "P3 engines: one per URL, session timeouts set per connection",
        "pipeline.py",
        """def _close(conn: sa.Connection) -> None:""",
        """def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else db.pg_milliseconds(seconds)


def _client_check_ms(spec: db.ConnectionSpec) -> int | None:
    on = getattr(spec, "client_check", False)
    return getattr(db, "CLIENT_CHECK_MS", None) if on else None


def _close(conn: sa.Connection) -> None:""",
    ),
]


def build(dest: Path, source: Path = REPO / "deployer") -> tuple[Path, list[str], str]:
    """Copy `source` to dest/deployer and apply EDITS. Returns (folder for PYTHONPATH,
    problems, unified diff)."""
    target = dest / "deployer"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    problems: list[str] = []
    touched: dict[str, str] = {}
    for edit in EDITS:
        path = target / edit.path
        text = path.read_text()
        touched.setdefault(edit.path, text)
        if edit.unless and edit.unless in text:
            continue
        if text.count(edit.old) != 1:
            problems.append(f"{edit.proposal}: anchor not found once in deployer/{edit.path}")
            continue
        path.write_text(text.replace(edit.old, edit.new))
    diff = "".join(
        "".join(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                (target / rel).read_text().splitlines(keepends=True),
                fromfile=f"a/deployer/{rel}",
                tofile=f"b/deployer/{rel}",
            )
        )
        for rel, before in touched.items()
    )
    return dest, problems, diff
