"""Core: organizations and users, and the updated_at trigger function.

Revision ID: 0001_core
Revises:
Create Date: 2025-10-28 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_core"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLUG_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def _updated_at_trigger(table: str) -> None:
    op.execute(
        f"CREATE TRIGGER {table}_set_updated_at BEFORE UPDATE ON {table} "
        "FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION set_updated_at()"
    )


def upgrade() -> None:
    # Every table's updated_at trigger calls this; the trigger's WHEN clause skips no-op
    # updates, so updated_at only moves when a row really changes.
    op.execute(
        """
        CREATE FUNCTION set_updated_at() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END
        $$
        """
    )

    op.create_table(
        "organizations",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="organizations_pkey"),
        sa.UniqueConstraint("slug", name="organizations_slug_key"),
        sa.CheckConstraint(f"slug ~ '{SLUG_PATTERN}'", name="organizations_slug_format_check"),
        sa.CheckConstraint("btrim(name) <> ''", name="organizations_name_not_blank_check"),
    )
    _updated_at_trigger("organizations")

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), server_default="member", nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="users_pkey"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name="users_organization_id_fkey",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("email", name="users_email_key"),
        sa.CheckConstraint("email = lower(email)", name="users_email_lowercase_check"),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name="users_role_check"),
    )
    op.create_index("users_organization_id_idx", "users", ["organization_id"])
    _updated_at_trigger("users")


def downgrade() -> None:
    op.drop_table("users")
    op.drop_table("organizations")
    op.execute("DROP FUNCTION set_updated_at()")
