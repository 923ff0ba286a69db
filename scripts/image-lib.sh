# shellcheck shell=bash
# Shared by scripts/image-test.sh (`make image-test`) and scripts/act.sh (`make act`): a Docker
# engine, and the images they need, made on a machine that reaches Debian's archive and PyPI but
# no image registry (docs/github-actions.md, "Without a registry"):
#
#   db-deploy-standin/python:3.11       stand-in for python:3.11.16-slim-trixie: Debian bookworm's
#                                       python3.11 in a virtual environment at /usr/local
#   db-deploy-standin/postgres:17-pgvector   trixie's postgresql-17 and postgresql-17-pgvector
#   db-deploy-standin/postgres:15       bookworm's postgresql-15 (the stand-in's pg_dump is 15)
#   db-deploy-action:standin            the repository's Dockerfile built on the stand-in, Debian's
#                                       PostgreSQL client, the wheels from a local wheelhouse
#
# Every image carries a label with a hash of what it was made from; an image whose label matches
# is not made again. Bases come from mmdebstrap (a tarball) and `docker import`: one layer each.
#
# Environment:
#   DB_DEPLOY_DEBIAN_MIRROR   Debian archive (default http://deb.debian.org/debian)
#   DB_DEPLOY_DOCKERD_ARGS    how to start dockerd when none runs (default: overlay2 storage,
#                             else vfs; no iptables, no bridge: what works in a container without
#                             privileges to set up networks; every container runs with
#                             --network host)
#   DB_DEPLOY_IMAGE_CACHE     work folder (default .cache/image: wheelhouse, dockerd log)
#   DB_DEPLOY_IMAGE_CONTEXT   build context (default: the repository; e.g. a `git archive` of a
#                             commit, to test it while the working tree changes)

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE_CACHE="${DB_DEPLOY_IMAGE_CACHE:-$REPO/.cache/image}"
DEBIAN_MIRROR="${DB_DEPLOY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
INPUTS_LABEL="org.db-deploy-action.inputs"
STANDIN_PYTHON="db-deploy-standin/python:3.11"
STANDIN_PG17="db-deploy-standin/postgres:17-pgvector"
STANDIN_PG15="db-deploy-standin/postgres:15"
STANDIN_ACTION="db-deploy-action:standin"
# The client the stand-in image carries: bookworm's, the Debian release with Python 3.11.
STANDIN_PG_MAJOR=15
: "${SCRIPT_NAME:=image}"

say() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}
now() { printf '%(%s)T\n' -1; }

