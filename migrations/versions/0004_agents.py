"""Agents: agents, their capabilities, configurations and tools.

Revision ID: 0004_agents
Revises: 0003_automations
Create Date: 2025-10-28 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_agents"
down_revision: str | Sequence[str] | None = "0003_automations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLUG_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"


def _id() -> sa.Column:
    return sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False)


def _agent_id(table: str) -> tuple[sa.Column, sa.ForeignKeyConstraint]:
    """agent_id and its foreign key: an agent's children are deleted with it."""
    return (
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=f"{table}_agent_id_fkey", ondelete="CASCADE"
        ),
    )


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
    op.create_table(
        "agents",
        _id(),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="agents_pkey"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name="agents_organization_id_fkey",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("organization_id", "slug", name="agents_organization_id_slug_key"),
        sa.CheckConstraint(f"slug ~ '{SLUG_PATTERN}'", name="agents_slug_format_check"),
        sa.CheckConstraint(
            "status IN ('active', 'paused', 'archived')", name="agents_status_check"
        ),
    )
    _updated_at_trigger("agents")

    op.create_table(
        "agent_capabilities",
        _id(),
        *_agent_id("agent_capabilities"),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="agent_capabilities_pkey"),
        sa.UniqueConstraint("agent_id", "name", name="agent_capabilities_agent_id_name_key"),
    )
    _updated_at_trigger("agent_capabilities")

    op.create_table(
        "agent_configs",
        _id(),
        *_agent_id("agent_configs"),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", postgresql.JSONB(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="agent_configs_pkey"),
        sa.UniqueConstraint("agent_id", "key", name="agent_configs_agent_id_key_key"),
    )
    _updated_at_trigger("agent_configs")

    op.create_table(
        "tools",
        _id(),
        *_agent_id("tools"),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "input_schema",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("is_enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="tools_pkey"),
        sa.UniqueConstraint("agent_id", "name", name="tools_agent_id_name_key"),
        sa.CheckConstraint("name ~ '^[a-z][a-z0-9_]*$'", name="tools_name_format_check"),
    )
    _updated_at_trigger("tools")


def downgrade() -> None:
    op.drop_table("tools")
    op.drop_table("agent_configs")
    op.drop_table("agent_capabilities")
    op.drop_table("agents")
