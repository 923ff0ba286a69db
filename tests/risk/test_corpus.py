"""The corpus (tests/risk/corpus/*.upgrade): safe and risky revisions, SQL and Python, each with
the live schema it runs against and the findings expected, reviewed in one plan (rehearsed on a
scratch database of the embedded server); and the same rendered SQL through squawk: every
lock-related finding squawk makes is made here too, or the difference is explained in
docs/risk-review.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from deployer.alembic_project import find_project
from deployer.results.risk import RiskResult
from deployer.risk.rules import placeholders_to_params
from tests.helpers import REPO, AlembicProject, Database, EmbeddedServer
from tests.helpers.risk import review_live

CORPUS = Path(__file__).parent / "corpus"
DOC = REPO / "docs" / "risk-review.md"

# squawk's rules about locks, rewrites and the running application, and the ids they match here.
SQUAWK_LOCK_RULES: dict[str, set[str]] = {
    "require-concurrent-index-creation": {"index-not-concurrent"},
    "require-concurrent-index-deletion": {"drop-index-not-concurrent"},
    "require-concurrent-reindex": {"reindex-not-concurrent"},
    "constraint-missing-not-valid": {
        "fk-not-valid",
        "check-not-valid",
        "unique-without-index",
        "scan-under-lock",
    },
    "adding-foreign-key-constraint": {"fk-not-valid", "scan-under-lock"},
    "changing-column-type": {"column-type-rewrite"},
    "adding-field-with-default": {"volatile-default", "table-rewrite"},
    "adding-not-nullable-field": {"set-not-null", "not-null-without-default"},
    "adding-required-field": {"not-null-without-default"},
    "disallowed-unique-constraint": {"unique-without-index"},
    "adding-serial-primary-key-field": {"unique-without-index", "volatile-default"},
    "adding-primary-key-constraint": {"unique-without-index"},
    "ban-drop-column": {"drop-column"},
    "ban-drop-table": {"drop-table"},
    "renaming-column": {"rename-column"},
    "renaming-table": {"rename-table"},
    "ban-concurrent-index-creation-in-transaction": {"concurrently-in-transaction"},
    "ban-concurrent-reindex-in-transaction": {"concurrently-in-transaction"},
    "require-timeout-settings": {"missing-lock-timeout"},
    "require-lock-timeout": {"missing-lock-timeout"},
    "require-statement-timeout": {"missing-lock-timeout"},
}


@dataclass
class Case:
    name: str
    doc: str
    setup: str
    expect: set[str]  # rule ids, or "rule:level" to pin the level
    body: str


def load_corpus() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.glob("*.upgrade")):
        text = path.read_text()
        doc, _, rest = text.partition('"""\n')
        lines = rest.splitlines()
        setup = lines[0].removeprefix("# setup:").strip()
        expect = lines[1].removeprefix("# expect:").strip()
        cases.append(
            Case(
                name=path.stem,
                doc=doc.strip('"'),
                setup=setup,
                expect=set(expect.split()) if expect else set(),
                body="\n".join(lines[2:]),
            )
        )
    return cases


@pytest.fixture(scope="module")
def corpus_review(
    pg_server: EmbeddedServer,
    admin_engine: sa.Engine,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Case], RiskResult]:
    from tests.helpers import create_database, drop_database, write_alembic_project

    cases = load_corpus()
    db: Database = create_database(pg_server, admin_engine)
    try:
        for case in cases:
            if case.setup:
                db.execute(case.setup)
        root = tmp_path_factory.mktemp("corpus") / "migrations"
        proj: AlembicProject = write_alembic_project(root)
        for case in cases:
            proj.add(f"r{case.name[:2]}", case.body, message=case.doc)
        project = find_project(root, root.parent)
        result = review_live(project, db, pg_server)
        return cases, result
    finally:
        drop_database(admin_engine, db)


def found(result: RiskResult, rev: str) -> set[str]:
    entry = next(r for r in result.revisions if r.revision == rev)
    return {f.rule for f in entry.findings}


def test_the_corpus_is_big_enough_and_mixed() -> None:
    cases = load_corpus()
    assert len(cases) >= 30
    assert sum(1 for c in cases if not c.expect) >= 10  # safe ones
    assert sum(1 for c in cases if "bind" in c.body) >= 2  # Python with data access


def test_every_case_gives_exactly_the_expected_findings(
    corpus_review: tuple[list[Case], RiskResult],
) -> None:
    cases, result = corpus_review
    assert result.rehearsed, result.note
    problems = []
    for case in cases:
        entry = next(r for r in result.revisions if r.revision == f"r{case.name[:2]}")
        got = {f.rule for f in entry.findings}
        want = {e.split(":")[0] for e in case.expect}
        if got != want:
            problems.append(f"{case.name}: expected {sorted(want)}, got {sorted(got)}")
        for pinned in (e for e in case.expect if ":" in e):
            rule, level = pinned.split(":")
            levels = {f.level for f in entry.findings if f.rule == rule}
            if levels != {level}:
                problems.append(f"{case.name}: {rule} expected {level}, got {levels}")
    assert not problems, "\n".join(problems)