# apt-get install, once per run, as root only (never sudo behind the user's back).
can_install() { [ "$EUID" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_install() {
  can_install || die "$* missing, and it cannot be installed here (apt-get, as root): install it"
  if [ -z "${_APT_UPDATED:-}" ]; then
    say "apt-get update"
    apt-get update -qq >/dev/null || die "apt-get update failed"
    _APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

# A Docker engine that answers: the running one, else dockerd started here (as root; installed
# with docker.io when missing). Never a silent skip: where it cannot start, this says why and
# exits non-zero.
# Storage: overlay2 where the kernel lets us mount overlays (containers start in under a second),
# else vfs (every container and layer a full copy: about 10 s per container here).
ensure_engine() {
  if ! command -v docker >/dev/null 2>&1; then
    can_install || die "cannot run: no 'docker' command on PATH, and it cannot be installed" \
      "here (apt-get, as root). Install Docker (https://docs.docker.com/engine/install/) and start it."
    apt_install docker.io
  fi
  local problem
  if problem="$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null)"; then
    return 0
  fi
  if [ "$EUID" != 0 ] || ! { command -v dockerd >/dev/null 2>&1 || can_install; }; then
    die "cannot run: the Docker engine does not answer ('docker info' failed:" \
      "${problem%%$'\n'*}), and dockerd cannot be started here. Start Docker (or set DOCKER_HOST)."
  fi
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  mkdir -p "$IMAGE_CACHE"
  local net="--iptables=false --ip-masq=false --bridge=none" driver
  if [ -n "${DB_DEPLOY_DOCKERD_ARGS:-}" ]; then
    start_dockerd "$DB_DEPLOY_DOCKERD_ARGS" && return 0
  else
    for driver in overlay2 vfs; do
      start_dockerd "--storage-driver=$driver $net" && return 0
    done
  fi
  die "no Docker engine could be started (see $IMAGE_CACHE/dockerd.log)"
}

start_dockerd() {
  local args="$1" log="$IMAGE_CACHE/dockerd.log"
  say "no Docker engine answers: starting dockerd $args (log: $log)"
  # Detached from this shell (its own session, no inherited output) so that it outlives the run
  # and keeps the images for the next one.
  # shellcheck disable=SC2086
  setsid dockerd $args >"$log" 2>&1 </dev/null &
  local pid=$! deadline=$(($(now) + 60))
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$(now)" -ge "$deadline" ]; then
      kill "$pid" 2>/dev/null || true
      tail -n 5 "$log" >&2 || true
      say "dockerd $args did not start"
      return 1
    fi
    sleep 1
  done
  say "dockerd is up ($(docker info --format '{{.ServerVersion}}, storage {{.Driver}}'))"
}

# The client that builds with BuildKit (the Dockerfile's default-base stage is only skipped by
# BuildKit): `docker` with the buildx plugin, else a Docker CLI older than 23, which drives the
# engine's own BuildKit (Debian's docker.io ships one at /usr/bin/docker).
build_client() {
  if docker buildx version >/dev/null 2>&1; then
    echo docker
    return 0
  fi
  local client version
  for client in docker /usr/bin/docker; do
    version="$("$client" version --format '{{.Client.Version}}' 2>/dev/null || true)"
    if [ -n "$version" ] && [ "${version%%.*}" -lt 23 ] 2>/dev/null; then
      echo "$client"
      return 0
    fi
  done
  die "no client can build with BuildKit: install the docker buildx plugin (or Debian's docker.io)"
}

# A short hash of strings and file contents (file names included): the images' input label.
# The repository's own path is left out, so a clone elsewhere (CI) finds the same images.
inputs_hash() {
  local item
  for item in "$@"; do
    if [ -f "$item" ]; then
      printf 'file %s\n' "${item#"$REPO"/}"
      sha256sum <"$item"
    else
      printf 'text %s\n' "${item//"$REPO"/<repo>}"
    fi
  done | sha256sum | cut -c1-32
}

image_inputs() {
  docker image inspect --format "{{ index .Config.Labels \"$INPUTS_LABEL\" }}" "$1" 2>/dev/null || true
}

# rootfs_image TAG SUITE PACKAGES [--change …]… [-- MMDEBSTRAP-ARGS…]: a one-layer image of
# `mmdebstrap --variant=minbase` with PACKAGES, documentation and locales left out as in Debian's
# slim images; remade only when its inputs change.
rootfs_image() {
  local tag="$1" suite="$2" packages="$3"
  shift 3
  local changes=() mm_args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --change) changes+=(--change "$2"); shift 2 ;;
      --) shift; mm_args=("$@"); break ;;
      *) die "rootfs_image: unexpected $1" ;;
    esac
  done
  local hash
  hash="$(inputs_hash "$tag" "$suite" "$packages" "$DEBIAN_MIRROR" "${changes[@]}" "${mm_args[@]}")"
  if [ "$(image_inputs "$tag")" = "$hash" ]; then
    say "$tag: up to date"
    return 0
  fi
  command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
  local started
  started="$(now)"
  say "$tag: mmdebstrap $suite with $packages"
  mkdir -p "$IMAGE_CACHE"
  local name="${tag//[^a-zA-Z0-9]/-}"
  local log="$IMAGE_CACHE/mmdebstrap-$name.log" tar="$IMAGE_CACHE/rootfs-$name.tar" attempt
  for attempt in 1 2; do
    rm -f "$tar"
    if mmdebstrap --variant=minbase --include="$packages" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
      "${mm_args[@]}" "$suite" "$tar" "$DEBIAN_MIRROR" >"$log" 2>&1; then
      break
    fi
    # The tarball is complete when only the temporary folder's removal failed (a process on the
    # machine had its /proc busy for a moment): clean up after mmdebstrap and use it.
    if grep -q '^I: creating tarball' "$log" && grep -q '^I: done' "$log"; then
      local tmp
      tmp="$(sed -n 's/^I: removing tempdir \(.*\)\.\.\.$/\1/p' "$log" | tail -n 1)"
      if [ -n "$tmp" ] && [ -d "$tmp" ]; then
        umount "$tmp/proc" 2>/dev/null || umount -l "$tmp/proc" 2>/dev/null || true
        rm -rf --one-file-system "$tmp" || true
      fi
      say "$tag: mmdebstrap could not remove its temporary folder; the tarball is complete"
      break
    fi
    rm -f "$tar"
    tail -n 20 "$log" >&2 || true
    [ "$attempt" = 1 ] || die "$tag: mmdebstrap failed twice (log: $log)"
    say "$tag: mmdebstrap failed; once more"
  done
  docker import "${changes[@]}" --change "LABEL $INPUTS_LABEL=$hash" "$tar" "$tag" >/dev/null \
    || die "$tag: docker import failed"
  rm -f "$tar"
  say "$tag: made in $(($(now) - started)) s"
}

