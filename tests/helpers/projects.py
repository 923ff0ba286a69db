"""Alembic projects written by the tests, and plain Alembic to set a database up."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.postgres import Database

ENV_PY = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
target_metadata = None
PER_MIGRATION = {per_migration}


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      transaction_per_migration=PER_MIGRATION)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata,
                          transaction_per_migration=PER_MIGRATION)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section, {{}}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          transaction_per_migration=PER_MIGRATION)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""

SCRIPT_MAKO = '''\
"""${message}"""
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
'''


@dataclass
class AlembicProject:
    """An Alembic project written by a test: `add()` writes one revision file."""

    root: Path
    revisions: list[str] = field(default_factory=list)

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    def add(
        self,
        rev: str,
        upgrade: str,
        downgrade: str = "pass",
        down: str | tuple[str, ...] | None = "__previous__",
        message: str | None = None,
        imports: str = "",
    ) -> Path:
        """Write revision `rev`. `upgrade`/`downgrade` are bodies using `op` and `sa`.
        `down` defaults to the previously added revision."""
        if down == "__previous__":
            down = self.revisions[-1] if self.revisions else None
        body_up = textwrap.indent(textwrap.dedent(upgrade).strip() or "pass", "    ")
        body_down = textwrap.indent(textwrap.dedent(downgrade).strip() or "pass", "    ")
        text = (
            f'"""{message or rev}"""\n'
            "from alembic import op\n"
            "import sqlalchemy as sa\n"
            f"{imports}\n\n"
            f"revision = {rev!r}\n"
            f"down_revision = {down!r}\n"
            "branch_labels = None\n"
            "depends_on = None\n\n\n"
            f"def upgrade():\n{body_up}\n\n\n"
            f"def downgrade():\n{body_down}\n"
        )
        path = self.versions / f"{rev}.py"
        path.write_text(text)
        self.revisions.append(rev)
        return path


# An env.py that migrates on a URL of the application's own variable (in CI, often a service
# container at localhost holding a database of the same name as production's, or the target
# under another role). MYAPP_DATABASE_URL carries its driver (postgresql+psycopg://).
APP_URL_ENV = """\
import os

from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(os.environ["MYAPP_DATABASE_URL"], poolclass=pool.NullPool{engine_kw})
with engine.connect() as connection:
    context.configure(connection=connection{configure_kw})
    with context.begin_transaction():
        context.run_migrations()
"""


def app_url_env(engine_kw: str = "", configure_kw: str = "") -> str:
    """APP_URL_ENV with `engine_kw` for create_engine and `configure_kw` for configure."""
    return APP_URL_ENV.format(engine_kw=engine_kw, configure_kw=configure_kw)


def alembic_upgrade(root: Path, database: Database, target: str = "heads") -> None:
    """Set a database up with plain Alembic, in-process (no deployer, no history): for tests
    whose subject is what the deployer does next."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(root / "alembic.ini"))
    url = database.engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, target)


def write_alembic_project(
    root: Path, *, per_migration: bool = True, ini: bool = True
) -> AlembicProject:
    root.mkdir(parents=True, exist_ok=True)
    (root / "versions").mkdir(exist_ok=True)
    (root / "env.py").write_text(ENV_PY.format(per_migration=per_migration))
    (root / "script.py.mako").write_text(SCRIPT_MAKO)
    if ini:
        (root / "alembic.ini").write_text(
            "[alembic]\nscript_location = %(here)s\nsqlalchemy.url = postgresql://nobody@/nowhere\n"
        )
    return AlembicProject(root=root)
