"""Benchmarks of db-deploy against bare Alembic and `psql -f` on an embedded PostgreSQL.

`python -m bench` (what `make bench` runs) measures, on a private embedded server:

- full deploys of synthetic Alembic chains (50, 200, 500 revisions) with `db-deploy deploy`,
  bare `alembic upgrade head` and `psql -f` of the SQL `alembic upgrade head --sql` emits;
- the no-op deploy against `alembic current`, and start-up (`--help`) of both;
- smoke on 50 tables holding 6M rows against the same schema empty and a naive exact count;
- peak memory (ru_maxrss of each child process) and, with `--profile`, where the time goes.

See bench/README.md for the method, the last results and the profile.
"""
