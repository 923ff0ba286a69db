#!/usr/bin/env bash
# `make act`: run .github/workflows/db-deploy.yml locally with nektos/act against a throw-away
# PostgreSQL with pgvector (docs/github-actions.md explains every flag).
#
# Needs a running Docker engine and the `act` binary; where either is missing it says which and
# why, and exits non-zero (it never pretends to have run). Extra arguments go to act, e.g.
#   make act ACT_ARGS=--list        (via: bash scripts/act.sh --list)
#
# Environment:
#   ACT_SECRETS_FILE  secrets file (default .github/act/secrets, else the .example next to it)
#   ACT_EVENT_FILE    workflow_dispatch event (default .github/act/workflow_dispatch.json)
#   ACT_PG_PORT       host port of the throw-away PostgreSQL (default 55432)
#   ACT_START_DB=0    do not start PostgreSQL (use the one DATABASE_URL in the secrets file names)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'make act: %s\n' "$*" >&2; }

if ! command -v docker >/dev/null 2>&1; then
  say "cannot run: no 'docker' command on PATH. act runs every job and the action in Docker"
  say "containers; install Docker (https://docs.docker.com/engine/install/) and start it."
  exit 1
fi
if ! docker_error="$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null)"; then
  say "cannot run: the Docker engine does not answer ('docker info' failed: ${docker_error%%$'\n'*})."
  say "act needs a running engine; start Docker (or set DOCKER_HOST) and try again."
  exit 1
fi
if ! command -v act >/dev/null 2>&1; then
  say "cannot run: 'act' is not installed (https://nektosact.com/installation/, e.g."
  say "'gh extension install nektos/gh-act' or 'brew install act')."
  exit 1
fi

event_file="${ACT_EVENT_FILE:-.github/act/workflow_dispatch.json}"
secrets_file="${ACT_SECRETS_FILE:-.github/act/secrets}"
if [ ! -f "$secrets_file" ]; then
  say "no $secrets_file: using .github/act/secrets.example (copy it to change the database URL)."
  secrets_file=.github/act/secrets.example
fi

pg_port="${ACT_PG_PORT:-55432}"
pg_name="db-deploy-act-postgres"
if [ "${ACT_START_DB:-1}" != 0 ]; then
  if [ -z "$(docker ps --quiet --filter "name=^${pg_name}$")" ]; then
    say "starting PostgreSQL with pgvector ($pg_name, port $pg_port); removed when act ends."
    docker run --detach --rm --name "$pg_name" \
      --env POSTGRES_PASSWORD=act-local-password \
      --publish "127.0.0.1:${pg_port}:5432" \
      pgvector/pgvector:pg17 >/dev/null
    trap 'docker stop "$pg_name" >/dev/null 2>&1 || true' EXIT
    for _ in $(seq 1 60); do
      if docker exec "$pg_name" pg_isready --quiet --host 127.0.0.1 --username postgres; then break; fi
      sleep 1
    done
    docker exec "$pg_name" pg_isready --host 127.0.0.1 --username postgres >/dev/null
  else
    say "reusing the running $pg_name container."
  fi
fi

set -x
act workflow_dispatch \
  --workflows .github/workflows/db-deploy.yml \
  --eventpath "$event_file" \
  --secret-file "$secrets_file" \
  --container-architecture linux/amd64 \
  -P ubuntu-24.04=catthehacker/ubuntu:act-24.04 \
  "$@"