def test_every_revision_is_rehearsed_with_its_statements(
    corpus_review: tuple[list[Case], RiskResult],
) -> None:
    cases, result = corpus_review
    assert len(result.revisions) == len(cases)
    last = result.revisions[-1]
    assert "CONCURRENTLY" in last.error or "transaction block" in last.error
    for entry in result.revisions[:-1]:
        assert entry.statements, entry.revision
        assert not entry.error, (entry.revision, entry.error)
    # The Python revision's data access is shown as it really ran, line by line.
    backfill = next(r for r in result.revisions if r.revision == "r31")
    sqls = [s.sql for s in backfill.statements]
    assert any(s.startswith("SELECT id FROM c31") for s in sqls)
    assert any(s.startswith("UPDATE c31 SET y = 0 WHERE y IS NULL") for s in sqls)
    # Measured: the rewrite of int -> bigint, none for the wider varchar.
    rewrite = next(r for r in result.revisions if r.revision == "r15")
    assert any("public.c15" in s.rewritten for s in rewrite.statements)
    wider = next(r for r in result.revisions if r.revision == "r16")
    assert not any(s.rewritten for s in wider.statements)
    locks = {(lk.relation, lk.mode) for s in rewrite.statements for lk in s.locks}
    assert ("public.c15", "AccessExclusiveLock") in locks
    # Each finding points at the line of the revision file that sent its statement.
    for f in result.findings:
        assert f.path.endswith(".py") and f.line > 0, f


# --------------------------------------------------------------------------- squawk


def rendered_sql(result: RiskResult, rev: str) -> str:
    """The revision's statements as the rehearsal sent them, with the transaction blocks they
    ran in."""
    entry = next(r for r in result.revisions if r.revision == rev)
    out: list[str] = []
    open_ = False
    for st in entry.statements:
        if st.in_transaction and not open_:
            out.append("BEGIN;")
            open_ = True
        elif not st.in_transaction and open_:
            out.append("COMMIT;")
            open_ = False
        sql = placeholders_to_params(st.sql).rstrip(";")
        if re.match(r"(?is)^\s*select\b", sql):
            continue  # reads: squawk has nothing to say, and Alembic's own catalog reads are noise
        out.append(sql + ";")
    if open_:
        out.append("COMMIT;")
    return "\n".join(out) + "\n"


def squawk_findings(folder: Path) -> dict[str, set[str]]:
    exe = shutil.which("squawk") or str(Path(__import__("sys").executable).parent / "squawk")
    if not Path(exe).exists():
        pytest.skip("squawk-cli is not installed (pip install squawk-cli)")
    proc = subprocess.run(
        [
            exe,
            "--reporter",
            "json",
            "--pg-version",
            "16",
            *sorted(str(p) for p in folder.glob("*.sql")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out: dict[str, set[str]] = {}
    for item in json.loads(proc.stdout or "[]"):
        out.setdefault(Path(item["file"]).stem, set()).add(item["rule_name"])
    return out


def doc_explanations() -> dict[tuple[str, str], str]:
    """The rows of the comparison table in docs/risk-review.md: (case, squawk rule) → why."""
    rows: dict[tuple[str, str], str] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*`?(\d\d|all)[^|]*\|\s*`([a-z-]+)`\s*\|[^|]*\|\s*(.+?)\s*\|$", line)
        if m:
            rows[(m.group(1), m.group(2))] = m.group(3)
    return rows


def test_every_lock_finding_of_squawk_is_made_here_or_explained(
    corpus_review: tuple[list[Case], RiskResult], tmp_path: Path
) -> None:
    cases, result = corpus_review
    for case in cases:
        (tmp_path / f"{case.name}.sql").write_text(rendered_sql(result, f"r{case.name[:2]}"))
    theirs = squawk_findings(tmp_path)
    explained = doc_explanations()
    unexplained = []
    for case in cases:
        ours = found(result, f"r{case.name[:2]}")
        for rule in sorted(theirs.get(case.name, set())):
            if rule not in SQUAWK_LOCK_RULES:
                continue
            if ours & SQUAWK_LOCK_RULES[rule]:
                continue
            if (case.name[:2], rule) not in explained and ("all", rule) not in explained:
                unexplained.append(f"{case.name}: squawk {rule}, here {sorted(ours)}")
    assert not unexplained, "add a row to the table in docs/risk-review.md:\n" + "\n".join(
        unexplained
    )


def test_findings_squawk_cannot_make_are_made_here(
    corpus_review: tuple[list[Case], RiskResult],
) -> None:
    _, result = corpus_review
    measured = {(f.revision, f.rule) for f in result.findings if f.source == "measured"}
    assert ("r20", "table-rewrite") in measured  # the user's volatile function
    assert ("r30", "table-rewrite") in measured  # SET LOGGED
    assert ("r31", "scan-under-lock") in measured  # the Python backfill


def print_table(result: RiskResult, cases: list[Case], folder: Path) -> str:  # pragma: no cover
    """The comparison table, for refreshing the docs by hand."""
    theirs = squawk_findings(folder)
    rows = []
    for case in cases:
        ours = sorted(found(result, f"r{case.name[:2]}"))
        sq = sorted(r for r in theirs.get(case.name, set()) if r in SQUAWK_LOCK_RULES)
        rows.append(f"| {case.name} | {', '.join(sq) or '–'} | {', '.join(ours) or '–'} |")
    return "\n".join(rows)
