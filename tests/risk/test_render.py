"""The risk review's renderers: the summary section, the annotations (highest first, ten at
most, the rest in one notice, paths relative to the workspace) and the outputs."""

from __future__ import annotations

import json

from deployer.render import risk as render
from deployer.results import RiskFinding, RiskResult, RiskRevision, StatementTrace


def result(n: int = 12) -> RiskResult:
    levels = ["low", "medium", "high"]
    findings = [
        RiskFinding(
            revision="r1",
            rule="index-not-concurrent",
            level=levels[i % 3],
            table=f"public.t{i}",
            lock="ShareLock",
            message="why",
            safe="CREATE INDEX CONCURRENTLY",
            path="/ws/migrations/versions/r1.py",
            line=10 + i,
            outage=f"about {i} s",
        )
        for i in range(n)
    ]
    findings[0].accepted = "tiny table"
    rev = RiskRevision(
        revision="r1",
        description="indexes",
        findings=findings,
        level="high",
        statements=[StatementTrace(revision="r1", index=1, sql="CREATE INDEX i ON t0 (x)")],
    )
    return RiskResult(
        level="high", rehearsed=True, scratch="embedded PostgreSQL 18", revisions=[rev]
    )


def test_annotations_are_highest_first_ten_at_most_the_rest_summarised() -> None:
    notes = render.annotate(result(), workspace="/ws")
    warnings = [a for a in notes if a.kind == "warning"]
    assert len(warnings) == 10
    assert [a.title.split(":")[0] for a in warnings[:3]] == ["db-deploy risk high"] * 3
    assert warnings[0].file == "migrations/versions/r1.py" and warnings[0].line > 10
    (rest,) = [a for a in notes if a.kind == "notice"]
    assert rest.message.startswith("1 more risk finding")  # 12, one accepted, ten shown


def test_the_summary_section_has_a_risk_table_per_revision() -> None:
    text = "\n".join(render.section(result()))
    assert text.startswith("### Risk review: 🔴 high")
    assert "| level | rule | table | lock | estimated outage | where |" in text
    assert "(accepted)" in text and "CREATE INDEX i ON t0 (x)" in text


def test_outputs() -> None:
    out = render.outputs(result())
    assert out["risk-level"] == "high"
    items = json.loads(out["risk-findings"])
    assert items[0]["level"] == "high" and items[-1]["accepted"] == "tiny table"
    assert {"revision", "rule", "level", "table", "message"} <= set(items[0])
    assert render.outputs(None) == {"risk-level": "", "risk-findings": "[]"}
