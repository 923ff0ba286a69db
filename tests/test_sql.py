"""deployer/sql.py: statements as PostgreSQL's parser reads them (no server needed)."""

from __future__ import annotations

import pytest

from deployer.sql import (
    Build,
    Detach,
    concurrent_build,
    concurrent_detach,
    may_build_concurrently,
    qualified,
)

BUILDS: dict[str, Build | None] = {
    "CREATE INDEX CONCURRENTLY ix ON a (id)": ("create", None, "a", "ix"),
    "-- why\ncreate unique index concurrently if not exists ix on s . a (id)": (
        "create",
        "s",
        "a",
        "ix",
    ),
    'CREATE INDEX CONCURRENTLY "Ix A" ON "S"."A" (id)': ("create", "S", "A", "Ix A"),
    "CREATE INDEX CONCURRENTLY ON a ((id % 2))": ("create", None, "a", None),  # the server names it
    "REINDEX INDEX CONCURRENTLY s.ix": ("reindex", "s", "ix", "ix"),
    "reindex (verbose) table concurrently a": ("reindex", None, "a", None),
    "REINDEX (CONCURRENTLY on) TABLE a": ("reindex", None, "a", None),
    'REINDEX SCHEMA CONCURRENTLY "My Schema"': ("reindex-schema", "My Schema", "", None),
    "REINDEX DATABASE CONCURRENTLY": ("reindex-database", None, "", None),
    "REINDEX (CONCURRENTLY) DATABASE app": ("reindex-database", None, "", None),
    # not concurrent, or not a build
    "CREATE INDEX ix ON a (id)": None,
    "REINDEX (CONCURRENTLY false) TABLE a": None,
    "REINDEX (CONCURRENTLY, CONCURRENTLY 0) SCHEMA s": None,  # the last option counts
    "REINDEX SCHEMA s": None,
    "SELECT 'CREATE INDEX CONCURRENTLY ix ON a (id)'": None,
    "DROP INDEX CONCURRENTLY ix": None,
    "CREATE INDEX CONCURRENTLY ix ON a (id); SELECT 1": None,  # two statements
    "CREATE INDEX CONCURRENTLY ix ON": None,  # the parser refuses it
}


@pytest.mark.parametrize("statement", list(BUILDS))
def test_the_concurrent_build_is_what_the_parser_reads(statement: str) -> None:
    assert concurrent_build(statement) == BUILDS[statement]


DETACHES: dict[str, Detach | None] = {
    "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY": ((None, "p"), (None, "p1")),
    '/* monthly */ alter table s."P" detach partition s.p1 concurrently': (
        ("s", "P"),
        ("s", "p1"),
    ),
    "ALTER TABLE p DETACH PARTITION p1": None,
    "ALTER TABLE p DETACH PARTITION p1 FINALIZE": None,
    "ALTER TABLE p ATTACH PARTITION p1 FOR VALUES FROM (0) TO (9)": None,
    "CREATE INDEX CONCURRENTLY ix ON p (id)": None,
}


@pytest.mark.parametrize("statement", list(DETACHES))
def test_the_concurrent_detach_is_what_the_parser_reads(statement: str) -> None:
    assert concurrent_detach(statement) == DETACHES[statement]


@pytest.mark.parametrize(
    "statement",
    [s for s, found in (*BUILDS.items(), *DETACHES.items()) if found],
)
def test_every_concurrent_statement_passes_the_cheap_test_before_the_parser(
    statement: str,
) -> None:
    assert may_build_concurrently(statement)
    assert may_build_concurrently(statement.swapcase())


def test_a_statement_without_the_keyword_is_not_parsed() -> None:
    assert not may_build_concurrently("CREATE INDEX ix ON a (id)")
    assert not may_build_concurrently("ALTER TABLE p DETACH PARTITION p1")


def test_names_are_quoted_as_identifiers() -> None:
    assert qualified("public", "a") == '"public"."a"'
    assert qualified(None, 'My "odd" %name') == '"My ""odd"" %name"'  # the search path decides
    assert qualified('S"', "t") == '"S"""."t"'
