"""Security preflight: cheap catalog checks of the connection, the role and the target schemas.

Every check returns findings with a severity: `error` fails the run (exit 1), `warning` fails it
only with `preflight-fail-on: warning`, `ok`/`info` are shown. All checks are catalog queries
on the connection already open: the deploy runs them before migrating.

What "the target schemas" are: where the migrations write. That is the version table's schema,
the schema unqualified names land in (`current_schema()`), and the schemas the role (or a role
it belongs to) owns. Schemas of other applications (a platform's `auth`, `storage`, …) are not
ours to judge.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from deployer.db import is_local_host
from deployer.results import Finding, SecurityResult
from deployer.types import ExtensionRequirement, version_tuple

MIN_SERVER_VERSION = 130000  # PostgreSQL 13: gen_random_uuid() built in, DROP DATABASE … FORCE
SEVERITIES = ("ok", "info", "warning", "error")
SHOWN = 5  # objects named in one finding


_ROLE = sa.text(
    """
    SELECT current_user, r.rolsuper, r.rolcreaterole, r.rolbypassrls,
           current_setting('server_version_num')::int, current_setting('server_version'),
           current_schema()
    FROM pg_roles r WHERE r.rolname = current_user
    """
)

_SSL = sa.text("SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)")

# Schemas the role owns (directly or through membership), excluding the system's. A superuser
# "has" every role: for one, only the schemas it owns itself count.
_OWNED_SCHEMAS = sa.text(
    """
    SELECT n.nspname FROM pg_namespace n
    WHERE CASE WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
               THEN n.nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
               ELSE pg_has_role(current_user, n.nspowner, 'USAGE') END
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_%'
      AND n.nspname <> :history
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                      AND d.objid = n.oid AND d.deptype = 'e')
    """
)

_SCHEMA_FACTS = sa.text(
    """
    SELECT n.nspname,
           pg_get_userbyid(n.nspowner),
           has_schema_privilege(current_user, n.oid, 'CREATE'),
           EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                   WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')
    FROM pg_namespace n WHERE n.nspname = ANY(:schemas)
    ORDER BY n.nspname
    """
)

# Relations in the target schemas that the role cannot alter (not owned by it or a role it
# belongs to), extension members left out.
_FOREIGN_OWNED = sa.text(
    """
    SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY(:schemas)
      AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
    ORDER BY 1, 2
    """
)

_EXTENSIONS = sa.text(
    """
    SELECT v.name, v.version, v.installed, coalesce(v.trusted, false), v.superuser
    FROM pg_available_extension_versions v
    """
)
_INSTALLED = sa.text("SELECT extname, extversion FROM pg_extension")


@dataclass(frozen=True)
class SecurityOptions:
    """What the security preflight judges against: the two URLs (`direct_url` empty or equal
    to `url` when the migrations use the application's), the TLS rule, the extensions the
    application needs, the deploy history's schema and the severity that fails the run."""

    url: str
    direct_url: str = ""
    require_tls: bool = False
    required_extensions: tuple[ExtensionRequirement, ...] = ()
    history_schema: str = "db_deploy"
    fail_on: str = "error"


def check(
    conn: sa.Connection,
    options: SecurityOptions,
    *,
    direct: sa.Connection | None = None,
    version_table_schema: str | None = None,
    heads: Sequence[str] | None = None,
) -> SecurityResult:
    """Run every check. `conn` is the application's connection (database-url); `direct`, when
    the migrations use another URL, is the migrations' (direct-database-url). TLS is checked on
    both; the role, its schemas and the extensions on the one that migrates. `heads` (the
    migrations' heads) adds the single-head check. Read-only: transactions are rolled back."""
    started = time.perf_counter()
    url, direct_url, require_tls = options.url, options.direct_url, options.require_tls
    fail_on = options.fail_on
    result = SecurityResult(fail_on=fail_on)
    # The role that migrates is the one to judge: the direct connection's when there is one.
    mig = direct if direct is not None else conn
    try:
        user, is_super, createrole, bypassrls, version_num, version, current_schema = mig.execute(
            _ROLE
        ).one()
        result.findings.append(_server_version(int(version_num), str(version)))
        result.findings.append(_tls(url, bool(conn.execute(_SSL).scalar()), require_tls))
        if direct is not None and direct_url and direct_url != url:
            tls = bool(direct.execute(_SSL).scalar())
            finding = _tls(direct_url, tls, require_tls)
            finding.message = "migrations connection: " + finding.message
            result.findings.append(finding)
        result.findings.append(_superuser(str(user), bool(is_super), direct_url or url))
        if createrole or bypassrls:
            powers = [p for p, on in (("CREATEROLE", createrole), ("BYPASSRLS", bypassrls)) if on]
            if not is_super:
                result.findings.append(
                    Finding(
                        "role",
                        "info",
                        f"role {user} has {' and '.join(powers)}: more than schema changes need",
                    )
                )
        schemas = _target_schemas(mig, current_schema, version_table_schema, options.history_schema)
        result.target_schemas = schemas
        result.findings += _schemas(mig, schemas, str(user), bool(is_super))
        result.findings += _extensions(mig, options.required_extensions, bool(is_super))
        if heads is not None:
            result.findings.append(_single_head(list(heads)))
    finally:
        for c in (conn, direct):
            if c is not None and c.in_transaction():
                c.rollback()
    result.seconds = round(time.perf_counter() - started, 4)
    return result


def _server_version(num: int, version: str) -> Finding:
    shown = version.split(" ")[0]
    if num < MIN_SERVER_VERSION:
        return Finding(
            "server-version",
            "error",
            f"PostgreSQL {shown} is not supported: db-deploy needs PostgreSQL 13 or newer",
            "upgrade the server",
        )
    return Finding("server-version", "ok", f"PostgreSQL {shown} is supported (13 or newer)")


def _sslmode(url: str) -> str:
    raw = make_url(url).query.get("sslmode", "")
    return str(raw[0] if isinstance(raw, tuple) else raw)


def _tls(url: str, tls: bool, require_tls: bool) -> Finding:
    if is_local_host(url):
        return Finding("tls", "ok", "local connection (Unix socket or loopback): TLS not needed")
    if not tls:
        return Finding(
            "tls",
            "error" if require_tls else "warning",
            "the connection to a remote host is not encrypted (no TLS): the password and the "
            "data cross the network in clear",
            "add sslmode=verify-full&sslrootcert=system to the URL (or at least sslmode=require)",
        )
    mode = _sslmode(url)
    if mode in ("verify-full", "verify-ca"):
        return Finding("tls", "ok", f"TLS with server certificate verification (sslmode={mode})")
    return Finding(
        "tls",
        "warning",
        f"TLS without server certificate verification (sslmode={mode or 'prefer'}): a "
        "man in the middle could impersonate the server",
        "use sslmode=verify-full&sslrootcert=system (libpq 16+) or a sslrootcert file",
    )


def _superuser(user: str, is_super: bool, url: str) -> Finding:
    if not is_super:
        return Finding("superuser", "ok", f"role {user} is not a superuser")
    if is_local_host(url):
        return Finding(
            "superuser",
            "info",
            f"role {user} is a superuser (accepted on a local database; deploy to shared "
            "databases with a role that owns the schema instead)",
        )
    return Finding(
        "superuser",
        "warning",
        f"role {user} is a superuser: a mistaken migration can do anything, anywhere on the server",
        "deploy with a role that owns the application's schema and nothing more",
    )


def _target_schemas(
    conn: sa.Connection, current: str | None, version_schema: str | None, history: str
) -> list[str]:
    owned = {r[0] for r in conn.execute(_OWNED_SCHEMAS, {"history": history})}
    wanted = owned | {s for s in (current, version_schema) if s}
    if history != current:  # one the search_path leads to is checked; deploy refuses it later
        wanted.discard(history)
    return sorted(wanted)


def _schemas(conn: sa.Connection, schemas: list[str], user: str, is_super: bool) -> list[Finding]:
    out: list[Finding] = []
    facts = conn.execute(_SCHEMA_FACTS, {"schemas": schemas}).all()
    if not facts:
        out.append(
            Finding(
                "schema",
                "error",
                "no schema to migrate into: the search_path names no existing schema and the "
                f"role {user} owns none",
                "create the schema (owned by the deploy role) or fix search_path",
            )
        )
        return out
    for name, owner, can_create, public_create in facts:
        if not can_create:
            out.append(
                Finding(
                    "schema-create",
                    "error",
                    f"role {user} cannot CREATE in schema {name} (owner {owner}): migrations "
                    "that add tables there will fail",
                    f"ALTER SCHEMA {name} OWNER TO {user}; (or GRANT CREATE ON SCHEMA {name} "
                    f"TO {user})",
                )
            )
        if public_create:
            out.append(
                Finding(
                    "public-create",
                    "warning",
                    f"PUBLIC can CREATE in schema {name}: any role can plant objects that "
                    "shadow yours (CVE-2018-1058)",
                    f"REVOKE CREATE ON SCHEMA {name} FROM PUBLIC;",
                )
            )
    if not any(f.check == "public-create" for f in out):
        out.append(
            Finding(
                "public-create",
                "ok",
                f"PUBLIC cannot CREATE in {', '.join(r[0] for r in facts)}",
            )
        )
    if is_super:
        out.append(Finding("ownership", "ok", "a superuser can alter every object"))
        return out
    foreign = conn.execute(_FOREIGN_OWNED, {"schemas": [r[0] for r in facts]}).all()
    if foreign:
        owners = sorted({r[2] for r in foreign})
        names = ", ".join(f"{r[0]}.{r[1]}" for r in foreign[:SHOWN])
        more = f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else ""
        out.append(
            Finding(
                "ownership",
                "warning",
                f"{len(foreign)} object(s) in the target schemas are owned by "
                f"{', '.join(owners)}, not by {user}: {names}{more}; migrations that alter "
                "them will fail",
                f"ALTER TABLE … OWNER TO {user}; or GRANT {owners[0]} TO {user};",
            )
        )
    else:
        out.append(
            Finding(
                "ownership",
                "ok",
                f"role {user} owns every object in {', '.join(r[0] for r in facts)}",
            )
        )
    return out


def _extensions(
    conn: sa.Connection, required: Sequence[ExtensionRequirement], is_super: bool
) -> list[Finding]:
    if not required:
        return []
    installed: dict[str, str] = {str(n): str(v) for n, v in conn.execute(_INSTALLED)}
    versions: dict[str, list[tuple[str, bool, bool]]] = {}
    for name, version, _installed, trusted, superuser in conn.execute(_EXTENSIONS):
        versions.setdefault(name, []).append((str(version), bool(trusted), bool(superuser)))
    out: list[Finding] = []
    for req in required:
        want = f" >= {req.min_version}" if req.min_version else ""
        have = installed.get(req.name)
        available = versions.get(req.name, [])
        good = [
            v
            for v in available
            if not req.min_version or version_tuple(v[0]) >= version_tuple(req.min_version)
        ]
        if have is not None:
            if req.min_version and version_tuple(have) < version_tuple(req.min_version):
                newest = max((v[0] for v in good), key=version_tuple, default="")
                out.append(
                    Finding(
                        "extension",
                        "warning" if good else "error",
                        f"extension {req.name} {have} is installed, {req.name}{want} is required",
                        f"ALTER EXTENSION {req.name} UPDATE TO '{newest}';"
                        if newest
                        else f"no version{want} is available on this server",
                    )
                )
            else:
                out.append(Finding("extension", "ok", f"extension {req.name} {have} is installed"))
            continue
        if not available:
            out.append(
                Finding(
                    "extension",
                    "error",
                    f"extension {req.name} is not available on this server "
                    "(pg_available_extensions)",
                    "install it on the server, or choose a provider that offers it",
                )
            )
            continue
        if not good:
            newest = max((v[0] for v in available), key=version_tuple)
            out.append(
                Finding(
                    "extension",
                    "error",
                    f"extension {req.name}{want} is required, the server offers {newest} at most",
                )
            )
            continue
        creatable = is_super or any(trusted or not superuser for _, trusted, superuser in good)
        if creatable:
            out.append(
                Finding(
                    "extension",
                    "ok",
                    f"extension {req.name} is available (not installed yet)",
                )
            )
        else:
            out.append(
                Finding(
                    "extension",
                    "warning",
                    f"extension {req.name} is available but not installed, and only a superuser "
                    "can create it (it is not a trusted extension)",
                    f"have an administrator run CREATE EXTENSION {req.name}; before the deploy",
                )
            )
    return out


def _single_head(heads: list[str]) -> Finding:
    if len(heads) > 1:
        return Finding(
            "single-head",
            "error",
            f"the migrations have {len(heads)} heads ({', '.join(heads)})",
            "merge them with `alembic merge heads`",
        )
    return Finding(
        "single-head", "ok", f"the migrations have a single head ({heads[0] if heads else 'none'})"
    )
