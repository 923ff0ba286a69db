# The container behind db-deploy-action. The runner builds it from the Dockerfile's own folder
# (the repository root), so .dockerignore lets in only what the image needs.
#
# Build arguments (docs/github-actions.md, "Building the image"); the defaults are what the runner
# and act build, and need nothing but Docker Hub, Debian and PyPI:
#   BASE_IMAGE        another Python 3.11 image on Debian (a mirror's copy, a local stand-in);
#                     the default is the `python-base` stage below, i.e. the pinned python image
#   PG_CLIENT_SOURCE  pgdg (default: the newest client, from apt.postgresql.org) or debian (the
#                     base's own Debian archive, e.g. bookworm's 15 or trixie's 17)
#   PG_MAJOR          the client's major version (18 with pgdg; the one Debian carries with debian)
#   PIP_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST
#                     a package index mirror or a wheelhouse: every wheel is still checked against
#                     the hashes of requirements.lock and requirements-build.lock
ARG BASE_IMAGE=python-base

# Base: Python 3.11, the interpreter requirements.lock was compiled for and the test suite runs
# on, on Debian 13 (trixie) slim. A stage of its own so that Dependabot still bumps this line
# (it does not read ARG defaults); BuildKit skips it when BASE_IMAGE names another image.
FROM python:3.11.16-slim-trixie AS python-base

FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# PostgreSQL client tools (pg_dump, pg_restore, psql) for the backup and restore modes. pg_dump
# refuses to dump a server newer than itself, so by default the image carries the newest stable
# major from the PostgreSQL project's own repository (apt.postgresql.org, PGDG); Debian trixie
# only has 17. The PGDG signing key (fingerprint B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8) comes
# from Debian's own postgresql-client-common package, which ships it: apt downloads the package
# verified against Debian's archive keys, only the key file is extracted (nothing is installed),
# and its SHA-256 must match the one pinned here. No key server, curl or gnupg is involved.
#
# Only the three programs are taken from the postgresql-client-N package (downloaded through apt,
# so verified the same way), with the shared libraries it depends on installed by apt (libpq5
# and the like). Left out: Debian's perl wrapper scripts (postgresql-client-common, and perl with
# them, ~45 MB) and the other client programs. The client is pinned to its major; patch releases
# (security fixes) arrive with a rebuild.
# (`cd /tmp` only scopes `apt-get download` in this one RUN: no WORKDIR, see the end of the file.)
ARG PG_CLIENT_SOURCE=pgdg
ARG PG_MAJOR=18
ARG PGDG_KEY_SHA256=0144068502a1eddd2a0280ede10ef607d1ec592ce819940991203941564e8e76
# hadolint ignore=DL3003,DL3008,SC2086
RUN set -eux; \
    apt-get update; \
    cd /tmp; \
    case "${PG_CLIENT_SOURCE}" in \
    pgdg) \
        apt-get download postgresql-client-common; \
        dpkg-deb --extract postgresql-client-common_*.deb /tmp/pgcommon; \
        install -D -m 0644 /tmp/pgcommon/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
            /usr/share/keyrings/apt.postgresql.org.asc; \
        printf '%s  %s\n' "${PGDG_KEY_SHA256}" /usr/share/keyrings/apt.postgresql.org.asc \
            > /tmp/pgdg-key.sha256; \
        sha256sum --check --strict /tmp/pgdg-key.sha256; \
        rm -rf /tmp/pgcommon /tmp/postgresql-client-common_*.deb /tmp/pgdg-key.sha256; \
        . /etc/os-release; \
        printf '%s\n' \
            'Types: deb' \
            'URIs: https://apt.postgresql.org/pub/repos/apt' \
            "Suites: ${VERSION_CODENAME}-pgdg" \
            'Components: main' \
            'Signed-By: /usr/share/keyrings/apt.postgresql.org.asc' \
            > /etc/apt/sources.list.d/pgdg.sources; \
        apt-get update ;; \
    debian) ;; \
    *) echo "PG_CLIENT_SOURCE must be pgdg or debian, not '${PG_CLIENT_SOURCE}'" >&2; exit 1 ;; \
    esac; \
    apt-get download "postgresql-client-${PG_MAJOR}"; \
    deb="$(echo /tmp/postgresql-client-${PG_MAJOR}_*.deb)"; \
    libs="$(dpkg-deb --field "${deb}" Depends | tr ',' '\n' | sed -E 's/^ *//; s/[ (|].*//' \
        | grep -E '^(lib|zlib)')"; \
    apt-get install -y --no-install-recommends ${libs}; \
    bin="/usr/lib/postgresql/${PG_MAJOR}/bin"; \
    dpkg-deb --fsys-tarfile "${deb}" | tar -x -C / ".${bin}/pg_dump" ".${bin}/pg_restore" ".${bin}/psql"; \
    rm -f "${deb}"; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log; \
    for tool in pg_dump pg_restore psql; do "${bin}/${tool}" --version; done

# The client's own binaries first.
ENV PATH="/usr/lib/postgresql/${PG_MAJOR}/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The locked runtime dependencies only (hashed, binary wheels: no compiler, no dev extras), then
# the package itself, built with the build tools of requirements-build.lock (hashed too) and
# without build isolation, so pip fetches nothing that is not pinned by hash; the build tools
# are removed again (nothing imports them at run time). pip reads the mirror arguments from the
# environment (empty: PyPI).
# PYTHONDONTWRITEBYTECODE keeps the container (root) from leaving __pycache__ folders owned by
# root in the user's workspace; the installed packages are compiled by pip at install time.
ARG PIP_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ARG PIP_TRUSTED_HOST=""
COPY requirements.lock requirements-build.lock pyproject.toml README.md /tmp/src/
COPY deployer /tmp/src/deployer
COPY entrypoint.py /app/entrypoint.py
# Some wheels ship their extension modules with debug information (pglast's parser: 27 MB, 4 MB
# without): binutils' strip removes it in the same layer, and goes again with its packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && pip install --no-cache-dir --only-binary=:all: --require-hashes -r /tmp/src/requirements.lock \
    && pip install --no-cache-dir --only-binary=:all: --require-hashes -r /tmp/src/requirements-build.lock \
    && pip install --no-cache-dir --no-index --no-deps --no-build-isolation /tmp/src \
    && pip uninstall --yes --quiet setuptools wheel \
    && find /usr/local/lib/python3*/site-packages -name '*.so' -type f -exec sh -c \
        'for f; do if readelf -S "$f" | grep -q debug_info; then strip --strip-debug "$f"; fi; done' \
        sh {} + \
    && apt-get purge -y --auto-remove binutils \
    && apt-get clean \
    && rm -rf /tmp/src /root/.cache /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log \
    && python -c "import deployer.cli"

LABEL org.opencontainers.image.title="db-deploy-action" \
      org.opencontainers.image.description="Deploy PostgreSQL schema changes (Alembic) from CI/CD" \
      org.opencontainers.image.licenses="MIT"

# No USER (the runner needs root: it mounts the workspace and file-command files) and no WORKDIR
# (the runner passes --workdir /github/workspace). Exec form, absolute path: no shell in between.
ENTRYPOINT ["python", "/app/entrypoint.py"]
