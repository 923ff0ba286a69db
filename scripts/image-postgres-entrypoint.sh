#!/bin/sh
# PID 1 of the stand-in PostgreSQL images that scripts/image-lib.sh builds from Debian packages
# (no registry needed). It follows the official postgres image's interface, so the tests and
# `make act` can use either: POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required),
# POSTGRES_DB (default: the user); arguments go to the server (`-c port=55432`). The server
# listens on 127.0.0.1 only (containers run with --network host), password (SCRAM) over TCP,
# trust on the Unix socket inside the container (`docker exec … psql`). Test settings: no fsync.
set -eu

user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
  echo "image-postgres-entrypoint: POSTGRES_PASSWORD must be set" >&2
  exit 2
fi
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
data="${PGDATA:-/var/lib/postgresql/data}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

mkdir -p "$data" /run/postgresql
chown postgres:postgres "$data" /run/postgresql
chmod 0700 "$data"
if [ ! -s "$data/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  chown postgres "$pwfile"
  as_postgres "$bin/initdb" --pgdata="$data" --username="$user" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C --no-sync >/dev/null
  rm -f "$pwfile"
  if [ "$db" != postgres ]; then
    # A server on the socket only (nothing reaches it over TCP before the database exists).
    as_postgres "$bin/pg_ctl" --pgdata="$data" --wait --silent \
      -o "-c listen_addresses='' -k /run/postgresql" start >/dev/null
    echo 'CREATE DATABASE :"db";' | as_postgres "$bin/psql" -X -q -v ON_ERROR_STOP=1 \
      -h /run/postgresql -U "$user" -d postgres -v db="$db" >/dev/null
    as_postgres "$bin/pg_ctl" --pgdata="$data" --wait --silent --mode=fast stop >/dev/null
  fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/postgres" -D "$data" \
  -k /run/postgresql -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c jit=off "$@"
