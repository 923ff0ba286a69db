"""Automations: trigger and action configurations on authorised connectors.

Revision ID: 0003_automations
Revises: 0002_connectors
Create Date: 2025-10-28 09:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_automations"
down_revision: str | Sequence[str] | None = "0002_connectors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


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
        "trigger_configs",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("connector_auth_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column(
            "conditions",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("is_enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="trigger_configs_pkey"),
        sa.ForeignKeyConstraint(
            ["connector_auth_id"],
            ["connector_auths.id"],
            name="trigger_configs_connector_auth_id_fkey",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "connector_auth_id", "name", name="trigger_configs_connector_auth_id_name_key"
        ),
    )
    # Event dispatch: "which enabled triggers listen to this event?"
    op.create_index(
        "trigger_configs_event_idx",
        "trigger_configs",
        ["event"],
        postgresql_where=sa.text("is_enabled"),
    )
    _updated_at_trigger("trigger_configs")

    # trigger_config_id NULL: a stand-alone action (agents call it); set: a step of that
    # trigger, run in position order and deleted with it.
    op.create_table(
        "action_configs",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("connector_auth_id", sa.Uuid(), nullable=False),
        sa.Column("trigger_config_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column(
            "params", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("position", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("is_enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="action_configs_pkey"),
        sa.ForeignKeyConstraint(
            ["connector_auth_id"],
            ["connector_auths.id"],
            name="action_configs_connector_auth_id_fkey",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["trigger_config_id"],
            ["trigger_configs.id"],
            name="action_configs_trigger_config_id_fkey",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "connector_auth_id", "name", name="action_configs_connector_auth_id_name_key"
        ),
        sa.CheckConstraint("position >= 0", name="action_configs_position_check"),
    )
    op.create_index(
        "action_configs_trigger_config_id_position_idx",
        "action_configs",
        ["trigger_config_id", "position"],
    )
    _updated_at_trigger("action_configs")


def downgrade() -> None:
    op.drop_table("action_configs")
    op.drop_table("trigger_configs")
