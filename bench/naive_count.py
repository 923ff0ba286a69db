"""The naive smoke: an exact `count(*)` of every table, as a shell-script smoke test does.

`python -m bench.naive_count URL` prints one JSON line: the tables, the rows and the seconds
spent in the queries (the process's wall time is measured by the caller).
"""

from __future__ import annotations

import json
import sys
import time

import psycopg

TABLES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1
"""


def main(url: str) -> int:
    with psycopg.connect(url, application_name="bench-naive-count") as conn:
        started = time.perf_counter()
        tables = [r[0] for r in conn.execute(TABLES)]
        rows = 0
        for t in tables:
            row = conn.execute(f"SELECT count(*) FROM {t}").fetchone()
            rows += int(row[0]) if row else 0
        seconds = time.perf_counter() - started
    print(json.dumps({"tables": len(tables), "rows": rows, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
