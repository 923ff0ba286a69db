#!/usr/bin/env bash
# `make image-test`: the container image built from this repository and run as the GitHub runner
# runs a container action (tests/image/test_image.py), on a machine with no image registry.
#
#   1. a Docker engine: the running one, else dockerd started here (docker.io installed with
#      apt-get when missing); it cannot start -> this fails, it never skips;
#   2. stand-in images from Debian packages (scripts/image-lib.sh): a Python 3.11 base,
#      PostgreSQL 17 with pgvector, PostgreSQL 15; cached on the engine between runs;
#   3. the Dockerfile built on the stand-in with BASE_IMAGE, PG_CLIENT_SOURCE=debian, PG_MAJOR=15
#      and PIP_INDEX_URL pointing at a local wheelhouse of requirements*.lock (no registry);
#   4. pytest tests/image, then what the run no longer needs is pruned.
#
# To test another image instead (nothing is pulled): DB_DEPLOY_IMAGE=…, with
# DB_DEPLOY_IMAGE_BASE, DB_DEPLOY_IMAGE_PG_CLIENT, DB_DEPLOY_IMAGE_POSTGRES and
# DB_DEPLOY_IMAGE_POSTGRES_BACKUP as tests/image/test_image.py describes. Arguments go to pytest.
SCRIPT_NAME="make image-test"
# shellcheck source=scripts/image-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/image-lib.sh"
trap stop_wheelhouse EXIT

started="$(now)"
ensure_engine
if [ -z "${DB_DEPLOY_IMAGE:-}" ]; then
  standin_bases
  standin_action_image
  export DB_DEPLOY_IMAGE="$STANDIN_ACTION"
  export DB_DEPLOY_IMAGE_BASE="$STANDIN_PYTHON"
  export DB_DEPLOY_IMAGE_PG_CLIENT="$STANDIN_PG_MAJOR"
  export DB_DEPLOY_IMAGE_POSTGRES="$STANDIN_PG17"
  export DB_DEPLOY_IMAGE_POSTGRES_BACKUP="$STANDIN_PG15"
fi
prune_engine
images_done="$(now)"

mkdir -p "$IMAGE_CACHE"
export DB_DEPLOY_IMAGE_TESTS=1
export DB_DEPLOY_IMAGE_METRICS="$IMAGE_CACHE/metrics.json"
rm -f "$DB_DEPLOY_IMAGE_METRICS"
python="${VENV:-$REPO/.venv}/bin/python"
status=0
(cd "$REPO" && "$python" -m pytest tests/image -p no:xdist -p no:randomly -p no:cacheprovider \
  -v -rxXfs "$@") || status=$?
prune_engine

say "images $((images_done - started)) s, tests $(($(now) - images_done)) s, total $(($(now) - started)) s"
if [ -f "$DB_DEPLOY_IMAGE_METRICS" ]; then
  say "metrics: $(tr -d '\n ' <"$DB_DEPLOY_IMAGE_METRICS")"
fi
say "disk: $(df -h --output=avail,pcent "$REPO" | tail -n 1 | xargs) free/used; engine: $(docker system df --format '{{.Type}} {{.Size}}' | paste -sd, -)"
exit "$status"