standin_python_image() {
  rootfs_image "$STANDIN_PYTHON" bookworm python3.11,python3.11-venv,ca-certificates \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    -- --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook='chroot "$1" python3.11 -m venv /usr/local' \
    --customize-hook='rm -f "$1"/usr/local/bin/[Aa]ctivate*'
}

# postgres_image TAG SUITE MAJOR [EXTRA-PACKAGES]: the server without its JIT (LLVM is 150 MB of
# the image; without llvmjit.so the server runs with JIT off), no cluster made by the package.
postgres_image() {
  local tag="$1" suite="$2" major="$3" extra="${4:-}"
  rootfs_image "$tag" "$suite" "postgresql-$major${extra:+,$extra}" \
    --change "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'ENTRYPOINT ["/usr/local/bin/image-postgres-entrypoint.sh"]' \
    --change "LABEL org.db-deploy-action.entrypoint=$(sha256sum <"$REPO/scripts/image-postgres-entrypoint.sh" | cut -c1-32)" \
    -- --customize-hook="rm -rf \"\$1\"/var/lib/postgresql/$major \"\$1\"/etc/postgresql/$major" \
    --customize-hook='rm -rf "$1"/usr/lib/x86_64-linux-gnu/libLLVM* "$1"/usr/lib/postgresql/*/lib/llvmjit* "$1"/usr/lib/postgresql/*/lib/bitcode' \
    --customize-hook="copy-in $REPO/scripts/image-postgres-entrypoint.sh /usr/local/bin"
}

standin_postgres_images() {
  postgres_image "$STANDIN_PG17" trixie 17 postgresql-17-pgvector
  postgres_image "$STANDIN_PG15" bookworm 15
}

# The three bases side by side (mmdebstrap waits on downloads and dpkg much of the time).
standin_bases() {
  local pids=() pid failed=0
  # Installed once before the three run (parallel apt-get installs would fight over dpkg's lock).
  command -v mmdebstrap >/dev/null 2>&1 || ! can_install || apt_install mmdebstrap
  standin_python_image & pids+=($!)
  postgres_image "$STANDIN_PG17" trixie 17 postgresql-17-pgvector & pids+=($!)
  postgres_image "$STANDIN_PG15" bookworm 15 & pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || die "a stand-in base could not be made (logs in $IMAGE_CACHE)"
}

# The locked wheels (runtime and build tools), downloaded on the host and laid out as a PEP 503
# index (simple/<name>/<file>) that `python -m http.server` can serve: the build's pip gets it as
# PIP_INDEX_URL and still checks every hash.
wheelhouse() {
  local dir="$IMAGE_CACHE/wheelhouse" hash
  local context="${DB_DEPLOY_IMAGE_CONTEXT:-$REPO}"
  hash="$(inputs_hash "$context/requirements.lock" "$context/requirements-build.lock")"
  if [ "$(cat "$dir/.inputs" 2>/dev/null || true)" = "$hash" ]; then
    return 0
  fi
  say "wheelhouse: pip download of requirements.lock and requirements-build.lock"
  rm -rf "$dir"
  mkdir -p "$dir/files"
  # Wheels for CPython 3.11 on x86-64 with glibc 2.17 to 2.36 (bookworm's; trixie has 2.41).
  local platforms=(--platform manylinux2014_x86_64) minor
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  "${PYTHON:-python3}" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --require-hashes --python-version 3.11 --implementation cp --abi cp311 \
    "${platforms[@]}" --dest "$dir/files" \
    -r "$context/requirements.lock" -r "$context/requirements-build.lock" >&2 \
    || die "pip download of the locked wheels failed"
  "${PYTHON:-python3}" - "$dir" <<'EOF'
import os, re, sys
root = sys.argv[1]
for name in sorted(os.listdir(os.path.join(root, "files"))):
    project = re.sub(r"[-_.]+", "-", name.split("-")[0]).lower()
    os.makedirs(os.path.join(root, "simple", project), exist_ok=True)
    os.link(os.path.join(root, "files", name), os.path.join(root, "simple", project, name))
EOF
  echo "$hash" >"$dir/.inputs"
}

