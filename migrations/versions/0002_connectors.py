"""Connectors: the connector_kind enum, the connector catalog and connector authorisations.

Revision ID: 0002_connectors
Revises: 0001_core
Create Date: 2025-10-28 09:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_connectors"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLUG_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"

# The labels as of this revision. A later revision adds a label with
# `ALTER TYPE connector_kind ADD VALUE '...'` (never by editing this list).
CONNECTOR_KINDS = (
    "gmail",
    "outlook",
    "smtp",
    "twilio_sms",
    "whatsapp",
    "messenger",
    "instagram",
    "facebook",
    "x",
    "tiktok",
    "linkedin",
    "youtube",
    "slack",
    "telegram",
    "webhook",
)

connector_kind = postgresql.ENUM(*CONNECTOR_KINDS, name="connector_kind", create_type=False)


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
    connector_kind.create(op.get_bind(), checkfirst=False)

    op.create_table(
        "connectors",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("kind", connector_kind, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("auth_type", sa.Text(), nullable=False),
        sa.Column("docs_url", sa.Text(), nullable=True),
        sa.Column("is_enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="connectors_pkey"),
        sa.UniqueConstraint("slug", name="connectors_slug_key"),
        sa.CheckConstraint(f"slug ~ '{SLUG_PATTERN}'", name="connectors_slug_format_check"),
        sa.CheckConstraint(
            "auth_type IN ('oauth2', 'api_key', 'basic', 'webhook_secret')",
            name="connectors_auth_type_check",
        ),
    )
    op.create_index("connectors_kind_idx", "connectors", ["kind"])
    _updated_at_trigger("connectors")

    # Credentials are never stored in clear: a reference into a secret store, or a blob the
    # application encrypted (envelope encryption, key named by encryption_key_id).
    op.create_table(
        "connector_auths",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("connector_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        sa.Column("credential_ref", sa.Text(), nullable=True),
        sa.Column("encrypted_credentials", sa.LargeBinary(), nullable=True),
        sa.Column("encryption_key_id", sa.Text(), nullable=True),
        sa.Column(
            "scopes",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="connector_auths_pkey"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name="connector_auths_organization_id_fkey",
            ondelete="CASCADE",
        ),
        # Retire a catalog entry with is_enabled = false, or revoke its authorisations first.
        sa.ForeignKeyConstraint(
            ["connector_id"],
            ["connectors.id"],
            name="connector_auths_connector_id_fkey",
            ondelete="RESTRICT",
        ),
        # A person's authorisation leaves with them; it must not become organization-wide.
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="connector_auths_user_id_fkey", ondelete="CASCADE"
        ),
        sa.UniqueConstraint(
            "organization_id",
            "connector_id",
            "label",
            name="connector_auths_organization_id_connector_id_label_key",
        ),
        sa.CheckConstraint(
            "status IN ('active', 'expired', 'revoked', 'error')",
            name="connector_auths_status_check",
        ),
        sa.CheckConstraint(
            "num_nonnulls(credential_ref, encrypted_credentials) = 1",
            name="connector_auths_one_credential_check",
        ),
        sa.CheckConstraint(
            "encrypted_credentials IS NULL OR encryption_key_id IS NOT NULL",
            name="connector_auths_encryption_key_check",
        ),
    )
    op.create_index("connector_auths_connector_id_idx", "connector_auths", ["connector_id"])
    op.create_index("connector_auths_user_id_idx", "connector_auths", ["user_id"])
    _updated_at_trigger("connector_auths")


def downgrade() -> None:
    op.drop_table("connector_auths")
    op.drop_table("connectors")
    connector_kind.drop(op.get_bind(), checkfirst=False)
