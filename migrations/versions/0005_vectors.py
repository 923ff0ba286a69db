"""Vectors: pgvector; brand voices, messages, chunks, agent memories with IVFFLAT indexes.

Revision ID: 0005_vectors
Revises: 0004_agents
Create Date: 2025-10-28 09:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql

revision: str = "0005_vectors"
down_revision: str | Sequence[str] | None = "0004_agents"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMBEDDING_DIM = 1536

# The type as created by 0002_connectors; this revision only uses it.
connector_kind = postgresql.ENUM(name="connector_kind", create_type=False)


def _id() -> sa.Column:
    return sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False)


def _organization_id(table: str) -> tuple[sa.Column, sa.ForeignKeyConstraint]:
    return (
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=f"{table}_organization_id_fkey",
            ondelete="CASCADE",
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


def _embedding_index(table: str, lists: int) -> None:
    """IVFFLAT over cosine distance (`ORDER BY embedding <=> :q`).

    `lists` is sized for the rows the table is expected to hold (pgvector: rows / 1000 up to
    1M rows, sqrt(rows) above). IVFFLAT clusters the rows present at build time, so an index
    built on an empty table recalls poorly until rebuilt: after the first bulk load run
    `REINDEX INDEX CONCURRENTLY <table>_embedding_idx`.
    """
    op.create_index(
        f"{table}_embedding_idx",
        table,
        ["embedding"],
        postgresql_using="ivfflat",
        postgresql_with={"lists": lists},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )


def upgrade() -> None:
    # The first revision that needs pgvector creates it (and its downgrade drops it).
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")

    op.create_table(
        "brand_voices",
        _id(),
        *_organization_id("brand_voices"),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("guidelines", sa.Text(), nullable=False),
        sa.Column("embedding", Vector(EMBEDDING_DIM), nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="brand_voices_pkey"),
        sa.UniqueConstraint(
            "organization_id", "name", name="brand_voices_organization_id_name_key"
        ),
    )
    _embedding_index("brand_voices", lists=10)  # a few per organization
    _updated_at_trigger("brand_voices")

    # History outlives the authorisation and the agent (SET NULL); channel keeps the
    # platform. (connector_auth_id, external_id) makes a redelivered webhook an upsert.
    op.create_table(
        "messages",
        _id(),
        *_organization_id("messages"),
        sa.Column("connector_auth_id", sa.Uuid(), nullable=True),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("channel", connector_kind, nullable=False),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("sender", sa.Text(), nullable=True),
        sa.Column("recipient", sa.Text(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("embedding", Vector(EMBEDDING_DIM), nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="messages_pkey"),
        sa.ForeignKeyConstraint(
            ["connector_auth_id"],
            ["connector_auths.id"],
            name="messages_connector_auth_id_fkey",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="messages_agent_id_fkey", ondelete="SET NULL"
        ),
        sa.UniqueConstraint(
            "connector_auth_id",
            "external_id",
            name="messages_connector_auth_id_external_id_key",
        ),
        sa.CheckConstraint("direction IN ('inbound', 'outbound')", name="messages_direction_check"),
    )
    op.create_index(
        "messages_organization_id_created_at_idx", "messages", ["organization_id", "created_at"]
    )
    op.create_index("messages_agent_id_idx", "messages", ["agent_id"])
    _embedding_index("messages", lists=100)
    _updated_at_trigger("messages")

    op.create_table(
        "chunks",
        _id(),
        *_organization_id("chunks"),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=True),
        sa.Column(
            "attributes",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("embedding", Vector(EMBEDDING_DIM), nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="chunks_pkey"),
        sa.UniqueConstraint(
            "organization_id",
            "source_uri",
            "chunk_index",
            name="chunks_organization_id_source_uri_chunk_index_key",
        ),
        sa.CheckConstraint("chunk_index >= 0", name="chunks_chunk_index_check"),
        sa.CheckConstraint(
            "token_count IS NULL OR token_count >= 0", name="chunks_token_count_check"
        ),
    )
    _embedding_index("chunks", lists=100)
    _updated_at_trigger("chunks")

    op.create_table(
        "agent_memories",
        _id(),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.Text(), server_default="episodic", nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("embedding", Vector(EMBEDDING_DIM), nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="agent_memories_pkey"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="agent_memories_agent_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="agent_memories_message_id_fkey",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint(
            "kind IN ('episodic', 'semantic', 'preference')", name="agent_memories_kind_check"
        ),
    )
    op.create_index(
        "agent_memories_agent_id_created_at_idx", "agent_memories", ["agent_id", "created_at"]
    )
    op.create_index("agent_memories_message_id_idx", "agent_memories", ["message_id"])
    _embedding_index("agent_memories", lists=100)
    _updated_at_trigger("agent_memories")


def downgrade() -> None:
    op.drop_table("agent_memories")
    op.drop_table("chunks")
    op.drop_table("messages")
    op.drop_table("brand_voices")
    # No CASCADE: if anything outside this schema uses pgvector, the downgrade stops here
    # rather than dropping it.
    op.execute("DROP EXTENSION IF EXISTS vector")