# Serve the wheelhouse on 127.0.0.1 (a free port) until the calling script exits.
serve_wheelhouse() {
  local port
  port="$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "${PYTHON:-python3}" -m http.server --bind 127.0.0.1 --directory "$IMAGE_CACHE/wheelhouse" "$port" \
    >"$IMAGE_CACHE/wheelhouse.log" 2>&1 </dev/null &
  WHEELHOUSE_PID=$!
  WHEELHOUSE_URL="http://127.0.0.1:$port/simple/"
  local tries=0
  until "${PYTHON:-python3}" -c "import urllib.request as u; u.urlopen('$WHEELHOUSE_URL', timeout=2)" 2>/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -lt 50 ] || die "the wheelhouse server did not start (log: $IMAGE_CACHE/wheelhouse.log)"
    sleep 0.2
  done
}

stop_wheelhouse() {
  if [ -n "${WHEELHOUSE_PID:-}" ]; then
    kill "$WHEELHOUSE_PID" 2>/dev/null || true
    wait "$WHEELHOUSE_PID" 2>/dev/null || true
    WHEELHOUSE_PID=
  fi
}

# The files the Dockerfile's context lets in (.dockerignore), for the input hash.
context_files() {
  (cd "$1" && printf '%s\n' Dockerfile .dockerignore requirements.lock requirements-build.lock \
    pyproject.toml README.md entrypoint.py \
    && find deployer -type f ! -path '*/__pycache__/*' ! -name '*.py[cod]' | LC_ALL=C sort) \
    | sed "s|^|$1/|"
}

# action_image TAG BASE PG_CLIENT_SOURCE PG_MAJOR: the repository's Dockerfile built with those
# build arguments and the local wheelhouse as package index; remade only when the context, the
# arguments or the base change.
action_image() {
  local tag="$1" base="$2" source="$3" major="$4" hash base_id client
  base_id="$(docker image inspect --format '{{.Id}}' "$base")" || die "no image $base"
  local context="${DB_DEPLOY_IMAGE_CONTEXT:-$REPO}"
  mapfile -t files < <(context_files "$context")
  hash="$(inputs_hash "$base_id" "$source" "$major" "${files[@]}")"
  if [ "$(image_inputs "$tag")" = "$hash" ]; then
    say "$tag: up to date"
    return 0
  fi
  client="$(build_client)"
  wheelhouse
  serve_wheelhouse
  local started log="$IMAGE_CACHE/build-${tag//[^a-zA-Z0-9]/-}.log"
  started="$(now)"
  say "$tag: docker build (BASE_IMAGE=$base PG_CLIENT_SOURCE=$source PG_MAJOR=$major, wheels from $WHEELHOUSE_URL)"
  if ! (cd "$context" && DOCKER_BUILDKIT=1 "$client" build --network host --progress plain \
    --build-arg "BASE_IMAGE=$base" --build-arg "PG_CLIENT_SOURCE=$source" \
    --build-arg "PG_MAJOR=$major" --build-arg "PIP_INDEX_URL=$WHEELHOUSE_URL" \
    --label "$INPUTS_LABEL=$hash" --tag "$tag" .) >"$log" 2>&1; then
    stop_wheelhouse
    tail -n 40 "$log" >&2 || true
    die "$tag: docker build failed (log: $log)"
  fi
  stop_wheelhouse
  say "$tag: built in $(($(now) - started)) s"
}

standin_action_image() {
  standin_python_image
  action_image "$STANDIN_ACTION" "$STANDIN_PYTHON" debian "$STANDIN_PG_MAJOR"
}

# What a run no longer needs: untagged images (earlier builds of our tags), stopped containers,
# and BuildKit's cache beyond a few GB (vfs stores every layer as a full copy).
prune_engine() {
  docker container prune --force >/dev/null 2>&1 || true
  docker image prune --force >/dev/null 2>&1 || true
  docker builder prune --force --keep-storage 3GB >/dev/null 2>&1 || true
}
