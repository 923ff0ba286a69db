# syntax=docker/dockerfile:1
#
# The container behind db-deploy-action. The runner builds it from the Dockerfile's own folder
# (the repository root), so .dockerignore lets in only what the image needs.
#
# Base: Python 3.11, the interpreter requirements.lock was compiled for and the test suite runs
# on, on Debian 13 (trixie) slim. Bump the patch (and, later, the digest) with Dependabot.
FROM python:3.11.16-slim-trixie

# PostgreSQL client tools (pg_dump, pg_restore, psql) for the backup and restore modes. pg_dump
# refuses to dump a server newer than itself, so the image carries the newest stable major from
# the PostgreSQL project's own repository (apt.postgresql.org, PGDG); Debian trixie only has 17.
# The PGDG signing key (fingerprint B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8) comes from Debian's
# own postgresql-client-common package, which ships it: apt downloads the package verified
# against Debian's archive keys, only the key file is extracted (nothing is installed), and its
# SHA-256 must match the one pinned here. No key server, curl or gnupg is involved. The client
# is pinned to its major; patch releases (security fixes) arrive with a rebuild.
# (`cd /tmp` only scopes `apt-get download` in this one RUN: no WORKDIR, see the end of the file.)
ARG PG_MAJOR=18
ARG PGDG_KEY_SHA256=0144068502a1eddd2a0280ede10ef607d1ec592ce819940991203941564e8e76
# hadolint ignore=DL3003
RUN set -eux; \
    apt-get update; \
    cd /tmp; \
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
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}=${PG_MAJOR}.*"; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version

# The client's own binaries first (not Debian's perl pg_wrapper).
ENV PATH="/usr/lib/postgresql/${PG_MAJOR}/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The locked runtime dependencies only (hashed, binary wheels: no compiler, no dev extras), then
# the package itself without dependencies. PYTHONDONTWRITEBYTECODE keeps the container (root)
# from leaving __pycache__ folders owned by root in the user's workspace.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --only-binary=:all: --require-hashes -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

COPY pyproject.toml README.md /tmp/src/
COPY deployer /tmp/src/deployer
RUN pip install --no-cache-dir --no-deps /tmp/src \
    && rm -rf /tmp/src \
    && python -c "import deployer.cli"

COPY entrypoint.py /app/entrypoint.py

LABEL org.opencontainers.image.title="db-deploy-action" \
      org.opencontainers.image.description="Deploy PostgreSQL schema changes (Alembic) from CI/CD" \
      org.opencontainers.image.licenses="MIT"

# No USER (the runner needs root: it mounts the workspace and file-command files) and no WORKDIR
# (the runner passes --workdir /github/workspace). Exec form, absolute path: no shell in between.
ENTRYPOINT ["python", "/app/entrypoint.py"]
